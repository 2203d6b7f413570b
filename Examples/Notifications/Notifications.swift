import Foundation
import Outbox
import OutboxConsumer
import OrderEvents
import OutboxMongo

/// Records one order-confirmation message per order for the customer.
/// It reads `order.created` from its own queue; the order service knows nothing of it.
public struct NotificationHandler: InboxHandler {
    public static let collection = "notifications"

    public init() {}

    public func handle(_ message: IncomingMessage, connection: MongoConnection) throws {
        // Any body format the relay may use: the event's type and data read the same.
        let event = try message.event()
        guard event.type == nil || event.type == OrderCreated.type else { return }
        let order = try OrderCreated(event)
        let lines = order.items.map { "\($0.quantity) × \($0.sku) at \($0.unitPrice)" }
        let text = "Thank you for your order \(order.orderId).\n" + lines.joined(separator: "\n") + "\nTotal: \(order.totalAmount)"
        try connection.collection(Self.collection).insertOne([
            "_id": .string(order.orderId), "recipient": .string(order.customerId),
            "subject": .string("Your order \(order.orderId) is confirmed"), "text": .string(text),
            "messageId": .string(message.messageId), "createdAt": .date(Date()),
        ])
    }
}
