import Outbox
import OutboxConsumer

/// The `OrderCreated` event as consumers read it from the message body
/// (`{"id", "type", "aggregateId", ..., "data": {"orderId", "customerId", "totalAmount", "items"}}`).
public struct OrderCreated: Sendable, Equatable {
    public struct Item: Sendable, Equatable {
        public var sku: String
        public var quantity: Int
        /// Exact decimal text, e.g. "12.50".
        public var unitPrice: String
    }

    public var orderId: String
    public var customerId: String
    public var totalAmount: String
    public var items: [Item]

    public static let type = "OrderCreated"

    /// Parses the event; a body that is not a valid `OrderCreated` is a permanent failure.
    public init(_ message: IncomingMessage) throws {
        let json: JSONValue
        do { json = try message.json() } catch { throw PermanentFailure("body is not JSON: \(error)") }
        guard let data = json["data"] else { throw PermanentFailure("OrderCreated without data") }
        func string(_ value: JSONValue?, _ field: String) throws -> String {
            switch value {
            case .string(let s)?: return s
            case .number(let n)?: return n
            default: throw PermanentFailure("OrderCreated.\(field) is missing or not a string")
            }
        }
        orderId = try string(data["orderId"], "orderId")
        customerId = try string(data["customerId"], "customerId")
        totalAmount = try string(data["totalAmount"], "totalAmount")
        guard case .array(let rawItems)? = data["items"] else { throw PermanentFailure("OrderCreated.items is not an array") }
        items = try rawItems.enumerated().map { index, raw in
            guard case .number(let q)? = raw["quantity"], let quantity = Int(q) else {
                throw PermanentFailure("OrderCreated.items[\(index)].quantity is not an integer")
            }
            return Item(
                sku: try string(raw["sku"], "items[\(index)].sku"), quantity: quantity,
                unitPrice: try string(raw["unitPrice"], "items[\(index)].unitPrice"))
        }
    }
}
