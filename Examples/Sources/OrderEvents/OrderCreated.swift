import Outbox
import OutboxConsumer

/// The `OrderCreated` event as consumers read it: its data `{"orderId", "customerId",
/// "totalAmount", "items": [{"sku", "quantity", "unitPrice"}]}`, whatever body format the relay
/// used (see `IncomingMessage.event()`). Amounts may arrive as strings (`"44.99"`) or number
/// literals (`44.99`); either way their exact decimal text is kept, never a binary float.
public struct OrderCreated: Sendable, Equatable {
    public struct Item: Sendable, Equatable {
        public var sku: String
        public var quantity: Int
        /// Exact decimal text, e.g. "12.50".
        public var unitPrice: String
    }

    public var orderId: String
    public var customerId: String
    /// Exact decimal text, e.g. "44.99".
    public var totalAmount: String
    public var items: [Item]

    public static let type = "OrderCreated"

    /// Parses the event; a body that is not a valid `OrderCreated` is a permanent failure.
    public init(_ message: IncomingMessage) throws {
        try self.init(try message.event())
    }

    public init(_ event: IncomingEvent) throws {
        let data = event.data
        guard case .object = data else { throw PermanentFailure("OrderCreated data is \(data.typeName), not an object") }
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
