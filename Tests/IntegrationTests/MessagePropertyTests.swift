import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

/// Issue 28 on the real servers: what a writer says about a message beyond its data reaches the
/// broker as AMQP properties, read back by pika (Tests/clients/read_properties.py).
@Suite(
    "Message properties a writer gives: priority, expiry, header types, fields mapped by the relay", .enabled(if: Servers.enabled),
    .timeLimit(.minutes(2)))
struct MessagePropertyTests {
    struct Seen: Decodable {
        let messageId: String
        let routingKey: String
        let priority: Int?
        let expiration: String?
        let headers: [String: Described]
        /// When pika took it from the queue (ms since the epoch).
        let receivedAt: Int64
    }

    /// A header value as read_properties.py describes it: pika's Python type and the value.
    struct Described: Decodable {
        let type: String
    }

    /// What pika saw of `count` messages of `queue`, in the order the queue delivered them.
    static func readProperties(_ queue: String, count: Int, timeout: Int = 20) async throws -> [Seen] {
        let result = try await Programs.run(
            Programs.python,
            [
                Programs.root.appendingPathComponent("Tests/clients/read_properties.py").path, Servers.amqpURL, queue, "\(count)", "--timeout",
                "\(timeout)",
            ],
            environment: ["PATH": "/usr/bin:/bin"])
        #expect(result.status == 0, "read_properties.py: \(result.errors)")
        return try result.output.split(separator: "\n").map { try JSONDecoder().decode(Seen.self, from: Data($0.utf8)) }
    }

    @Test("priority is the AMQP priority: a priority queue delivers the urgent first; a bad one parks naming the field")
    func priority() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("urgent-first", arguments: ["x-max-priority": .int(10)])
            // Written by OutboxWriter and as plain documents (the contract's shape), each with its priority.
            var urgent = f.event(aggregate: "a-urgent")
            urgent.priority = 9
            try await f.appendEvents([urgent])
            let plain: [Document] = [
                ["_id": "p-none", "type": "OrderCreated", "aggregateId": "a-none", "data": [:], "exchange": .string(f.exchange)],
                ["_id": "p-1", "type": "OrderCreated", "aggregateId": "a-1", "data": [:], "exchange": .string(f.exchange), "priority": 1],
                ["_id": "p-5", "type": "OrderCreated", "aggregateId": "a-5", "data": [:], "exchange": .string(f.exchange), "priority": .int64(5)],
                ["_id": "p-7", "type": "OrderCreated", "aggregateId": "a-7", "data": [:], "exchange": .string(f.exchange), "priority": .double(7)],
            ]
            let bad: [(String, BSON)] = [("b-text", "high"), ("b-300", 300), ("b-negative", -1), ("b-fraction", .double(2.5))]
            let documents =
                plain
                + bad.map { id, priority in
                    [
                        "_id": .string(id), "type": "OrderCreated", "aggregateId": .string(id), "data": [:], "exchange": .string(f.exchange),
                        "priority": priority,
                    ]
                }
            try await f.pool.withConnection { try $0.collection("outbox").insertMany(documents) }

            let result = try await Programs.product(
                "outbox-relay", ["--http-address", "off", "--exit-when-idle"], environment: Programs.environment(f))
            #expect(result.status == 0, "\(result.errors.suffix(2000))")
            #expect(try await f.count("outbox", ["status": "delivered"]) == 5)
            // All were queued before pika reads: the queue hands them out by priority.
            let seen = try await Self.readProperties(queue, count: 5)
            #expect(seen.map(\.priority) == [9, 7, 5, 1, nil], "\(seen)")
            #expect(seen.dropFirst().map(\.messageId) == ["p-7", "p-5", "p-1", "p-none"])
            for (id, _) in bad {
                let document = try #require(try await f.find("outbox", ["_id": .string(id)]).first)
                #expect(document["status"]?.stringValue == "parked", "\(id)")
                #expect(document["lastError"]?.stringValue?.contains("priority must be an integer from 0 to 255") == true, "\(id): \(document)")
            }
        }
    }

    @Test("expiresAt: the AMQP expiration is the time left; past it the event is expired, counted, listed, and its aggregate goes on")
    func expiry() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            func event(_ id: String, aggregate: String, version: Int, _ extra: Document) -> Document {
                let base: Document = [
                    "_id": .string(id), "type": "OrderCreated", "aggregateId": .string(aggregate), "aggregateVersion": .int32(Int32(version)),
                    "data": [:], "exchange": .string(f.exchange),
                ]
                return base.merging(extra)
            }
            // Written by OutboxWriter, due in a minute.
            let written = OutboxWriter().document(
                for: NewEvent(
                    type: "OrderCreated", aggregateType: "Order", aggregateId: "a-live", data: [:], exchange: f.exchange,
                    expiresAt: Date(timeIntervalSince1970: Double(now + 60_000) / 1000)))
            let liveId = try #require(written["_id"].flatMap(OutboxDocument.messageId))
            let documents = [
                written,
                // Expired while waiting: its aggregate's next event still goes out.
                event("e-past", aggregate: "a-past", version: 1, ["expiresAt": .datetime(now - 1000)]),
                event("e-after", aggregate: "a-past", version: 2, [:]),
                event("e-bad", aggregate: "a-bad", version: 1, ["expiresAt": "tomorrow"]),
            ]
            try await f.pool.withConnection { try $0.collection("outbox").insertMany(documents) }
            let port = unusedPort()
            let relay = try Program(
                "outbox-relay", ["--http-address", "127.0.0.1:\(port)", "--poll-interval", "50ms"], environment: Programs.environment(f))
            defer { kill(relay.pid, SIGKILL) }
            #expect(try await eventually { try await f.count("outbox", ["status": "delivered"]) == 2 }, "\(relay.output)")
            #expect(try await eventually { try await f.count("outbox", ["status": "expired"]) == 1 }, "\(relay.output)")

            let seen = try await Self.readProperties(queue, count: 2)
            #expect(Set(seen.map(\.messageId)) == [liveId, "e-after"], "the expired event is never published")
            let live = try #require(seen.first { $0.messageId == liveId })
            let left = try #require(live.expiration.flatMap(Int.init), "\(live)")
            #expect((30_000...60_000).contains(left), "milliseconds left: \(left)")
            #expect(seen.first { $0.messageId == "e-after" }?.expiration == nil)

            let expired = try #require(try await f.find("outbox", ["_id": "e-past"]).first)
            #expect(expired["status"]?.stringValue == "expired")
            #expect(expired["expiredAt"]?.dateValue != nil)
            #expect(expired["lastError"] == nil, "not an error")
            let bad = try #require(try await f.find("outbox", ["_id": "e-bad"]).first)
            #expect(bad["status"]?.stringValue == "parked")
            #expect(bad["lastError"]?.stringValue?.contains("expiresAt must be a date") == true, "\(bad)")
            let metrics = await httpGet(port: port, "/metrics")?.body ?? ""
            #expect(DeliveryLagTests.sample(metrics, "outbox_expired_events_total", [:]) == 1, "\(metrics)")

            let listed = try await Programs.product("outboxctl", ["list", "--status", "expired", "--json"], environment: Programs.environment(f))
            #expect(listed.status == 0, "\(listed.errors)")
            #expect(listed.output.contains("e-past") && !listed.output.contains("e-after"), "\(listed.output)")
            let status = try await Programs.product("outboxctl", ["status", "--json"], environment: Programs.environment(f))
            let counts = try JSONSerialization.jsonObject(with: Data(status.output.utf8)) as? [String: Any]
            #expect(counts?["expired"] as? Int == 1, "\(status.output)")
        }
    }

    @Test("every header type a document can say reaches pika as its Python type; others park naming the header")
    func headerTypes() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("typed")
            let ownQueue = try await f.queue("typed-own")
            let headers: Document = [
                "s": "text", "i": .int64(42), "b": true, "d": .double(2.5), "dec": .decimal128(Decimal128("12.50")!),
                "t": .datetime(1_700_000_000_123), "doc": ["k": "v", "n": 1], "arr": [1, "two", true],
            ]
            let documents: [Document] = [
                [
                    "_id": "typed", "type": "OrderCreated", "aggregateId": "a-1", "data": [:], "exchange": .string(f.exchange),
                    "headers": .document(headers),
                ],
                [
                    "_id": "object-id", "type": "OrderCreated", "aggregateId": "a-2", "data": [:], "exchange": .string(f.exchange),
                    "headers": ["tenant": ["id": .objectId(ObjectId())]],
                ],
                [
                    "_id": "wide-decimal", "type": "OrderCreated", "aggregateId": "a-3", "data": [:], "exchange": .string(f.exchange),
                    "headers": ["amount": .decimal128(Decimal128("1234567890.5")!)],
                ],
            ]
            try await f.pool.withConnection { try $0.collection("outbox").insertMany(documents) }
            let result = try await Programs.product(
                "outbox-relay", ["--http-address", "off", "--exit-when-idle"], environment: Programs.environment(f))
            #expect(result.status == 0, "\(result.errors.suffix(2000))")
            let seen = try #require(try await Self.readProperties(queue, count: 1).first)
            let types = seen.headers.mapValues(\.type)
            // pika's `long` is its int subclass; pika decodes AMQP doubles as `long` too (truncated:
            // its decode_value wraps them in long()), so the double is checked by this project's reader.
            for (name, type) in [
                ("s", "str"), ("i", "long"), ("b", "bool"), ("dec", "Decimal"), ("t", "datetime"), ("doc", "dict"), ("arr", "list"),
            ] {
                #expect(types[name] == type, "\(name): \(seen.headers)")
            }
            let own = try #require(try await f.admin.drain(ownQueue).first).headers
            #expect(own["d"] == .double(2.5) && own["i"] == .int(42) && own["b"] == .bool(true))
            #expect(own["dec"] == .decimal(scale: 2, value: 1250) && own["t"] == .timestamp(1_700_000_000))
            #expect(own["doc"] == .table(["k": .string("v"), "n": .int(1)]) && own["arr"] == .array([.int(1), .string("two"), .bool(true)]))
            for (id, reason) in [("object-id", "headers.tenant.id must be"), ("wide-decimal", "headers.amount is a Decimal128")] {
                let document = try #require(try await f.find("outbox", ["_id": .string(id)]).first)
                #expect(document["status"]?.stringValue == "parked")
                #expect(document["lastError"]?.stringValue?.contains(reason) == true, "\(document)")
            }
        }
    }

    @Test("RELAY_HEADER_FIELDS and RELAY_ROUTING_KEY_TEMPLATE: headers and routing keys from fields; a missing field parks naming it")
    func fieldMapping() async throws {
        try await Fixture.with { f in
            let eu = try await f.queue("eu", bindings: ["order.eu.#"])
            let all = try await f.queue("all")
            func event(_ id: String, _ data: Document, _ extra: Document = [:]) -> Document {
                let base: Document = [
                    "_id": .string(id), "type": "OrderCreated", "aggregateType": "Order", "aggregateId": .string(id), "data": .document(data),
                    "exchange": .string(f.exchange),
                ]
                return base.merging(extra)
            }
            let documents = [
                event("mapped", ["region": "eu", "tenant": ["id": 7]]),
                event("own-key", ["region": "us", "tenant": "t-2"], ["routingKey": "custom.key", "headers": ["x-tenant": "written"]]),
                event("no-region", ["tenant": "t-3"]),
                event("no-tenant", ["region": "eu"]),
                event("nested-region", ["region": ["code": "eu"], "tenant": "t-5"]),
            ]
            try await f.pool.withConnection { try $0.collection("outbox").insertMany(documents) }
            let mapping = ["--header-fields", "data.tenant=x-tenant, aggregateType=x-kind", "--routing-key-template", "order.{data.region}.{type}"]
            let result = try await Programs.product(
                "outbox-relay", ["--http-address", "off", "--exit-when-idle"] + mapping, environment: Programs.environment(f))
            #expect(result.status == 0, "\(result.errors.suffix(2000))")

            let seen = try await Self.readProperties(eu, count: 1)
            #expect(seen.first?.messageId == "mapped")
            #expect(seen.first?.routingKey == "order.eu.OrderCreated")
            #expect(seen.first?.headers["x-tenant"]?.type == "dict" && seen.first?.headers["x-kind"]?.type == "str", "\(seen)")
            let delivered = try await f.admin.drain(all)
            #expect(Set(delivered.compactMap(\.messageId)) == ["mapped", "own-key"])
            let own = try #require(delivered.first { $0.messageId == "own-key" })
            #expect(own.routingKey == "custom.key", "a document's own routing key wins")
            #expect(own.headers["x-tenant"] == .string("written"), "and its own headers")
            #expect(delivered.first { $0.messageId == "mapped" }?.headers["x-tenant"] == .table(["id": .int(7)]))
            for (id, reason) in [
                ("no-region", "data.region is missing, which RELAY_ROUTING_KEY_TEMPLATE"),
                ("no-tenant", "data.tenant is missing, which RELAY_HEADER_FIELDS"),
                ("nested-region", "data.region must be a string, integer or boolean for RELAY_ROUTING_KEY_TEMPLATE"),
            ] {
                let document = try #require(try await f.find("outbox", ["_id": .string(id)]).first)
                #expect(document["status"]?.stringValue == "parked", "\(id)")
                #expect(document["lastError"]?.stringValue?.contains(reason) == true, "\(id): \(document)")
            }
            // Checked at start: exit 78 naming the setting.
            for (arguments, setting) in [
                (["--routing-key-template", "order.{data.region"], "RELAY_ROUTING_KEY_TEMPLATE"),
                (["--routing-key-template", "order.created"], "RELAY_ROUTING_KEY_TEMPLATE"),
                (["--header-fields", "data.tenant"], "RELAY_HEADER_FIELDS"),
                (["--header-fields", "data..tenant=x-tenant"], "RELAY_HEADER_FIELDS"),
            ] {
                let refused = try await Programs.product("outbox-relay", ["--http-address", "off"] + arguments, environment: Programs.environment(f))
                #expect(refused.status == 78 && refused.errors.contains(setting), "\(arguments): \(refused.status) \(refused.errors)")
            }
        }
    }

    @Test("the contract's validator takes a priority from 0 to 255, expiresAt and deliverAt dates, and refuses others")
    func validator() async throws {
        try await Fixture.with { f in
            try await f.pool.withConnection { connection in
                _ = try connection.runCommand(["create": "checked", "validator": .document(OutboxSchema.validator)])
                let base: Document = ["type": "OrderCreated", "aggregateId": "a", "data": [:]]
                try connection.collection("checked").insertOne(base.merging(["priority": 0]))
                try connection.collection("checked").insertOne(base.merging(["priority": 255]))
                try connection.collection("checked").insertOne(base.merging(["expiresAt": .datetime(0), "status": "expired"]))
                try connection.collection("checked").insertOne(
                    base.merging(["deliverAt": .datetime(0), "status": "scheduled", "dueAt": .datetime(0)]))
                try connection.collection("checked").insertOne(base.merging(["deliverAt": .datetime(0), "status": "cancelled"]))
                for refused: BSON in [256, -1, "high"] {
                    #expect(throws: (any Error).self, "priority \(refused)") {
                        try connection.collection("checked").insertOne(base.merging(["priority": refused]))
                    }
                }
                #expect(throws: (any Error).self, "expiresAt as text") {
                    try connection.collection("checked").insertOne(base.merging(["expiresAt": "tomorrow"]))
                }
                #expect(throws: (any Error).self, "deliverAt as text") {
                    try connection.collection("checked").insertOne(base.merging(["deliverAt": "tomorrow"]))
                }
            }
        }
    }
}
