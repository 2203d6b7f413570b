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
        try handle(batch: [message], connection: connection)
    }

    /// The whole batch in three writes (as a real handler would write it): one increment, one
    /// insert of the effects, one of the follow-up events. A message that cannot be applied is
    /// named, so the others commit without it.
    func handle(batch messages: [IncomingMessage], connection: MongoConnection) throws {
        var effects: [Document] = []
        var followUps: [NewEvent] = []
        var total: Int64 = 0
        for (index, message) in messages.enumerated() {
            do {
                let event = try message.event()
                guard case .string(let customer)? = event.data["customerId"] else {
                    throw PermanentFailure("\(event.type ?? "event").customerId is missing or not a string")
                }
                var quantity: Int64 = 1
                if case .number(let text)? = event.data["quantity"], let given = Int64(text) { quantity = given }
                total += quantity
                effects.append([
                    "_id": .string(message.messageId), "customerId": .string(customer), "format": .string(event.format.rawValue),
                    "totalAmount": event.data["totalAmount"].map(Self.text) ?? .null,
                ])
                followUps.append(
                    NewEvent(
                        type: "Tallied", aggregateType: "Tally", aggregateId: message.messageId, data: ["quantity": .int64(quantity)],
                        exchange: exchange))
            } catch {
                throw MessageFailure(index: index, error: error)
            }
        }
        try connection.collection(Self.totals).updateOne(["_id": "total"], ["$inc": ["value": .int64(total)]], upsert: true)
        try connection.collection(Self.effects).insertMany(effects)
        try OutboxWriter().append(followUps, using: connection)
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
