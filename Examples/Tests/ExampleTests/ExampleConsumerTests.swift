import Foundation
import Inventory
import Notifications
import Outbox
import OutboxAMQP
import OutboxConsumer
import OutboxMongo
import Testing

@testable import OrderService

@Suite("The example consumers on the real servers", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct ExampleConsumerTests {
    func orderCreated(_ f: Fixture, orderId: String, items: [(String, Int)]) -> OutboxMessage {
        let data: Document = [
            "orderId": .string(orderId), "customerId": "c-1", "totalAmount": .decimal128(Decimal128("10.00")!),
            "items": .array(items.map { ["sku": .string($0.0), "quantity": .int64(Int64($0.1)), "unitPrice": .decimal128(Decimal128("5.00")!)] }),
        ]
        let body: Document = ["id": .string(orderId), "type": "OrderCreated", "data": .document(data)]
        return OutboxMessage(
            id: "evt-\(orderId)", type: "OrderCreated", aggregateType: "Order", aggregateId: orderId, aggregateVersion: 1,
            exchange: f.exchange, routingKey: "order.created", occurredAt: 0, body: ExtendedJSON.renderBytes(body))
    }

    @Test("a message delivered twice or three times changes stock once")
    func duplicates() async throws {
        try await Fixture.with { f in
            try await InventoryHandler.setStock(["A": 10, "B": 10], pool: f.pool)
            let inventory = f.consumer("inventory", handler: InventoryHandler(exchange: f.exchange))
            let running = Task { try await inventory.run() }
            defer { running.cancel() }
            #expect(await eventually { await inventory.isConnected })

            let publisher = f.makePublisher()
            let first = orderCreated(f, orderId: "o-1", items: [("A", 2), ("B", 1)])
            let second = orderCreated(f, orderId: "o-2", items: [("A", 1)])
            #expect(await publisher.publish([first, first, second, second, second]) == Array(repeating: .acked, count: 5))
            await publisher.close()

            #expect(await eventually { inventory.stats.processed + inventory.stats.duplicates == 5 })
            #expect(inventory.stats.processed == 2)
            #expect(inventory.stats.duplicates == 3)
            let stock = Dictionary(uniqueKeysWithValues: try await f.find("stock").map { ($0["_id"]!.stringValue!, $0["available"]!.intValue!) })
            #expect(stock == ["A": 7, "B": 9])
            #expect(try await f.count("inbox") == 2)
            let followUps = try await f.find("outbox")
            #expect(followUps.count == 2)
            #expect(followUps.allSatisfy { $0["type"] == "InventoryReserved" })
        }
    }

    @Test("insufficient stock: InventoryReservationFailed with the missing items, stock unchanged")
    func insufficient() async throws {
        try await Fixture.with { f in
            try await InventoryHandler.setStock(["A": 1], pool: f.pool)
            let inventory = f.consumer("inventory", handler: InventoryHandler(exchange: f.exchange))
            let running = Task { try await inventory.run() }
            defer { running.cancel() }
            #expect(await eventually { await inventory.isConnected })
            let publisher = f.makePublisher()
            #expect(await publisher.publish([orderCreated(f, orderId: "o-9", items: [("A", 1), ("Z", 4)])]) == [.acked])
            await publisher.close()
            #expect(await eventually { inventory.stats.processed == 1 })
            #expect(try await f.find("stock").first?["available"]?.intValue == 1)
            let event = try #require(try await f.find("outbox").first)
            #expect(event["type"] == "InventoryReservationFailed")
            #expect(event["routingKey"] == "inventory.reservation.failed")
            let missing = event["data"]?.documentValue?["missing"]?.arrayValue ?? []
            #expect(missing == [["sku": "Z", "requested": 4, "available": 0]])
        }
    }

    @Test("notifications: one confirmation per order, with lines and total, also when delivered twice")
    func notifications() async throws {
        try await Fixture.with { f in
            let service = f.consumer("notification", handler: NotificationHandler())
            let running = Task { try await service.run() }
            defer { running.cancel() }
            #expect(await eventually { await service.isConnected })
            let publisher = f.makePublisher()
            let message = orderCreated(f, orderId: "o-7", items: [("A", 2)])
            #expect(await publisher.publish([message, message]) == [.acked, .acked])
            await publisher.close()
            #expect(await eventually { service.stats.processed + service.stats.duplicates == 2 })
            let notes = try await f.find("notifications")
            #expect(notes.count == 1)
            #expect(notes.first?["recipient"] == "c-1")
            #expect(notes.first?["text"]?.stringValue?.contains("2 × A at 5.00") == true)
            #expect(notes.first?["text"]?.stringValue?.contains("Total: 10.00") == true)
        }
    }
}

@Suite("Follow-up events through the relay", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct FollowUpTests {
    @Test("InventoryReserved and InventoryReservationFailed reach the broker through the relay")
    func followUps() async throws {
        try await Fixture.with { f in
            // Orders and inventory events share the test exchange here; the queue takes inventory.*.
            let followUps = try await f.queue("followups", bindings: ["inventory.#"])
            try await InventoryHandler.setStock(["A": 3], pool: f.pool)
            let inventory = f.consumer("inventory", handler: InventoryHandler(exchange: f.exchange))
            let store = OrderStore(pool: f.pool, exchange: f.exchange)
            try await store.ensureIndexes()
            let consumerTask = Task { try await inventory.run() }
            defer { consumerTask.cancel() }
            #expect(await eventually { await inventory.isConnected })
            let order = { (quantity: Int) in
                ValidatedOrder(customerId: "c", items: [.init(sku: "A", quantity: quantity, unitPrice: 1, unitPriceText: "1")])
            }
            _ = try await store.create(order(2))  // reserved
            _ = try await store.create(order(5))  // only 1 left: fails
            #expect(try await f.relay(until: 4), "every order and follow-up delivered")
            let received = try await f.admin.drain(followUps)
            #expect(Set(received.compactMap(\.type)) == ["InventoryReserved", "InventoryReservationFailed"])
            #expect(received.count == 2)
        }
    }
}
