import Foundation
import Outbox
import OutboxConsumer
import OutboxMongo

/// What the product's consumer tests apply: each message adds its `data.quantity` (1 when absent)
/// to one running total, records an effect under its message id and writes a follow-up event
/// through the outbox, all in the consumer's transaction, so each of them happens once per
/// message or not at all. A body whose data lacks `customerId` is a permanent failure naming the
/// field; `Tally.total(…)` reads the total back.
struct TallyHandler: InboxHandler {
    static let totals = "tally"
    static let effects = "effects"
    let exchange: String

    func handle(_ message: IncomingMessage, connection: MongoConnection) throws {
        let event = try message.event()
        guard case .string(let customer)? = event.data["customerId"] else {
            throw PermanentFailure("\(event.type ?? "event").customerId is missing or not a string")
        }
        let quantity = event.data["quantity"].flatMap { if case .number(let n) = $0 { Int(n) } else { nil } } ?? 1
        try connection.collection(Self.totals).updateOne(
            ["_id": "total"], ["$inc": ["value": .int64(Int64(quantity))]], upsert: true)
        try connection.collection(Self.effects).insertOne([
            "_id": .string(message.messageId), "customerId": .string(customer), "format": .string(event.format.rawValue),
            "totalAmount": event.data["totalAmount"].map(Self.text) ?? .null,
        ])
        try OutboxWriter().append(
            [
                NewEvent(
                    type: "Tallied", aggregateType: "Tally", aggregateId: message.messageId, data: ["quantity": .int64(Int64(quantity))],
                    exchange: exchange)
            ],
            using: connection)
    }

    /// A JSON number or string as its exact text.
    static func text(_ value: JSONValue) -> BSON {
        switch value {
        case .number(let n), .string(let n): .string(n)
        default: .null
        }
    }

    static func total(_ f: Fixture) async throws -> Int {
        try await f.find(totals).first?["value"]?.intValue ?? 0
    }
}
