import Foundation
import Logging
import Outbox
import Synchronization

/// The relay's view of the outbox collection in MongoDB.
public final class MongoOutboxStore: OutboxStore {
    public struct Options: Sendable {
        public var collection: String
        /// Largest message body the relay publishes; a larger event is parked.
        public var maxBodyBytes: Int
        /// Number of partitions (must match the writers' and the lease store's).
        public var partitions: Int
        /// How message bodies are made (format, decimals).
        public var body: MessageBodyOptions
        public init(
            collection: String = OutboxSchema.defaultCollection, maxBodyBytes: Int = 1 << 20,
            partitions: Int = OutboxSchema.defaultPartitions, body: MessageBodyOptions = .init()
        ) {
            self.collection = collection
            self.maxBodyBytes = maxBodyBytes
            self.partitions = partitions
            self.body = body
        }
    }

    private let pool: MongoClientPool
    private let options: Options
    /// The relay whose leases fence this store's writes.
    private let owner: String
    private let logger: Logger
    private let scan = Mutex(ScanPosition())

    public init(pool: MongoClientPool, owner: String, options: Options = Options(), logger: Logger) {
        self.pool = pool
        self.owner = owner
        self.options = options
        self.logger = logger
    }

    /// Creates the indexes the relay's queries need; idempotent.
    public func ensureIndexes() async throws {
        let name = options.collection
        try await pool.withConnection { connection in
            try connection.collection(name).createIndexes(Self.indexes)
        }
    }

    static let indexes: [Document] = [
        // Per-partition pending scans of each relay.
        ["key": ["status": 1, "partition": 1, "_id": 1], "name": "status_partition_id"],
        // The pending scan: equality on status, then creation order.
        ["key": ["status": 1, "_id": 1], "name": "status_id"],
        // One version of an aggregate once; per-aggregate order checks and history read it.
        ["key": ["aggregateId": 1, "aggregateVersion": 1, "aggregateType": 1], "name": "aggregate_version", "unique": true],
    ]

    public func fetchDue(limit: Int, leases: [PartitionLease]) async throws -> [OutboxMessage] {
        guard !leases.isEmpty else { return [] }
        let collection = options.collection
        let maxBody = options.maxBodyBytes
        let partitions = options.partitions
        let body = options.body
        let owned = Set(leases.map(\.partition))
        let start = scan.withLock { $0 }
        let (messages, malformed, next) = try await pool.withConnection { connection in
            let outbox = connection.collection(collection)
            let (candidates, next) = try Self.scanWindows(outbox, from: start, limit: limit, owned: owned, partitions: partitions)
            var valid: [OutboxMessage] = []
            var malformed: [(id: BSON, partition: Int, reason: String)] = []
            for document in candidates {
                switch OutboxDocument.decode(document, maxBodyBytes: maxBody, partitions: partitions, body: body) {
                case .success(let message): valid.append(message)
                case .failure(let failure):
                    // A document without a usable partition is parked under partition 0's lease.
                    let partition = document["partition"]?.intValue.flatMap { owned.contains($0) ? $0 : nil } ?? 0
                    malformed.append((document["_id"] ?? .null, partition, failure.reason))
                }
            }
            return (try Self.headsOfAggregates(valid, outbox: outbox), malformed, next)
        }
        // Nothing publishable here (e.g. only later versions whose earlier ones lie behind the
        // scan position): start again from the lowest pending id, or the scan could stay stuck.
        scan.withLock { $0 = messages.isEmpty ? ScanPosition(from: nil, seconds: next.seconds) : next }
        if !malformed.isEmpty { try await park(malformed, leases: leases) }
        return messages
    }

    /// Where the pending scan goes on: a lower bound on `_id` and a window length in seconds of
    /// ObjectId time.
    struct ScanPosition: Sendable {
        var from: String?
        var seconds: UInt32 = 4
    }

    /// Finds due pending events of the owned partitions by walking `_id` windows.
    ///
    /// A query bounded on both sides of `_id` (with `status`) reads only that window's documents,
    /// whatever the backlog, where an open-ended "pending, sorted, limited" query may read every
    /// pending document first. The window adapts to the density of events; at the end of the
    /// backlog the scan rewinds to the lowest pending id, so rescheduled events are seen again.
    static func scanWindows(
        _ outbox: MongoCollection, from position: ScanPosition, limit: Int, owned: Set<Int>, partitions: Int
    ) throws -> ([Document], ScanPosition) {
        var position = position
        if position.from == nil {
            guard let lowest = try outbox.find(["status": .string(OutboxSchema.Status.pending)], options: ["sort": ["_id": 1], "limit": 1, "projection": ["_id": 1]]).first?["_id"]?.stringValue else {
                return ([], ScanPosition())
            }
            position.from = lowest
        }
        let now = Date()
        let nowSeconds = UInt32(now.timeIntervalSince1970)
        var found: [Document] = []
        for _ in 0..<16 {
            let lower = position.from!
            // Ids that are not ObjectId hex cannot be windowed: read the rest of the backlog once.
            let lowerSeconds = UInt32(lower.prefix(8), radix: 16).flatMap { lower.utf8.count == 24 ? $0 : nil }
            var idRange: Document = ["$gte": .string(lower)]
            var upperSeconds = UInt32.max
            if let lowerSeconds {
                upperSeconds = lowerSeconds &+ position.seconds
                idRange["$lt"] = .string(String(format: "%08x", upperSeconds) + String(repeating: "0", count: 16))
            }
            let window = try outbox.find(
                ["status": .string(OutboxSchema.Status.pending), "_id": .document(idRange)],
                options: ["sort": ["_id": 1], "limit": .int64(Int64(limit * 2))])
            for document in window {
                // A document without a usable partition is handled (parked) by partition 0's owner.
                let partition = document["partition"]?.intValue.flatMap { (0..<partitions).contains($0) ? $0 : nil } ?? 0
                guard owned.contains(partition) else { continue }
                if let due = document["nextAttemptAt"]?.dateValue, due > now { continue }
                found.append(document)
            }
            if window.count >= limit * 2 {
                // Dense: look at less next time.
                position.seconds = max(position.seconds / 2, 1)
                if found.count >= limit { break }  // stay here: this batch gets delivered
                // What was read belongs mostly to other relays' partitions (or is not due):
                // page on through the window from its last id.
                position.from = window.last?["_id"]?.stringValue ?? lower
                continue
            }
            if upperSeconds > nowSeconds || lowerSeconds == nil {
                // Reached the newest events. Ids beyond the window (not ObjectId hex, or from a
                // clock ahead of ours) are read once here; normally there are none.
                if lowerSeconds != nil, let upper = idRange["$lt"], found.count < limit {
                    let tail = try outbox.find(
                        ["status": .string(OutboxSchema.Status.pending), "_id": ["$gte": upper]],
                        options: ["sort": ["_id": 1], "limit": .int64(Int64(limit - found.count))])
                    found += tail.filter { document in
                        guard let partition = document["partition"]?.intValue else { return owned.contains(0) }
                        return owned.contains(partition) && (document["nextAttemptAt"]?.dateValue).map { $0 <= now } ?? true
                    }
                }
                // Start again from the lowest pending id next time.
                position = ScanPosition(from: nil, seconds: position.seconds)
                break
            }
            if found.count >= limit { break }
            position.from = String(format: "%08x", upperSeconds) + String(repeating: "0", count: 16)
            position.seconds = min(position.seconds * 2, 1 << 20)
        }
        return (Array(found.prefix(limit)), position)
    }

    /// Keeps, per aggregate, only its lowest pending version, so version n+1 is never published
    /// before version n was confirmed or parked (I5). One query reads the pending versions of the
    /// batch's aggregates.
    static func headsOfAggregates(_ messages: [OutboxMessage], outbox: MongoCollection) throws -> [OutboxMessage] {
        guard !messages.isEmpty else { return [] }
        // Version 1 has no predecessor; only later versions need the check. The query reads the
        // aggregates' earlier versions through the aggregate_version index; pending is checked
        // here (a `status` condition in the query steers some planners to the status index and a
        // scan of the whole backlog).
        let later = messages.filter { ($0.aggregateVersion ?? 1) > 1 }
        guard !later.isEmpty else { return Self.firstPerAggregate(messages) }
        let newest = later.map { $0.aggregateVersion ?? 1 }.max()!
        let earlier = try outbox.find(
            ["aggregateId": ["$in": .array(Set(later.map(\.aggregateId)).map { .string($0) })], "aggregateVersion": ["$lt": .int64(Int64(newest))]],
            options: ["projection": ["aggregateType": 1, "aggregateId": 1, "aggregateVersion": 1, "status": 1]])
        var lowest: [AggregateKey: Int] = [:]
        for message in messages {
            let key = AggregateKey(type: message.aggregateType, id: message.aggregateId)
            lowest[key] = min(lowest[key] ?? (message.aggregateVersion ?? 1), message.aggregateVersion ?? 1)
        }
        for document in earlier where document["status"]?.stringValue == OutboxSchema.Status.pending {
            guard let id = document["aggregateId"]?.stringValue, let version = document["aggregateVersion"]?.intValue else {
                continue
            }
            let key = AggregateKey(type: document["aggregateType"]?.stringValue ?? "", id: id)
            lowest[key] = min(lowest[key] ?? version, version)
        }
        return firstPerAggregate(messages.filter { lowest[AggregateKey(type: $0.aggregateType, id: $0.aggregateId)] == $0.aggregateVersion })
    }

    /// At most one event per aggregate in a batch (its lowest version).
    static func firstPerAggregate(_ messages: [OutboxMessage]) -> [OutboxMessage] {
        var taken = Set<AggregateKey>()
        return messages.filter { taken.insert(AggregateKey(type: $0.aggregateType, id: $0.aggregateId)).inserted }
    }

    public func markDelivered(_ messages: [OutboxMessage], leases: [PartitionLease]) async throws -> Set<Int> {
        let update: BSON = [
            [
                "$set": [
                    "status": .string(OutboxSchema.Status.delivered), "deliveredAt": "$$NOW",
                    "attempts": ["$add": [["$ifNull": ["$attempts", 0]], 1]],
                ]
            ],
            ["$unset": ["lastError"]],
        ]
        return try await fencedUpdate(messages.map { (id: BSON.string($0.id), partition: $0.partition, update: update) }, leases: leases)
    }

    public func markFailed(_ failures: [FailedDelivery], leases: [PartitionLease]) async throws -> Set<Int> {
        let now = Date()
        let writes: [(id: BSON, partition: Int, update: BSON)] = failures.map { failure in
            switch failure.decision {
            case .retry(let delay):
                let next = now.addingTimeInterval(Double(delay.milliseconds) / 1000)
                return (.string(failure.id), failure.partition, ["$set": ["attempts": .int32(Int32(failure.attempts)), "lastError": .string(failure.error), "nextAttemptAt": .date(next)]])
            case .park:
                return (.string(failure.id), failure.partition, ["$set": [
                    "status": .string(OutboxSchema.Status.parked), "attempts": .int32(Int32(failure.attempts)),
                    "lastError": .string(failure.error), "parkedAt": .date(now),
                ]])
            }
        }
        return try await fencedUpdate(writes, leases: leases)
    }

    /// Parks documents the relay cannot publish, with the reason, so they never block the rest.
    /// Orphans (no valid partition) are parked under partition 0's lease.
    private func park(_ malformed: [(id: BSON, partition: Int, reason: String)], leases: [PartitionLease]) async throws {
        for item in malformed {
            logger.error("parking malformed outbox document", metadata: ["outbox.event_id": "\(ExtendedJSON.render(item.id))", "reason": "\(item.reason)"])
        }
        _ = try await fencedUpdate(
            malformed.map { item in
                (item.id, item.partition, ["$set": ["status": .string(OutboxSchema.Status.parked), "lastError": .string("malformed: \(item.reason)"), "parkedAt": .date(Date())]])
            }, leases: leases)
    }

    /// Applies each update to its pending event only while the event's `fence` is not above this
    /// relay's epoch for the event's partition, and raises the fence to that epoch: the event
    /// refuses any write with an older token than the newest it has seen. Once a relay that took
    /// the partition over has written to an event, the previous owner's writes no longer match.
    /// The check is the write itself, atomic, with no transaction (so no lock outlives a killed
    /// relay). Returns the partitions for which writes were refused.
    private func fencedUpdate(_ writes: [(id: BSON, partition: Int, update: BSON)], leases: [PartitionLease]) async throws -> Set<Int> {
        guard !writes.isEmpty else { return [] }
        let epochs = Dictionary(leases.map { ($0.partition, $0.epoch) }, uniquingKeysWith: max)
        let refused = Set(writes.map(\.partition).filter { epochs[$0] == nil })
        let allowed = writes.filter { epochs[$0.partition] != nil }
        let collection = options.collection
        let statements: [(filter: Document, update: BSON)] = allowed.map { write in
            let epoch = epochs[write.partition]!
            let filter: Document = ["_id": write.id, "status": .string(OutboxSchema.Status.pending), "fence": ["$not": ["$gt": .int64(epoch)]]]
            return (filter, Self.raisingFence(write.update, to: epoch))
        }
        let matched = try await pool.withConnection { try $0.collection(collection).bulkUpdate(statements).matched }
        guard matched < allowed.count else { return refused }
        // Some writes did not apply: those whose fence is above our epoch were fenced out (the
        // others were no longer pending, e.g. parked by an operator meanwhile).
        let ids: [BSON] = allowed.map(\.id)
        let fenced = try await pool.withConnection { connection in
            try connection.collection(collection).find(["_id": ["$in": .array(ids)]], options: ["projection": ["partition": 1, "fence": 1]])
        }
        var lost = refused
        for document in fenced {
            guard let partition = document["partition"]?.intValue, let epoch = epochs[partition],
                let fence = document["fence"]?.intValue, Int64(fence) > epoch
            else { continue }
            lost.insert(partition)
        }
        return lost
    }

    /// Adds "fence := max(fence, epoch)" to an update document or pipeline.
    static func raisingFence(_ update: BSON, to epoch: Int64) -> BSON {
        switch update {
        case .array(let stages):
            return .array(stages + [["$set": ["fence": ["$max": [["$ifNull": ["$fence", 0]], .int64(epoch)]]]]])
        case .document(var document):
            document["$max"] = ["fence": .int64(epoch)]
            return .document(document)
        default:
            return update
        }
    }
}

struct AggregateKey: Hashable {
    var type: String
    var id: String
}

/// Turns a stored outbox document into a publishable message, or says why it cannot be one.
public enum OutboxDocument {
    public struct Malformed: Error, Equatable {
        public let reason: String
    }

    public static func decode(
        _ document: Document, maxBodyBytes: Int, partitions: Int = OutboxSchema.defaultPartitions, body: MessageBodyOptions = .init()
    ) -> Result<OutboxMessage, Malformed> {
        func fail(_ reason: String) -> Result<OutboxMessage, Malformed> { .failure(Malformed(reason: reason)) }
        guard let id = document["_id"]?.stringValue, !id.isEmpty else { return fail("_id must be a non-empty string") }
        guard let type = document["type"]?.stringValue, !type.isEmpty else { return fail("type must be a non-empty string") }
        guard let aggregateType = document["aggregateType"]?.stringValue else { return fail("aggregateType must be a string") }
        guard let aggregateId = document["aggregateId"]?.stringValue, !aggregateId.isEmpty else {
            return fail("aggregateId must be a non-empty string")
        }
        guard let version = document["aggregateVersion"]?.intValue, version >= 1 else {
            return fail("aggregateVersion must be a positive integer")
        }
        guard let data = document["data"]?.documentValue else { return fail("data must be a document") }
        guard case .datetime(let timestamp) = document["timestamp"] else { return fail("timestamp must be a date") }
        guard let exchange = document["exchange"]?.stringValue else { return fail("exchange must be a string") }
        guard let routingKey = document["routingKey"]?.stringValue, routingKey.utf8.count <= 255 else {
            return fail("routingKey must be a string of at most 255 bytes")
        }
        guard exchange.utf8.count <= 255 else { return fail("exchange must be at most 255 bytes") }
        var headers: [String: HeaderValue] = [:]
        if let raw = document["headers"] {
            guard let doc = raw.documentValue else { return fail("headers must be a document") }
            for (key, value) in doc.fields {
                switch value {
                case .string(let s): headers[key] = .string(s)
                case .int32(let i): headers[key] = .int(Int64(i))
                case .int64(let i): headers[key] = .int(i)
                default: return fail("header \(key) must be a string or an integer")
                }
            }
        }
        guard let partition = document["partition"]?.intValue, (0..<partitions).contains(partition) else {
            return fail("partition must be an integer from 0 to \(partitions - 1)")
        }
        let attempts = document["attempts"]?.intValue ?? 0
        var message = OutboxMessage(
            id: id, type: type, aggregateType: aggregateType, aggregateId: aggregateId, aggregateVersion: version,
            exchange: exchange, routingKey: routingKey, occurredAt: timestamp,
            correlationId: document["correlationId"]?.stringValue, headers: headers, body: [], attempts: attempts,
            partition: partition)
        do { try MessageBody.render(&message, data: data, document: document, options: body) } catch { return .failure(error) }
        guard message.body.count <= maxBodyBytes else {
            return fail("body of \(message.body.count) bytes exceeds the limit of \(maxBodyBytes) bytes")
        }
        return .success(message)
    }
}
