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
        try handle(batch: [message], connection: connection)
    }

    /// One insert for the whole batch.
    public func handle(batch messages: [IncomingMessage], connection: MongoConnection) throws {
        var notifications: [Document] = []
        for (index, message) in messages.enumerated() {
            do {
                if let notification = try Self.notification(for: message) { notifications.append(notification) }
            } catch {
                throw MessageFailure(index: index, error: error)
            }
        }
        guard !notifications.isEmpty else { return }
        try connection.collection(Self.collection).insertMany(notifications)
    }

    /// The confirmation for an `OrderCreated`; nil for other events.
    static func notification(for message: IncomingMessage) throws -> Document? {
        // Any body format the relay may use: the event's type and data read the same.
        let event = try message.event()
        guard event.type == nil || event.type == OrderCreated.type else { return nil }
        let order = try OrderCreated(event)
        let lines = order.items.map { "\($0.quantity) × \($0.sku) at \($0.unitPrice)" }
        let text = "Thank you for your order \(order.orderId).\n" + lines.joined(separator: "\n") + "\nTotal: \(order.totalAmount)"
        return [
            "_id": .string(order.orderId), "recipient": .string(order.customerId),
            "subject": .string("Your order \(order.orderId) is confirmed"), "text": .string(text),
            "messageId": .string(message.messageId), "createdAt": .date(Date()),
        ]
    }
}
