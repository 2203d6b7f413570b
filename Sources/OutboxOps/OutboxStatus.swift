import Foundation
import OutboxMongo

/// The outbox at a glance.
public struct OutboxStatus: Sendable {
    public struct Lease: Sendable {
        public var partition: Int
        public var owner: String?
        public var epoch: Int
        /// Seconds until expiry by the database clock (negative: expired).
        public var expiresIn: Double
    }

    /// Every document that is not delivered, parked, expired, cancelled or scheduled.
    public var pending: Int
    /// Of those, documents no relay has seen yet (written without relay state).
    public var unseen: Int
    public var due: Int
    public var parked: Int
    /// Events past their `expiresAt` before they were published: never published.
    public var expired: Int
    /// Events waiting for their `deliverAt`.
    public var scheduled: Int
    /// When the soonest scheduled event is due; nil when none is scheduled.
    public var nextScheduled: Date?
    /// Scheduled events an operator cancelled: never published.
    public var cancelled: Int
    public var delivered: Int
    public var deliveredLastMinute: Int
    /// Age in seconds of the oldest pending event; nil when nothing is pending.
    public var oldestPendingAge: Double?
    public var leases: [Lease]
    public var databaseTime: Date
    /// Documents a relay could neither mark nor park and skips, still not delivered or parked.
    public var unwritable: Int

    /// As `outboxctl status --json` and the console's `/api/status` show it.
    public var document: Document {
        [
            "pending": .int64(Int64(pending)), "unseen": .int64(Int64(unseen)), "due": .int64(Int64(due)), "parked": .int64(Int64(parked)),
            "expired": .int64(Int64(expired)), "scheduled": .int64(Int64(scheduled)), "cancelled": .int64(Int64(cancelled)),
            "nextScheduledAt": nextScheduled.map { .date($0) } ?? .null, "unwritable": .int64(Int64(unwritable)),
            "delivered": .int64(Int64(delivered)), "deliveredLastMinute": .int64(Int64(deliveredLastMinute)),
            "oldestPendingAgeSeconds": oldestPendingAge.map { .double($0) } ?? .null,
            "leases": .array(
                leases.map { lease in
                    [
                        "partition": .int64(Int64(lease.partition)), "owner": lease.owner.map { .string($0) } ?? .null,
                        "epoch": .int64(Int64(lease.epoch)), "expiresInSeconds": .double(lease.expiresIn),
                    ]
                }),
        ]
    }
}
