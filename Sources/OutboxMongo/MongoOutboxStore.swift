import Foundation
import Logging
import Outbox

/// The relay's view of the outbox collection in MongoDB.
public final class MongoOutboxStore: OutboxStore {
    public struct Options: Sendable {
        public var collection: String
        /// Largest message body the relay publishes; a larger event is parked.
        public var maxBodyBytes: Int

        public init(collection: String = OutboxSchema.defaultCollection, maxBodyBytes: Int = 1 << 20) {
            self.collection = collection
            self.maxBodyBytes = maxBodyBytes
        }
    }

    private let pool: MongoClientPool
    private let options: Options
    private let logger: Logger

    public init(pool: MongoClientPool, options: Options = Options(), logger: Logger) {
        self.pool = pool
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
        // The pending scan: equality on status, then creation order.
        ["key": ["status": 1, "_id": 1], "name": "status_id"],
        // One version of an aggregate once; per-aggregate order checks and history read it.
        ["key": ["aggregateId": 1, "aggregateVersion": 1, "aggregateType": 1], "name": "aggregate_version", "unique": true],
    ]

    public func fetchDue(limit: Int) async throws -> [OutboxMessage] {
        let collection = options.collection
        let maxBody = options.maxBodyBytes
        let (messages, malformed) = try await pool.withConnection { connection in
            let outbox = connection.collection(collection)
            let candidates = try outbox.find(
                ["status": .string(OutboxSchema.Status.pending), "nextAttemptAt": ["$lte": .date(Date())]],
                options: ["sort": ["_id": 1], "limit": .int64(Int64(limit))])
            var valid: [OutboxMessage] = []
            var malformed: [(id: BSON, reason: String)] = []
            for document in candidates {
                switch OutboxDocument.decode(document, maxBodyBytes: maxBody) {
                case .success(let message): valid.append(message)
                case .failure(let failure): malformed.append((document["_id"] ?? .null, failure.reason))
                }
            }
            return (try Self.headsOfAggregates(valid, outbox: outbox), malformed)
        }
        if !malformed.isEmpty { try await park(malformed) }
        return messages
    }

    /// Keeps, per aggregate, only its lowest pending version, so version n+1 is never published
    /// before version n was confirmed or parked (I5). One query reads the pending versions of the
    /// batch's aggregates.
    static func headsOfAggregates(_ messages: [OutboxMessage], outbox: MongoCollection) throws -> [OutboxMessage] {
        guard !messages.isEmpty else { return [] }
        let aggregateIds = Array(Set(messages.map(\.aggregateId)))
        let pending = try outbox.find(
            ["status": .string(OutboxSchema.Status.pending), "aggregateId": ["$in": .array(aggregateIds.map { .string($0) })]],
            options: ["projection": ["aggregateType": 1, "aggregateId": 1, "aggregateVersion": 1]])
        var lowest: [AggregateKey: Int] = [:]
        for document in pending {
            guard let id = document["aggregateId"]?.stringValue, let version = document["aggregateVersion"]?.intValue else {
                continue
            }
            let key = AggregateKey(type: document["aggregateType"]?.stringValue ?? "", id: id)
            lowest[key] = min(lowest[key] ?? version, version)
        }
        var taken = Set<AggregateKey>()
        return messages.filter { message in
            let key = AggregateKey(type: message.aggregateType, id: message.aggregateId)
            guard lowest[key] == message.aggregateVersion, !taken.contains(key) else { return false }
            taken.insert(key)
            return true
        }
    }

    public func markDelivered(_ ids: [String]) async throws {
        guard !ids.isEmpty else { return }
        let collection = options.collection
        try await pool.withConnection { connection in
            try connection.collection(collection).updateMany(
                ["_id": ["$in": .array(ids.map { .string($0) })], "status": .string(OutboxSchema.Status.pending)],
                pipeline: [
                    [
                        "$set": [
                            "status": .string(OutboxSchema.Status.delivered), "deliveredAt": "$$NOW",
                            "attempts": ["$add": [["$ifNull": ["$attempts", 0]], 1]],
                        ]
                    ],
                    ["$unset": ["lastError"]],
                ])
        }
    }

    public func markFailed(_ failures: [FailedDelivery]) async throws {
        guard !failures.isEmpty else { return }
        let collection = options.collection
        let now = Date()
        let statements: [(filter: Document, update: BSON)] = failures.map { failure in
            let filter: Document = ["_id": .string(failure.id), "status": .string(OutboxSchema.Status.pending)]
            switch failure.decision {
            case .retry(let delay):
                let next = now.addingTimeInterval(Double(delay.milliseconds) / 1000)
                return (filter, ["$set": ["attempts": .int32(Int32(failure.attempts)), "lastError": .string(failure.error), "nextAttemptAt": .date(next)]])
            case .park:
                return (filter, ["$set": [
                    "status": .string(OutboxSchema.Status.parked), "attempts": .int32(Int32(failure.attempts)),
                    "lastError": .string(failure.error), "parkedAt": .date(now),
                ]])
            }
        }
        try await pool.withConnection { connection in
            try connection.collection(collection).bulkUpdate(statements)
        }
    }

    /// Parks documents the relay cannot publish, with the reason, so they never block the rest.
    private func park(_ malformed: [(id: BSON, reason: String)]) async throws {
        let collection = options.collection
        for item in malformed {
            logger.error("parking malformed outbox document", metadata: ["outbox.event_id": "\(ExtendedJSON.render(item.id))", "reason": "\(item.reason)"])
        }
        let statements: [(filter: Document, update: BSON)] = malformed.map { item in
            (["_id": item.id, "status": .string(OutboxSchema.Status.pending)],
             ["$set": ["status": .string(OutboxSchema.Status.parked), "lastError": .string("malformed: \(item.reason)"), "parkedAt": .date(Date())]])
        }
        try await pool.withConnection { connection in
            try connection.collection(collection).bulkUpdate(statements)
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

    public static func decode(_ document: Document, maxBodyBytes: Int) -> Result<OutboxMessage, Malformed> {
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
        let attempts = document["attempts"]?.intValue ?? 0
        let envelope: Document = [
            "id": .string(id), "type": .string(type), "aggregateType": .string(aggregateType),
            "aggregateId": .string(aggregateId), "aggregateVersion": .int64(Int64(version)),
            "timestamp": .datetime(timestamp), "data": .document(data),
        ]
        let body = ExtendedJSON.renderBytes(envelope)
        guard body.count <= maxBodyBytes else {
            return fail("body of \(body.count) bytes exceeds the limit of \(maxBodyBytes) bytes")
        }
        return .success(
            OutboxMessage(
                id: id, type: type, aggregateType: aggregateType, aggregateId: aggregateId, aggregateVersion: version,
                exchange: exchange, routingKey: routingKey, occurredAt: timestamp,
                correlationId: document["correlationId"]?.stringValue, headers: headers, body: body, attempts: attempts))
    }
}
