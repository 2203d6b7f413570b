import Foundation
import Outbox

/// An event to append to the outbox in the caller's transaction.
public struct NewEvent: Sendable {
    public var type: String
    public var aggregateType: String
    public var aggregateId: String
    public var aggregateVersion: Int
    public var data: Document
    public var exchange: String
    public var routingKey: String
    public var correlationId: String?
    public var headers: [String: HeaderValue]
    /// The trace the event belongs to (e.g. the request's, or the message a consumer is applying),
    /// written as the document's `traceparent` and `tracestate`; the relay carries it on.
    public var traceContext: TraceContext?
    /// The AMQP `priority` (0–255) the message is published with; none by default.
    public var priority: UInt8?
    /// When the event stops being worth delivering: published with the AMQP `expiration` set to
    /// the time left, never published after it (the relay sets it `expired`).
    public var expiresAt: Date?
    /// Not published before this time (later events of its aggregate wait behind it).
    public var deliverAt: Date?

    /// `routingKey` defaults to the dotted form of `type` (`OrderCreated` → `order.created`).
    public init(
        type: String, aggregateType: String, aggregateId: String, aggregateVersion: Int = 1, data: Document,
        exchange: String = "orders", routingKey: String? = nil, correlationId: String? = nil,
        headers: [String: HeaderValue] = [:], traceContext: TraceContext? = nil, priority: UInt8? = nil,
        expiresAt: Date? = nil, deliverAt: Date? = nil
    ) {
        self.type = type
        self.aggregateType = aggregateType
        self.aggregateId = aggregateId
        self.aggregateVersion = aggregateVersion
        self.data = data
        self.exchange = exchange
        self.routingKey = routingKey ?? EventNaming.routingKey(forType: type)
        self.correlationId = correlationId
        self.headers = headers
        self.traceContext = traceContext
        self.priority = priority
        self.expiresAt = expiresAt
        self.deliverAt = deliverAt
    }
}

/// Appends events to the outbox inside the caller's transaction, so they exist if and only if
/// the business write they describe commits (I1).
public struct OutboxWriter: Sendable {
    public var collection: String
    public var partitions: Int

    public init(collection: String = OutboxSchema.defaultCollection, partitions: Int = OutboxSchema.defaultPartitions) {
        self.collection = collection
        self.partitions = partitions
    }

    /// The outbox document for `event`; its `_id` is a new ObjectId in hex, which is also the
    /// AMQP message id, so ids sort in creation order.
    public func document(for event: NewEvent, now: Date = Date()) -> Document {
        let id = ObjectId().hex
        var headers = Document()
        for (key, value) in event.headers.sorted(by: { $0.key < $1.key }) { headers[key] = OutboxDocument.bson(header: value) }
        var document: Document = [
            "_id": .string(id),
            "type": .string(event.type),
            "aggregateType": .string(event.aggregateType),
            "aggregateId": .string(event.aggregateId),
            "aggregateVersion": .int64(Int64(event.aggregateVersion)),
            "data": .document(event.data),
            "timestamp": .date(now),
            "exchange": .string(event.exchange),
            "routingKey": .string(event.routingKey),
            "headers": .document(headers),
            "partition": .int32(Int32(EventNaming.partition(ofAggregate: event.aggregateId, partitions: partitions))),
            "status": .string(OutboxSchema.Status.pending),
            // The relay's scan order; for events written here it is the id itself.
            "sid": .string(id),
            // The highest lease epoch that wrote to this event; relays write only with an epoch at least as high.
            "fence": .int64(0),
            "attempts": .int32(0),
            "nextAttemptAt": .date(now),
        ]
        if let correlationId = event.correlationId { document["correlationId"] = .string(correlationId) }
        if let priority = event.priority { document["priority"] = .int32(Int32(priority)) }
        if let expiresAt = event.expiresAt { document["expiresAt"] = .date(expiresAt) }
        if let deliverAt = event.deliverAt {
            document["deliverAt"] = .date(deliverAt)
            if deliverAt > now {
                // Out of the pending scan until it is due; the relay wakes for `dueAt`. Its
                // aggregate's later events wait behind it by version.
                document["status"] = .string(OutboxSchema.Status.scheduled)
                document["sid"] = .string(OutboxSchema.scheduledScanId(dueAt: Int64((deliverAt.timeIntervalSince1970 * 1000).rounded())))
                document["nextAttemptAt"] = .date(deliverAt)
                document["dueAt"] = .date(deliverAt)
            }
        }
        if let trace = event.traceContext {
            document[TraceContext.traceparentField] = .string(trace.traceparent)
            if let state = trace.tracestate { document[TraceContext.tracestateField] = .string(state) }
        }
        return document
    }

    /// Creates the outbox indexes; idempotent. The relay creates them too at start.
    public func ensureIndexes(using connection: MongoConnection) throws {
        try connection.collection(collection).createIndexes(OutboxSchema.indexes)
    }

    /// Inserts the events with `connection` (pass the transaction's connection); returns their ids.
    @discardableResult
    public func append(_ events: [NewEvent], using connection: MongoConnection) throws -> [String] {
        let now = Date()
        let documents = events.map { document(for: $0, now: now) }
        try connection.collection(collection).insertMany(documents)
        return documents.compactMap { $0["_id"]?.stringValue }
    }
}
