import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Outbox
import OutboxMongo
import Testing

@testable import OrderService

@Suite("Order API on the real database (I1, I8)", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct OrderAPITests {
    static let item = #"{"sku":"A","quantity":1,"unitPrice":"1.00"}"#

    /// (description, content type, body, expected status, expected field)
    static let badRequests: [(String, String?, String, HTTPResponse.Status, String?)] = [
        ("malformed JSON", "application/json", #"{"customerId": "c""#, .badRequest, nil),
        ("not an object", "application/json", "[1,2]", .badRequest, nil),
        ("empty body", "application/json", "", .badRequest, nil),
        ("missing customerId", "application/json", #"{"items":[\#(item)]}"#, .badRequest, "customerId"),
        ("empty customerId", "application/json", #"{"customerId":"  ","items":[\#(item)]}"#, .badRequest, "customerId"),
        ("customerId not a string", "application/json", #"{"customerId":42,"items":[\#(item)]}"#, .badRequest, "customerId"),
        (
            "customerId too long", "application/json", #"{"customerId":"\#(String(repeating: "x", count: 200))","items":[\#(item)]}"#, .badRequest,
            "customerId"
        ),
        ("items missing", "application/json", #"{"customerId":"c"}"#, .badRequest, "items"),
        ("items empty", "application/json", #"{"customerId":"c","items":[]}"#, .badRequest, "items"),
        ("items not an array", "application/json", #"{"customerId":"c","items":"A"}"#, .badRequest, "items"),
        ("item not an object", "application/json", #"{"customerId":"c","items":[7]}"#, .badRequest, "items[0]"),
        ("sku missing", "application/json", #"{"customerId":"c","items":[{"quantity":1,"unitPrice":"1"}]}"#, .badRequest, "items[0].sku"),
        (
            "quantity zero", "application/json", #"{"customerId":"c","items":[{"sku":"A","quantity":0,"unitPrice":"1"}]}"#, .badRequest,
            "items[0].quantity"
        ),
        (
            "quantity negative", "application/json", #"{"customerId":"c","items":[{"sku":"A","quantity":-2,"unitPrice":"1"}]}"#, .badRequest,
            "items[0].quantity"
        ),
        (
            "quantity fractional", "application/json", #"{"customerId":"c","items":[{"sku":"A","quantity":1.5,"unitPrice":"1"}]}"#, .badRequest,
            "items[0].quantity"
        ),
        (
            "quantity a string", "application/json", #"{"customerId":"c","items":[{"sku":"A","quantity":"2","unitPrice":"1"}]}"#, .badRequest,
            "items[0].quantity"
        ),
        (
            "price negative", "application/json", #"{"customerId":"c","items":[{"sku":"A","quantity":1,"unitPrice":"-0.01"}]}"#, .badRequest,
            "items[0].unitPrice"
        ),
        (
            "price not decimal", "application/json", #"{"customerId":"c","items":[{"sku":"A","quantity":1,"unitPrice":"ten"}]}"#, .badRequest,
            "items[0].unitPrice"
        ),
        (
            "price with exponent", "application/json", #"{"customerId":"c","items":[{"sku":"A","quantity":1,"unitPrice":1e2}]}"#, .badRequest,
            "items[0].unitPrice"
        ),
        (
            "price a boolean", "application/json", #"{"customerId":"c","items":[{"sku":"A","quantity":1,"unitPrice":false}]}"#, .badRequest,
            "items[0].unitPrice"
        ),
        ("unknown field", "application/json", #"{"customerId":"c","items":[\#(item)],"discount":5}"#, .badRequest, "discount"),
        (
            "too many items", "application/json", #"{"customerId":"c","items":[\#(Array(repeating: item, count: 101).joined(separator: ","))]}"#,
            .badRequest, "items"
        ),
        ("oversize body", "application/json", #"{"customerId":"\#(String(repeating: "x", count: 70_000))","items":[]}"#, .contentTooLarge, nil),
        ("text/plain", "text/plain", #"{"customerId":"c","items":[\#(item)]}"#, .unsupportedMediaType, nil),
        ("no content type", nil, #"{"customerId":"c","items":[\#(item)]}"#, .unsupportedMediaType, nil),
    ]

    @Test("bad requests get the right 4xx with a JSON message naming the field, and write nothing")
    func badRequests() async throws {
        try await Fixture.with { f in
            let api = OrderAPI(store: OrderStore(pool: f.pool, exchange: f.exchange))
            try await api.store.ensureIndexes()
            let app = Application(router: api.buildRouter())
            try await app.test(.router) { client in
                for (name, contentType, body, status, field) in Self.badRequests {
                    var headers: HTTPFields = [:]
                    if let contentType { headers[.contentType] = contentType }
                    let response = try await client.execute(uri: "/orders", method: .post, headers: headers, body: ByteBuffer(string: body))
                    #expect(response.status == status, "\(name)")
                    #expect(response.headers[.contentType] == "application/json", "\(name)")
                    let json = try? JSONValue.parse(response.body.readableBytesView)
                    guard case .string(let message)? = json?["error"]?["message"], !message.isEmpty else {
                        Issue.record("\(name): no error message in \(String(buffer: response.body))")
                        continue
                    }
                    if let field { #expect(json?["error"]?["field"] == .string(field), "\(name): \(message)") }
                }
            }
            #expect(Self.badRequests.count >= 20)
            #expect(try await f.count("orders") == 0)
            #expect(try await f.count("outbox") == 0)
        }
    }

    @Test("Idempotency-Key: the same key and body give one order and one event; another body is a 409")
    func idempotency() async throws {
        try await Fixture.with { f in
            let api = OrderAPI(store: OrderStore(pool: f.pool, exchange: f.exchange))
            try await api.store.ensureIndexes()
            let app = Application(router: api.buildRouter())
            try await app.test(.router) { client in
                let body = #"{"customerId":"c-1","items":[{"sku":"A","quantity":2,"unitPrice":"3.50"}]}"#
                // Same meaning, other spelling: whitespace and key order do not matter.
                let respelled = #"{ "items": [ {"unitPrice": "3.50", "quantity": 2, "sku": "A"} ], "customerId": "c-1" }"#
                var ids: [JSONValue?] = []
                for text in [body, body, respelled] {
                    let response = try await client.execute(
                        uri: "/orders", method: .post, headers: [.contentType: "application/json", HTTPField.Name("Idempotency-Key")!: "key-1"],
                        body: ByteBuffer(string: text))
                    #expect(response.status == .created)
                    ids.append(try JSONValue.parse(response.body.readableBytesView)["id"])
                }
                #expect(Set(ids.compactMap { $0.map { "\($0)" } }).count == 1)
                let conflict = try await client.execute(
                    uri: "/orders", method: .post, headers: [.contentType: "application/json", HTTPField.Name("Idempotency-Key")!: "key-1"],
                    body: ByteBuffer(string: #"{"customerId":"c-1","items":[{"sku":"A","quantity":3,"unitPrice":"3.50"}]}"#))
                #expect(conflict.status == .conflict)
                #expect(try JSONValue.parse(conflict.body.readableBytesView)["error"]?["field"] == .string("Idempotency-Key"))
                // Concurrent replays race on the unique key: still one order.
                try await withThrowingTaskGroup(of: HTTPResponse.Status.self) { group in
                    for _ in 0..<8 {
                        group.addTask {
                            try await client.execute(
                                uri: "/orders", method: .post,
                                headers: [.contentType: "application/json", HTTPField.Name("Idempotency-Key")!: "key-2"],
                                body: ByteBuffer(string: body)
                            ).status
                        }
                    }
                    for try await status in group { #expect(status == .created) }
                }
            }
            #expect(try await f.count("orders") == 2)
            #expect(try await f.count("outbox") == 2)
        }
    }

    @Test("unknown order: 404 with a JSON error; health reports the database")
    func notFoundAndHealth() async throws {
        try await Fixture.with { f in
            let app = Application(router: OrderAPI(store: OrderStore(pool: f.pool)).buildRouter())
            try await app.test(.router) { client in
                let missing = try await client.execute(uri: "/orders/\(ObjectId().hex)", method: .get)
                #expect(missing.status == .notFound)
                #expect(try JSONValue.parse(missing.body.readableBytesView)["error"]?["message"] != nil)
                let route = try await client.execute(uri: "/nothing-here", method: .get)
                #expect(route.status == .notFound)
                #expect(try JSONValue.parse(route.body.readableBytesView)["error"]?["message"] != nil)
                let health = try await client.execute(uri: "/health", method: .get)
                #expect(health.status == .ok)
                #expect(try JSONValue.parse(health.body.readableBytesView)["database"] == .string("up"))
            }
            let unreachable = try MongoClientPool(MongoConfiguration(uri: "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300", database: "x"))
            let down = Application(router: OrderAPI(store: OrderStore(pool: unreachable)).buildRouter())
            try await down.test(.router) { client in
                let health = try await client.execute(uri: "/health", method: .get)
                #expect(health.status == .serviceUnavailable)
                #expect(try JSONValue.parse(health.body.readableBytesView)["database"] == .string("down"))
            }
        }
    }
}
