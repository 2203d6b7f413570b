import Foundation
import Hummingbird
import HummingbirdTesting
import Outbox
import OutboxMongo
import Testing

@testable import OrderService

struct InjectedFailure: Error {}

@Suite("Atomic order + event writes (I1)", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct TransactionTests {
    let order = ValidatedOrder(customerId: "c-1", items: [.init(sku: "A", quantity: 2, unitPrice: Decimal(string: "12.50")!, unitPriceText: "12.50")])

    @Test("a transaction that throws after both writes leaves neither the order nor the event")
    func rollback() async throws {
        try await Fixture.with { f in
            let store = OrderStore(pool: f.pool, exchange: f.exchange)
            try await store.ensureIndexes()
            await #expect(throws: InjectedFailure.self) {
                _ = try await store.create(order) { connection in
                    // Both documents are written inside the transaction by now.
                    #expect(try connection.collection("orders").countDocuments() == 1)
                    #expect(try connection.collection("outbox").countDocuments() == 1)
                    throw InjectedFailure()
                }
            }
            #expect(try await f.count("orders") == 0)
            #expect(try await f.count("outbox") == 0)
        }
    }

    @Test("every committed order has exactly its OrderCreated event")
    func committedHasEvent() async throws {
        try await Fixture.with { f in
            let store = OrderStore(pool: f.pool, exchange: f.exchange)
            try await store.ensureIndexes()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<20 { group.addTask { _ = try await store.create(order) } }
                try await group.waitForAll()
            }
            let orders = try await f.find("orders")
            let events = try await f.find("outbox")
            #expect(orders.count == 20)
            #expect(events.count == 20)
            let eventsByOrder = Dictionary(grouping: events) { $0["aggregateId"]?.stringValue ?? "" }
            for order in orders {
                let id = order["_id"]!.objectIdValue!.hex
                let mine = eventsByOrder[id] ?? []
                #expect(mine.count == 1)
                #expect(mine.first?["type"] == "OrderCreated")
                #expect(mine.first?["status"] == "pending")
                #expect(mine.first?["data"]?.documentValue?["totalAmount"] == .decimal128(Decimal128("25.00")!))
                #expect(mine.first?["routingKey"] == "order.created")
            }
        }
    }

    @Test("write conflicts are retried as TransientTransactionError: concurrent increments all land")
    func transientRetry() async throws {
        try await Fixture.with { f in
            try await f.pool.withConnection { try $0.collection("counters").insertOne(["_id": "c", "n": 0]) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<8 {
                    group.addTask {
                        try await f.pool.withTransaction { connection in
                            try connection.collection("counters").updateOne(["_id": "c"], ["$inc": ["n": 1]])
                            try connection.collection("log").insertOne(["at": .date(Date())])
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await f.find("counters").first?["n"]?.intValue == 8)
            #expect(try await f.count("log") == 8)
        }
    }

    @Test("HTTP: 201 with the order and Location; GET reads it back; 404 and 400 are JSON")
    func http() async throws {
        try await Fixture.with { f in
            let api = OrderAPI(store: OrderStore(pool: f.pool, exchange: f.exchange))
            try await api.store.ensureIndexes()
            let app = Application(router: api.buildRouter())
            try await app.test(.router) { client in
                let body = #"{"customerId":"c-9","items":[{"sku":"A","quantity":3,"unitPrice":"0.10"}]}"#
                let created = try await client.execute(
                    uri: "/orders", method: .post, headers: [.contentType: "application/json"], body: ByteBuffer(string: body))
                #expect(created.status == .created)
                let json = try JSONValue.parse(created.body.readableBytesView)
                guard case .string(let id)? = json["id"] else { Issue.record("no id in \(json)"); return }
                #expect(json["totalAmount"] == .string("0.30"))
                #expect(created.headers[.location] == "/orders/\(id)")
                let read = try await client.execute(uri: "/orders/\(id)", method: .get)
                #expect(read.status == .ok)
                #expect(try JSONValue.parse(read.body.readableBytesView)["customerId"] == .string("c-9"))
                let missing = try await client.execute(uri: "/orders/\(ObjectId().hex)", method: .get)
                #expect(missing.status == .notFound)
                #expect(try JSONValue.parse(missing.body.readableBytesView)["error"]?["message"] != nil)
                let bad = try await client.execute(
                    uri: "/orders", method: .post, headers: [.contentType: "application/json"],
                    body: ByteBuffer(string: #"{"customerId":"c","items":[]}"#))
                #expect(bad.status == .badRequest)
                #expect(try JSONValue.parse(bad.body.readableBytesView)["error"]?["field"] == .string("items"))
            }
            #expect(try await f.count("orders") == 1)
            #expect(try await f.count("outbox") == 1)
        }
    }
}
