import Foundation
import Outbox
import OutboxMongo

/// Orders and their events in MongoDB: an order and its `OrderCreated` event are written in one
/// transaction, so one never exists without the other (I1).
public struct OrderStore: Sendable {
    public static let ordersCollection = "orders"
    public static let aggregateType = "Order"
    public static let createdEventType = "OrderCreated"

    public let pool: MongoClientPool
    public let writer: OutboxWriter
    /// Exchange the order events are published to.
    public let exchange: String

    public init(pool: MongoClientPool, writer: OutboxWriter = OutboxWriter(), exchange: String = "orders") {
        self.pool = pool
        self.writer = writer
        self.exchange = exchange
    }

    public enum CreateResult: Sendable {
        case created(Document)
        /// The same idempotency key and body came before: the original order.
        case replayed(Document)
        /// The idempotency key was used before with a different body.
        case conflict
    }

    /// Creates the indexes the service needs; idempotent.
    public func ensureIndexes() async throws {
        let writer = self.writer
        try await pool.withConnection { connection in
            try connection.collection(Self.ordersCollection).createIndexes([
                [
                    "key": ["idempotencyKey": 1], "name": "idempotency_key", "unique": true,
                    "partialFilterExpression": ["idempotencyKey": ["$exists": true]],
                ],
                ["key": ["customerId": 1], "name": "customer"],
            ])
            try writer.ensureIndexes(using: connection)
        }
    }

    /// Writes the order and its `OrderCreated` event in one transaction.
    ///
    /// `traceContext` (the request's) goes into the event, so the trace goes on through it.
    /// With an idempotency key, a request seen before returns the order it created (and writes
    /// nothing); the key with a different body is a conflict. `requestFingerprint` identifies the body.
    public func create(
        _ order: ValidatedOrder, idempotencyKey: String? = nil, requestFingerprint: String? = nil, traceContext: TraceContext? = nil,
        beforeCommit: (@Sendable (MongoConnection) throws -> Void)? = nil
    ) async throws -> CreateResult {
        let orderId = ObjectId()
        let now = Date()
        let items: [BSON] = order.items.map { item in
            ["sku": .string(item.sku), "quantity": .int64(Int64(item.quantity)), "unitPrice": .decimal128(Decimal128(item.unitPriceText)!)]
        }
        let total = BSON.decimal128(Decimal128(order.totalAmountText)!)
        var orderDocument: Document = [
            "_id": .objectId(orderId), "customerId": .string(order.customerId), "items": .array(items),
            "totalAmount": total, "status": "created", "createdAt": .date(now), "version": 1,
        ]
        if let idempotencyKey {
            orderDocument["idempotencyKey"] = .string(idempotencyKey)
            orderDocument["requestFingerprint"] = .string(requestFingerprint ?? "")
        }
        let event = NewEvent(
            type: Self.createdEventType, aggregateType: Self.aggregateType, aggregateId: orderId.hex, aggregateVersion: 1,
            data: [
                "orderId": .string(orderId.hex), "customerId": .string(order.customerId), "totalAmount": total,
                "items": .array(items),
            ],
            exchange: exchange, correlationId: idempotencyKey, traceContext: traceContext)
        let document = orderDocument
        let writer = self.writer
        do {
            try await pool.withTransaction { connection in
                try connection.collection(Self.ordersCollection).insertOne(document)
                try writer.append([event], using: connection)
                try beforeCommit?(connection)
            }
            return .created(document)
        } catch let error as MongoError where error.isDuplicateKey && idempotencyKey != nil {
            guard let existing = try await find(idempotencyKey: idempotencyKey!) else { throw error }
            return existing["requestFingerprint"]?.stringValue == (requestFingerprint ?? "") ? .replayed(existing) : .conflict
        }
    }

    public func find(id: ObjectId) async throws -> Document? {
        try await pool.withConnection { try $0.collection(Self.ordersCollection).findOne(["_id": .objectId(id)]) }
    }

    func find(idempotencyKey: String) async throws -> Document? {
        try await pool.withConnection {
            try $0.collection(Self.ordersCollection).findOne(["idempotencyKey": .string(idempotencyKey)])
        }
    }

    /// The order as the API shows it.
    public static func publicJSON(_ order: Document) -> String {
        var shown: Document = ["id": order["_id"] ?? .null]
        for key in ["customerId", "items", "totalAmount", "status", "createdAt"] {
            shown[key] = order[key]
        }
        return ExtendedJSON.render(.document(shown))
    }
}
