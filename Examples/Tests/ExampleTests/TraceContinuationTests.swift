import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Inventory
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

@testable import OrderService

@Suite("One trace from the HTTP request to the follow-up event", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct TraceContinuationTests {
    static let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    @Test("the request's traceparent goes into OrderCreated, onto its message, and into the inventory consumer's follow-up")
    func requestToFollowUp() async throws {
        try await Fixture.with { f in
            let followUps = try await f.queue("followups", bindings: ["inventory.#"])
            try await InventoryHandler.setStock(["A": 5], pool: f.pool)
            let inventory = f.consumer("inventory", handler: InventoryHandler(exchange: f.exchange))
            let consumerTask = Task { try await inventory.run() }
            defer { consumerTask.cancel() }
            #expect(await eventually { await inventory.isConnected })

            let api = OrderAPI(store: OrderStore(pool: f.pool, exchange: f.exchange))
            try await api.store.ensureIndexes()
            try await Application(router: api.buildRouter()).test(.router) { client in
                let traced = try await client.execute(
                    uri: "/orders", method: .post,
                    headers: [
                        .contentType: "application/json", HTTPField.Name("traceparent")!: Self.traceparent, HTTPField.Name("tracestate")!: "shop=1",
                    ],
                    body: ByteBuffer(string: #"{"customerId":"c-1","items":[{"sku":"A","quantity":1,"unitPrice":"2.00"}]}"#))
                #expect(traced.status == .created)
                // A caller's broken header starts no trace and fails nothing.
                let broken = try await client.execute(
                    uri: "/orders", method: .post,
                    headers: [.contentType: "application/json", HTTPField.Name("traceparent")!: "not-a-trace"],
                    body: ByteBuffer(string: #"{"customerId":"c-2","items":[{"sku":"A","quantity":1,"unitPrice":"2.00"}]}"#))
                #expect(broken.status == .created)
            }
            let orders = try await f.find("outbox", ["type": "OrderCreated"])
            #expect(orders.compactMap { $0["traceparent"]?.stringValue } == [Self.traceparent])
            #expect(orders.compactMap { $0["tracestate"]?.stringValue } == ["shop=1"])

            #expect(try await f.relay(until: 4), "every order and follow-up delivered")
            let reserved = try await f.find("outbox", ["type": "InventoryReserved"])
            #expect(reserved.count == 2)
            #expect(reserved.compactMap { $0["traceparent"]?.stringValue } == [Self.traceparent], "only the traced order's follow-up")
            let received = try await f.admin.drain(followUps)
            #expect(received.compactMap { $0.headers["traceparent"] } == [.string(Self.traceparent)])
        }
    }
}
