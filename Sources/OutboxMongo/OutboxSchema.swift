import Foundation
import Outbox

/// Field names, states and indexes of outbox documents, shared by the writer, the relay's store
/// and the operator tools.
///
/// A service writes `type`, `aggregateId` and `data` (and optionally the other contract fields,
/// see `schema/outbox-event.schema.json`). Everything else is the relay's: `status`, `partition`,
/// `sid`, `fence`, `attempts`, `nextAttemptAt`, `dueAt`, `lastError`, `deliveredAt`, `parkedAt`, `expiredAt`,
/// `cancelledAt`, `seenAt`.
public enum OutboxSchema {
    public static let defaultCollection = "outbox"
    public static let defaultPartitions = 16

    /// Where the relays record outbox documents they can neither mark nor park (by `_id`: the
    /// relay, when, and the server's refusal), for `outboxctl unwritable` and `status`.
    public static func unwritableCollection(of collection: String) -> String { "\(collection)_unwritable" }

    public enum Status {
        /// Known to the relay, waiting to be published (first attempt or a retry).
        public static let pending = "pending"
        public static let delivered = "delivered"
        public static let parked = "parked"
        /// Past its `expiresAt` before it was published: never published, not an error.
        public static let expired = "expired"
        /// Known to the relay, not to be published before its `deliverAt`: kept out of the
        /// pending scan, with `dueAt` set to that time and a scan id that sorts by it
        /// (`scheduledScanId`), until it is published.
        public static let scheduled = "scheduled"
        /// Cancelled by an operator (`outboxctl cancel`) while scheduled: never published.
        public static let cancelled = "cancelled"
        /// Final states; every other document (including one without `status`, as a writer
        /// leaves it) counts as pending.
        public static let final: [String] = [delivered, parked, expired, cancelled]
        /// Every status the relay knows.
        public static let known: [String] = [pending, scheduled] + final
    }

    /// Documents that carry no relay state yet: as a writer leaves them (no `status`, or one a
    /// model wrote as null) or written with `status: "pending"` but no scan id. The relay reads
    /// them in the order they were written and gives them its state with its first write, which
    /// applies only while this still holds.
    /// (A scan id that is not a string, set by hand, counts as none: no scan reads it.)
    public static let firstSight: Document = ["status": ["$in": [.null, .string(Status.pending)]], "sid": ["$not": ["$type": "string"]]]

    /// The query for every document that is not delivered or parked: pending events and
    /// documents the relay has not seen yet.
    public static let notFinal: Document = ["status": ["$nin": .array(Status.final.map { .string($0) })]]

    /// Documents no relay has seen yet: no status (as a writer leaves them) or one the relay does
    /// not know (which the relay parks).
    public static let unseen: Document = ["status": ["$nin": .array(Status.known.map { .string($0) })]]

    /// The scan id of an event scheduled for `dueAt` (ms since the epoch): its seconds and
    /// milliseconds in hex, then random digits, 24 in all, so scheduled events sort by due time in
    /// the status-and-scan-id index (and as ObjectId hex, with an ObjectId's seconds, in the
    /// pending scan's windows). `upTo`: the highest id of that millisecond instead, a query's bound.
    public static func scheduledScanId(dueAt: Int64, upTo: Bool = false) -> String {
        let ms = max(dueAt, 0)
        let prefix = String(format: "%08x%03x", UInt32(truncatingIfNeeded: ms / 1000), Int(ms % 1000))
        return prefix + (upTo ? String(repeating: "f", count: 13) : String(ObjectId().hex.suffix(13)))
    }

    /// The earliest date a range needs to match every date (the year 1: servers and drivers
    /// represent no earlier one). A range on a date matches dates only.
    public static let anyDate = BSON.datetime(-62_135_596_800_000)

    /// When the oldest pending event, or the oldest document no relay has seen yet, was written,
    /// if there is one. Equality queries on `status` only (they use its indexes everywhere; a
    /// `$nin` is a collection scan on some servers, too costly for a gauge sampled every few
    /// seconds by every relay).
    public static func oldestPending(_ outbox: MongoCollection) throws -> Date? {
        try [oldestKnown(outbox), oldestNew(outbox)].compactMap { $0 }.min()
    }

    /// When the pending event lowest in scan order was written, or first seen.
    static func oldestKnown(_ outbox: MongoCollection) throws -> Date? {
        try outbox.find(
            ["status": .string(Status.pending)],
            options: ["sort": ["sid": 1], "limit": 1, "projection": ["timestamp": 1, "seenAt": 1]]
        ).first.flatMap { $0["timestamp"]?.dateValue ?? $0["seenAt"]?.dateValue }
    }

    /// When the oldest document no relay has seen yet was written.
    static func oldestNew(_ outbox: MongoCollection) throws -> Date? {
        // A range on a date matches dates only.
        try outbox.find(
            ["status": .null, "timestamp": ["$gte": OutboxSchema.anyDate]],
            options: ["sort": ["timestamp": 1], "limit": 1, "projection": ["timestamp": 1]]
        ).first?["timestamp"]?.dateValue
    }

    /// The indexes the relay's queries need. The relay creates them at start and `outboxctl init`
    /// before; they are the same wherever they are created.
    public static let indexes: [Document] = [
        // Each relay's pending scan: its partitions, in scan order.
        ["key": ["status": 1, "partition": 1, "sid": 1], "name": "status_partition_sid"],
        // The oldest pending event; the scan's start.
        ["key": ["status": 1, "sid": 1], "name": "status_sid"],
        // Documents written without relay state, in the order they were written.
        ["key": ["status": 1, "timestamp": 1, "_id": 1], "name": "status_timestamp_id"],
        // An aggregate's events (`$in` of aggregate ids), its history for operators. Not partial:
        // some servers use no partial index for a query.
        ["key": ["aggregateId": 1, "aggregateVersion": 1], "name": "aggregate_lookup"],
        // An aggregate's pending and new events, for the order checks: an equality on `status`
        // and an `$in` of aggregate ids read only those, however long its delivered history.
        ["key": ["status": 1, "aggregateId": 1], "name": "status_aggregate"],
        // One version of an aggregate once, where writers give versions.
        [
            "key": ["aggregateId": 1, "aggregateVersion": 1, "aggregateType": 1], "name": "aggregate_version_unique", "unique": true,
            "partialFilterExpression": ["aggregateVersion": ["$exists": true]],
        ],
    ]

    /// Indexes for the operator console over large parked backlogs (`outboxctl init --console`):
    /// parked events by error, for a group's pages. Partial, so on MongoDB the relay's marks of
    /// events that are not parked never touch it; SecantusDB maintains every index on every write
    /// (about 19 % more per update there), so the relay does not create it.
    public static let consoleIndexes: [Document] = [
        ["key": ["lastError": 1, "_id": 1], "name": "parked_by_error", "partialFilterExpression": ["status": .string(Status.parked)]]
    ]

    /// The TTL index that deletes delivered events some time after delivery
    /// (`--delivered-retention`); it covers delivered events only.
    public static let retentionIndex = "delivered_retention"

    /// What `applyRetention` did.
    public enum RetentionChange: Equatable, Sendable {
        case unchanged
        case created(seconds: Int)
        case changed(fromSeconds: Int, toSeconds: Int)
        case removed(seconds: Int)
    }

    /// Makes the retention of delivered events what is asked: `seconds` after `deliveredAt` (a TTL
    /// index whose filter holds delivered events only, so nothing pending or parked is ever
    /// deleted), or kept for ever (`nil`: no such index). The server deletes expired documents in
    /// the background (MongoDB about once a minute).
    public static func applyRetention(seconds: Int?, collection: String, connection: MongoConnection) throws -> RetentionChange {
        let indexes = try connection.runCommand(["listIndexes": .string(collection)])["cursor"]?.documentValue?["firstBatch"]?.arrayValue ?? []
        let current = indexes.compactMap(\.documentValue).first { $0["name"]?.stringValue == retentionIndex }
        let currentSeconds = current?["expireAfterSeconds"]?.intValue
        switch (currentSeconds, seconds) {
        case (nil, nil):
            return .unchanged
        case (let old?, nil):
            try connection.runCommand(["dropIndexes": .string(collection), "index": .string(retentionIndex)])
            return .removed(seconds: old)
        case (nil, let new?):
            try connection.collection(collection).createIndexes([
                [
                    "key": ["deliveredAt": 1], "name": .string(retentionIndex), "expireAfterSeconds": .int64(Int64(new)),
                    "partialFilterExpression": ["status": .string(Status.delivered)],
                ]
            ])
            return .created(seconds: new)
        case (let old?, let new?):
            guard old != new else { return .unchanged }
            try connection.runCommand([
                "collMod": .string(collection), "index": ["name": .string(retentionIndex), "expireAfterSeconds": .int64(Int64(new))],
            ])
            return .changed(fromSeconds: old, toSeconds: new)
        }
    }

    /// A `$jsonSchema` validator for the writer's contract (the same rules as
    /// `schema/outbox-event.schema.json`): a writer's malformed insert then fails inside its own
    /// transaction. Relay fields are allowed.
    public static let validator: Document = [
        "$jsonSchema": [
            "bsonType": "object",
            "required": ["type", "aggregateId", "data"],
            "properties": [
                "type": ["bsonType": "string", "minLength": 1, "maxLength": 255],
                "aggregateId": ["bsonType": "string", "minLength": 1],
                "data": ["bsonType": "object"],
                "timestamp": ["bsonType": "date"],
                "aggregateType": ["bsonType": "string"],
                "aggregateVersion": ["bsonType": ["int", "long"], "minimum": 1],
                "exchange": ["bsonType": "string", "maxLength": 255],
                "routingKey": ["bsonType": "string", "maxLength": 255],
                "headers": ["bsonType": "object"],
                "correlationId": ["bsonType": "string"],
                "priority": ["bsonType": ["int", "long"], "minimum": 0, "maximum": 255],
                "traceparent": ["bsonType": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$"],
                "tracestate": ["bsonType": "string", "maxLength": .int32(Int32(TraceContext.maxTracestateLength))],
                // Absent, null or pending when written (documents the relay reads as new); the
                // relay's own states after that.
                "status": ["enum": .array([.null] + Status.known.map { .string($0) })],
                "expiresAt": ["bsonType": "date"],
                "deliverAt": ["bsonType": "date"],
                "bodyFormat": ["enum": .array(BodyFormat.allCases.map { .string($0.rawValue) })],
            ],
        ]
    ]
}
