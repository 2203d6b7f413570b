import Foundation
import Inventory
import Notifications
import Outbox
import OutboxAMQP
import OutboxConsumer
import OutboxMongo
import Testing

@Suite("The example consumers read every format (I4)", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct ConsumerFormatTests {
    func message(_ f: Fixture, orderId: String, data: Document, options: MessageBodyOptions) throws -> OutboxMessage {
        let document = OutboxWriter().document(
            for: NewEvent(
                type: "OrderCreated", aggregateType: "Order", aggregateId: orderId, data: data, exchange: f.exchange, correlationId: "req-\(orderId)")
        )
        return try OutboxDocument.decode(document, options: .init(body: options), isNew: false).get()
    }

    @Test(
        "inventory and notifications apply each order once, skip duplicates by message id, dead-letter an order without a customer",
        arguments: BodyFormat.allCases)
    func everyFormat(format: BodyFormat) async throws {
        try await Fixture.with { f in
            try await InventoryHandler.setStock(["A": 100, "B": 100], pool: f.pool)
            let inventory = f.consumer("inventory", handler: InventoryHandler(exchange: f.exchange))
            let notification = f.consumer("notification", handler: NotificationHandler())
            let tasks = [Task { try await inventory.run() }, Task { try await notification.run() }]
            defer { tasks.forEach { $0.cancel() } }
            #expect(await eventually { await inventory.isConnected })
            #expect(await eventually { await notification.isConnected })

            var orders: [OutboxMessage] = []
            for decimals in DecimalFormat.allCases {
                let orderId = "o-\(decimals)"
                var data = SeedData.order
                data["orderId"] = .string(orderId)
                orders.append(try message(f, orderId: orderId, data: data, options: .init(format: format, decimals: decimals)))
            }
            let poison = try message(f, orderId: "o-bad", data: ["orderId": "o-bad"], options: .init(format: format))
            let publisher = f.makePublisher()
            // Each order twice, as a broker redelivery or a relay retry would.
            let outcomes = await publisher.publish([orders[0], orders[1], orders[0], poison, orders[1]])
            #expect(outcomes.allSatisfy { $0 == .acked })
            await publisher.close()

            for service in [inventory, notification] {
                #expect(await eventually { service.stats.processed == 2 && service.stats.duplicates == 2 && service.stats.deadLettered == 1 })
            }
            let stock = Dictionary(uniqueKeysWithValues: try await f.find("stock").map { ($0["_id"]!.stringValue!, $0["available"]!.intValue!) })
            #expect(stock == ["A": 96, "B": 98])
            let notes = try await f.find("notifications")
            #expect(notes.count == 2)
            for note in notes {
                let text = note["text"]?.stringValue ?? ""
                #expect(text.contains("2 × A at 19.99") && text.contains("1 × B at 5.01") && text.contains("Total: 44.99"), "\(text)")
                #expect(note["recipient"] == "c-1")
            }
            #expect(Set(try await f.find("inbox").compactMap { $0["messageId"]?.stringValue }) == Set(orders.map(\.id)))

            let dead = try await f.admin.drain(inventory.configuration.topology.deadLetterQueue)
            #expect(dead.map(\.messageId) == [poison.id])
            #expect(dead.first?.headers["x-error"].map { "\($0)".contains("OrderCreated.customerId") } == true)
        }
    }
}

/// The seed's order, 2 × 19.99 + 1 × 5.01, as the order service writes its event data.
enum SeedData {
    static let order: Document = [
        "orderId": "o", "customerId": "c-1", "totalAmount": .decimal128(Decimal128("44.99")!),
        "items": [
            ["sku": "A", "quantity": .int64(2), "unitPrice": .decimal128(Decimal128("19.99")!)],
            ["sku": "B", "quantity": .int64(1), "unitPrice": .decimal128(Decimal128("5.01")!)],
        ],
    ]
}
