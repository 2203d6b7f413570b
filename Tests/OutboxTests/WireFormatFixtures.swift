import Foundation
import Outbox
import OutboxConsumer
import Testing

@testable import OutboxMongo

/// The seed's order: 2 × 19.99 + 1 × 5.01 = 44.99, as the order service writes it to the outbox.
enum SeedOrder {
    static let eventId = "6b087b9e339ba1f1c5054802"
    static let orderId = "6b087b9e339ba1f1c5054801"
    static let occurredAt: Int64 = 1_764_180_000_123
    static var time: String { ExtendedJSON.iso8601(milliseconds: occurredAt) }

    static let data: Document = [
        "orderId": .string(orderId), "customerId": "c-1", "totalAmount": .decimal128(Decimal128("44.99")!),
        "items": [
            ["sku": "A", "quantity": .int64(2), "unitPrice": .decimal128(Decimal128("19.99")!)],
            ["sku": "B", "quantity": .int64(1), "unitPrice": .decimal128(Decimal128("5.01")!)],
        ],
    ]

    static let dataWithNumbers =
        #"{"orderId":"6b087b9e339ba1f1c5054801","customerId":"c-1","totalAmount":44.99,"items":[{"sku":"A","quantity":2,"unitPrice":19.99},{"sku":"B","quantity":1,"unitPrice":5.01}]}"#
    static let dataWithStrings =
        #"{"orderId":"6b087b9e339ba1f1c5054801","customerId":"c-1","totalAmount":"44.99","items":[{"sku":"A","quantity":2,"unitPrice":"19.99"},{"sku":"B","quantity":1,"unitPrice":"5.01"}]}"#

    static func document(exchange: String = "orders", extra: Document = [:]) -> Document {
        var document = OutboxWriter().document(
            for: NewEvent(
                type: "OrderCreated", aggregateType: "Order", aggregateId: orderId, data: data, exchange: exchange,
                correlationId: "key-1"))
        document["_id"] = .string(eventId)
        document["timestamp"] = .datetime(occurredAt)
        for (key, value) in extra.fields { document[key] = value }
        return document
    }

    static func message(_ options: MessageBodyOptions, exchange: String = "orders", extra: Document = [:]) throws -> OutboxMessage {
        try OutboxDocument.decode(document(exchange: exchange, extra: extra), options: .init(body: options), isNew: false).get()
    }
}

extension OutboxMessage {
    var bodyText: String { String(decoding: body, as: UTF8.self) }

    /// The message as a consumer receives it.
    var incoming: IncomingMessage {
        IncomingMessage(
            messageId: id, type: type, routingKey: routingKey, headers: wireHeaders, contentType: contentType,
            correlationId: correlationId, body: body)
    }
}
