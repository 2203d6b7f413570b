import Foundation
import Logging
import Metrics
import Outbox
import ServiceLifecycle
import Synchronization

/// Samples the outbox every `interval` into gauges: the pending backlog (every document not
/// delivered or parked, including those no relay has seen yet), the age of the oldest pending
/// event, parked events, stuck events (due for longer than `stuckAfter` and still not delivered,
/// or written that long ago and not seen by a relay) and partitions without a live owner; and
/// whether the database answered.
///
/// Every sample counts the backlog, which reads each document counted on some servers; relays
/// sharing an outbox take turns: with N live relays each samples every N intervals, so the store
/// counts once per interval whatever the number of relays (the alert rules take the `max` over
/// relays, which is never older than about one interval).
public final class BacklogMonitor: Service {
    private let pool: MongoClientPool
    private let collection: String
    private let partitions: Int
    private let interval: Duration
    private let stuckAfter: Duration
    private let relays: @Sendable () -> Int
    private let clock: DatabaseClock
    private let logger: Logger

    private let gauges: Gauges
    private let missing = Mutex(false)
    public static let databaseUp = Gauge(label: "outbox_connection_up", dimensions: [("target", "database")])

    public init(
        pool: MongoClientPool, collection: String = OutboxSchema.defaultCollection, partitions: Int = OutboxSchema.defaultPartitions,
        interval: Duration = .seconds(15), stuckAfter: Duration = .seconds(60), relays: @escaping @Sendable () -> Int = { 1 },
        clock: DatabaseClock = DatabaseClock(), source: OutboxSource? = nil, logger: Logger
    ) {
        gauges = Gauges(dimensions: source.map { [("source", $0.description)] } ?? [])
        self.relays = relays
        self.clock = clock
        self.pool = pool
        self.collection = collection
        self.partitions = partitions
        self.interval = interval
        self.stuckAfter = stuckAfter
        self.logger = logger
    }

    public struct Sample: Sendable, Equatable {
        public var pending: Int
        public var oldestPendingAge: Double
        public var parked: Int
        public var scheduled: Int
        public var stuck: Int
        public var partitionsWithoutOwner: Int
        /// False once the collection was dropped or renamed (a writer's next insert creates it again).
        public var collectionExists: Bool
    }

    /// Whether the last sample found the collection gone (dropped or renamed); false before one.
    public var collectionMissing: Bool { missing.withLock { $0 } }

    /// Reads the figures once and updates the gauges.
    @discardableResult
    public func sample() async throws -> Sample {
        let collection = self.collection
        let partitions = self.partitions
        let (stuckAfter, clock) = (self.stuckAfter, self.clock)
        let sample = try await pool.withConnection { connection -> Sample in
            let outbox = connection.collection(collection)
            let exists = try connection.collectionExists(collection)
            // Ages on the database's clock, as the relay's due times.
            try clock.measureIfStale(on: connection)
            let now = clock.now()
            // Pending counts the pending events and the documents no relay has seen yet (no
            // status), by equality on `status` (indexed everywhere). A document with a status the
            // relay does not know is parked by the relay's sweep within a minute.
            let pending = try outbox.countDocuments(["status": .string(OutboxSchema.Status.pending)]) + outbox.countDocuments(["status": .null])
            let oldest = try OutboxSchema.oldestPending(outbox)
            let parked = try outbox.countDocuments(["status": .string(OutboxSchema.Status.parked)])
            let scheduled = try outbox.countDocuments(["status": .string(OutboxSchema.Status.scheduled)])
            let cutoff = now.addingTimeInterval(-Double(stuckAfter.milliseconds) / 1000)
            let stuck =
                try outbox.countDocuments(["status": .string(OutboxSchema.Status.pending), "nextAttemptAt": ["$lt": .date(cutoff)]])
                + outbox.countDocuments(["status": .null, "timestamp": ["$gte": OutboxSchema.anyDate, "$lt": .date(cutoff)]])
            let live = try connection.collection(MongoLeaseStore.leasesCollection).countDocuments([
                "owner": ["$ne": .null], "$expr": MongoLeaseStore.live,
            ])
            return Sample(
                pending: pending, oldestPendingAge: oldest.map { max(now.timeIntervalSince($0), 0) } ?? 0, parked: parked, scheduled: scheduled,
                stuck: stuck,
                partitionsWithoutOwner: max(partitions - live, 0), collectionExists: exists)
        }
        gauges.pending.record(sample.pending)
        gauges.oldestPendingAge.record(sample.oldestPendingAge)
        gauges.parked.record(sample.parked)
        gauges.scheduled.record(sample.scheduled)
        gauges.stuck.record(sample.stuck)
        gauges.unowned.record(sample.partitionsWithoutOwner)
        let wasMissing = missing.withLock { missing in
            defer { missing = !sample.collectionExists }
            return missing
        }
        if wasMissing != !sample.collectionExists {
            if sample.collectionExists {
                logger.notice("the outbox collection is back", metadata: [LogKey.outboxCollection: "\(collection)"])
            } else {
                logger.warning(
                    "the outbox collection does not exist (dropped or renamed?); this source is degraded until it is back",
                    metadata: [LogKey.outboxCollection: "\(collection)"])
            }
        }
        return sample
    }

    public func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await sample()
                Self.databaseUp.record(1)
            } catch {
                Self.databaseUp.record(0)
                logger.warning("backlog sample failed", metadata: [LogKey.error: "\(error)"])
            }
            // Cut short by a graceful shutdown: a turn of several intervals must not hold it up.
            let turn = interval * max(relays(), 1)
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: turn) }
        }
    }
}

extension BacklogMonitor {
    /// Removes the source's gauges from the backend (a source no longer served).
    public func removeGauges() { gauges.destroy() }

    /// The gauges of one source.
    struct Gauges: Sendable {
        let pending: Gauge
        let oldestPendingAge: Gauge
        let parked: Gauge
        /// Events waiting for their `deliverAt` (not backlog: they are not due).
        let scheduled: Gauge
        let stuck: Gauge
        let unowned: Gauge

        init(dimensions: [(String, String)]) {
            pending = Gauge(label: "outbox_pending_events", dimensions: dimensions)
            oldestPendingAge = Gauge(label: "outbox_oldest_pending_age_seconds", dimensions: dimensions)
            parked = Gauge(label: "outbox_parked_events", dimensions: dimensions)
            scheduled = Gauge(label: "outbox_scheduled_events", dimensions: dimensions)
            stuck = Gauge(label: "outbox_stuck_events", dimensions: dimensions)
            unowned = Gauge(label: "outbox_partitions_without_owner", dimensions: dimensions)
        }

        func destroy() {
            for gauge in [pending, oldestPendingAge, parked, scheduled, stuck, unowned] { gauge.destroy() }
        }
    }
}
