import Foundation
import Outbox
import OutboxAMQP
import OutboxConsumer
import OutboxMongo
import OutboxOps
import Testing

/// How a dead letter is read, selected and prepared for requeue; no servers.
@Suite("Dead letters: records, selection, requeue rules")
struct DeadLetterCommandRuleTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    func letter(_ headers: [String: AMQPFieldValue], id: String? = "evt-1", body: [UInt8] = Array(#"{"n":1}"#.utf8)) -> DeadLetter {
        DeadLetter(
            AMQPMessage(
                properties: AMQPProperties(
                    contentType: "application/json", headers: headers, deliveryMode: 2, correlationId: "corr-1", expiration: "60000",
                    messageId: id, timestamp: 1_799_999_000, type: "OrderCreated", userId: "guest", appId: "inventory"),
                body: body))
    }

    func consumerDeadLetter(minutesAgo: Double, error: String = "PermanentFailure: no such SKU") -> DeadLetter {
        letter([
            "x-error": .string(error), "x-attempts": .int(3), "x-consumer": .string("inventory"),
            "x-original-routing-key": .string("order.created"),
            "x-dead-lettered-at": .int(Int64((now.timeIntervalSince1970 - minutesAgo * 60) * 1000)),
            "x-aggregate-id": .string("o-1"), "x-occurred-at": .int(1_700_000_000_000), "x-tenant": .string("t-1"),
        ])
    }

    @Test("a consumer's dead letter: reason, attempts, consumer, routing key and time from its headers")
    func consumerFields() {
        let dead = consumerDeadLetter(minutesAgo: 5)
        #expect(dead.messageId == "evt-1" && dead.type == "OrderCreated")
        #expect(dead.reason == "PermanentFailure: no such SKU" && dead.attempts == 3 && dead.consumer == "inventory")
        #expect(dead.originalRoutingKey == "order.created" && !dead.byBroker)
        #expect(dead.timeSource == .consumer)
        #expect(dead.deadLetteredAt == now.addingTimeInterval(-300))
    }

    @Test("a broker's dead letter: reason, routing key and time from the newest x-death entry")
    func brokerFields() {
        let death: AMQPFieldValue = .array([
            .table([
                "reason": .string("rejected"), "queue": .string("q"), "time": .timestamp(1_799_999_400), "count": .int(1),
                "routing-keys": .array([.string("order.created")]), "exchange": .string("orders"),
            ]),
            .table(["reason": .string("expired"), "time": .timestamp(1_700_000_000)]),
        ])
        let dead = letter(["x-death": death, "x-occurred-at": .int(1_600_000_000_000)])
        #expect(dead.byBroker && dead.reason == "rejected" && dead.originalRoutingKey == "order.created")
        #expect(dead.timeSource == .broker && dead.deadLetteredAt == Date(timeIntervalSince1970: 1_799_999_400))
        #expect(dead.consumer == nil && dead.attempts == nil)
    }

    @Test("without a dead-lettering time the event's x-occurred-at stands in; without that the time is unknown")
    func timeFallback() {
        let old = letter(["x-error": .string("boom"), "x-occurred-at": .int(1_700_000_000_000)])
        #expect(old.timeSource == .event && old.deadLetteredAt == Date(timeIntervalSince1970: 1_700_000_000))
        let unknown = letter(["x-error": .string("boom")])
        #expect(unknown.deadLetteredAt == nil && unknown.timeSource == nil)
        #expect(!DeadLetterFilter(olderThan: .seconds(1)).matches(unknown, now: now), "an unknown time is never old enough")
        #expect(DeadLetterFilter().matches(unknown, now: now))
    }

    @Test("filters: ids, reason ignoring case, age; all criteria must hold")
    func filters() {
        let recent = consumerDeadLetter(minutesAgo: 2)
        let old = consumerDeadLetter(minutesAgo: 30, error: "Stock service TIMED OUT")
        #expect(DeadLetterFilter(ids: ["evt-1", "evt-2"]).matches(recent, now: now))
        #expect(!DeadLetterFilter(ids: ["evt-2"]).matches(recent, now: now))
        #expect(DeadLetterFilter(reason: "timed out").matches(old, now: now))
        #expect(!DeadLetterFilter(reason: "timed out").matches(recent, now: now))
        #expect(DeadLetterFilter(olderThan: .seconds(600)).matches(old, now: now))
        #expect(!DeadLetterFilter(olderThan: .seconds(600)).matches(recent, now: now))
        #expect(!DeadLetterFilter(reason: "timed out", olderThan: .seconds(3600)).matches(old, now: now))
        #expect(!DeadLetterFilter(ids: ["evt-1"]).matches(letter(["x-error": .string("no id")], id: nil), now: now))
        #expect(!DeadLetterFilter(limit: 5).hasCriteria && DeadLetterFilter(reason: "x").hasCriteria)
    }

    @Test("requeue keeps the original properties and headers, drops what dead-lettering added, no expiration or user id")
    func requeueProperties() {
        var dead = consumerDeadLetter(minutesAgo: 1)
        dead.properties.headers["x-death"] = .array([.table(["reason": .string("rejected")])])
        dead.properties.headers["x-first-death-reason"] = .string("rejected")
        dead.properties.headers["x-delivery-count"] = .int(2)
        let out = dead.requeueProperties
        #expect(out.headers == ["x-aggregate-id": .string("o-1"), "x-occurred-at": .int(1_700_000_000_000), "x-tenant": .string("t-1")])
        #expect(out.messageId == "evt-1" && out.type == "OrderCreated" && out.correlationId == "corr-1")
        #expect(out.contentType == "application/json" && out.timestamp == 1_799_999_000 && out.deliveryMode == 2)
        #expect(out.expiration == nil && out.userId == nil && out.appId == "outboxctl")
    }

    @Test("records: every header as JSON, the body as text or base64")
    func records() {
        let dead = letter([
            "x-error": .string("boom"), "x-death": .array([.table(["time": .timestamp(1_800_000_000), "reason": .string("rejected")])]),
            "price": .decimal(scale: 2, value: 1999), "tiny": .decimal(scale: 3, value: 5), "raw": .bytes([1, 2]), "flag": .bool(true),
        ])
        let record = dead.record
        #expect(record["messageId"] == "evt-1" && record["reason"] == "boom" && record["bodyEncoding"] == "utf8")
        #expect(record["body"] == .string(#"{"n":1}"#) && record["bodyBytes"] == .int64(7))
        #expect(record["deadLetteredAtFrom"] == "x-death" && record["deadLetteredBy"] == "consumer")
        let headers = record["headers"]?.documentValue
        #expect(headers?["price"] == "19.99" && headers?["tiny"] == "0.005" && headers?["flag"] == .bool(true))
        #expect(ExtendedJSON.render(record["headers"]!).contains(#""x-death":[{"reason":"rejected","time":"2027-01-15T08:00:00.000Z"}]"#))
        let binary = letter([:], body: [0xFF, 0x00]).record
        #expect(binary["bodyEncoding"] == "base64" && binary["body"] == .string("/wA="))
    }
}

/// `outboxctl dlq` against real dead letters: an `InboxConsumer` dead-letters poison messages on
/// the real broker, then the commands run as an operator would run them.
@Suite("outboxctl dlq on real dead letters", .enabled(if: Servers.enabled), .timeLimit(.minutes(3)))
struct DeadLetterCommandTests {
    /// Fails for good on the messages named in `failing` (with that reason); records the others.
    struct Handler: InboxHandler {
        var failing: [String: String] = [:]
        func handle(_ message: IncomingMessage, connection: MongoConnection) throws {
            if let reason = failing[message.messageId] { throw PermanentFailure(reason) }
            try connection.collection("applied").insertOne(["_id": .string(message.messageId)])
        }
    }

    func topology(_ f: Fixture) -> ConsumerTopology {
        let topology = ConsumerTopology(exchange: f.exchange, queue: "\(f.exchange).inventory", bindings: ["order.created"])
        f.track(queue: topology.queue)
        f.track(queue: topology.deadLetterQueue)
        return topology
    }

    func consumer(_ f: Fixture, _ topology: ConsumerTopology, failing: [String: String]) -> InboxConsumer {
        InboxConsumer(
            configuration: .init(name: "inventory", topology: topology, maxAttempts: 2, retryDelay: .milliseconds(10)),
            pool: f.pool, amqp: f.amqp, handler: Handler(failing: failing), logger: f.logger)
    }

    /// An OrderCreated as the relay publishes it, with a header of the writer's own.
    func message(_ f: Fixture, _ id: String) -> OutboxMessage {
        OutboxMessage(
            id: id, type: "OrderCreated", aggregateType: "Order", aggregateId: "order-\(id)", aggregateVersion: 1,
            exchange: f.exchange, routingKey: "order.created", occurredAt: 1_764_000_000_000, correlationId: "corr-\(id)",
            headers: ["x-tenant": .string("tenant-7")], body: Array(#"{"orderId":"order-\#(id)","items":[{"sku":"A","quantity":2}]}"#.utf8))
    }

    /// Publishes `ids` and runs the consumer until it has applied or dead-lettered each; then stops it.
    @discardableResult
    func deadLetter(_ f: Fixture, _ topology: ConsumerTopology, ids: [String], failing: [String: String]) async throws -> [OutboxMessage] {
        let service = consumer(f, topology, failing: failing)
        let running = Task { try await service.run() }
        #expect(await eventually { await service.isConnected })
        let publisher = f.makePublisher()
        let messages = ids.map { message(f, $0) }
        #expect(await publisher.publish(messages).allSatisfy { $0 == .acked })
        await publisher.close()
        let poisoned = ids.filter { failing[$0] != nil }.count
        #expect(await eventually { service.stats.deadLettered == poisoned && service.stats.processed == ids.count - poisoned })
        // The counters move just before the ack, and cancelling can drop an ack not yet sent (the
        // broker would redeliver that message): let the last one go out before stopping.
        try await Task.sleep(for: .milliseconds(300))
        running.cancel()
        _ = await running.result
        // Anything the broker gave back anyway was handled already.
        try await f.admin.purgeQueue(topology.queue)
        return messages
    }

    func outboxctl(_ arguments: [String], environment: [String: String] = ["AMQP_URL": Servers.amqpURL]) async throws -> Programs.Result {
        try await Programs.product("outboxctl", ["dlq"] + arguments, environment: environment.merging(["PATH": "/usr/bin:/bin"]) { $1 })
    }

    /// Runs `outboxctl dlq ARGS --json`, expects exit `status`, and parses what it printed.
    func json(_ arguments: [String], status: Int32 = 0) async throws -> JSONValue {
        let result = try await outboxctl(arguments + ["--json"])
        #expect(result.status == status, "\(arguments): \(result.output) \(result.errors)")
        return try JSONValue.parse(Array(result.output.utf8))
    }

    func items(_ value: JSONValue) -> [JSONValue] { if case .array(let items) = value { items } else { [] } }
    func string(_ value: JSONValue?) -> String? { if case .string(let s)? = value { s } else { nil } }
    func number(_ value: JSONValue?) -> Int? { if case .number(let n)? = value { Int(n) } else { nil } }
    func ids(_ value: JSONValue) -> Set<String> { Set(items(value).compactMap { string($0["messageId"]) }) }

    func date(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: text)
    }

    func count(_ f: Fixture, _ queue: String) async throws -> Int { try await f.admin.messageCount(queue) ?? -1 }

    @Test("list shows every dead letter with id, type, consumer, attempts, reason and time, and leaves the queue as it was")
    func list() async throws {
        try await Fixture.with { f in
            let topology = topology(f)
            let failing = ["p-1": "no stock for SKU A", "p-2": "no stock for SKU A", "p-3": "customer unknown"]
            try await deadLetter(f, topology, ids: ["ok-1", "p-1", "p-2", "ok-2", "p-3"], failing: failing)
            #expect(try await count(f, topology.deadLetterQueue) == 3)

            let records = try await json(["list", "--queue", topology.queue])
            #expect(ids(records) == ["p-1", "p-2", "p-3"])
            for record in items(records) {
                let id = try #require(string(record["messageId"]))
                #expect(string(record["type"]) == "OrderCreated")
                #expect(string(record["consumer"]) == "inventory")
                #expect(number(record["attempts"]) == 1, "a permanent failure is not retried")
                #expect(string(record["reason"]) == failing[id])
                #expect(string(record["deadLetteredBy"]) == "consumer")
                #expect(string(record["deadLetteredAtFrom"]) == "x-dead-lettered-at")
                let at = try #require(string(record["deadLetteredAt"]).flatMap(date))
                #expect(abs(at.timeIntervalSinceNow) < 120)
                #expect(string(record["originalRoutingKey"]) == "order.created")
                #expect(string(record["correlationId"]) == "corr-\(id)")
                #expect(string(record["headers"]?["x-tenant"]) == "tenant-7")
                #expect(string(record["body"])?.contains("order-\(id)") == true)
            }

            let table = try await outboxctl(["list", "--queue", topology.queue])
            #expect(table.status == 0, "\(table.errors)")
            #expect(table.output.contains("REASON") && table.output.contains("customer unknown") && table.output.contains("p-2"))
            #expect(table.output.contains("3 of 3 dead letter(s)"))

            // Listed twice, read without ack each time: the same three stay.
            #expect(await eventually { (try? await count(f, topology.deadLetterQueue)) == 3 })
            #expect(ids(try await json(["list", "--queue", topology.queue])) == ["p-1", "p-2", "p-3"])
            #expect(await eventually { (try? await count(f, topology.deadLetterQueue)) == 3 })
            #expect(try await count(f, topology.queue) == 0, "nothing went to the consumer's queue")
        }
    }

    @Test("show prints one dead letter in full: headers and the body as JSON; an unknown id exits 1")
    func show() async throws {
        try await Fixture.with { f in
            let topology = topology(f)
            try await deadLetter(f, topology, ids: ["p-1", "p-2"], failing: ["p-1": "bad quantity", "p-2": "bad sku"])
            let shown = try await outboxctl(["show", "--queue", topology.queue, "--id", "p-2"])
            #expect(shown.status == 0, "\(shown.errors)")
            for text in [
                "p-2", "bad sku", "consumer inventory", "x-error", "x-tenant", "tenant-7", "x-dead-lettered-at", "corr-p-2", "JSON",
                #""orderId": "order-p-2""#,
            ] {
                #expect(shown.output.contains(text), "show lacks \(text): \(shown.output)")
            }
            #expect(!shown.output.contains("bad quantity"))
            let records = items(try await json(["show", "--queue", topology.queue, "--id", "p-1"]))
            #expect(records.count == 1 && string(records.first?["reason"]) == "bad quantity")
            let missing = try await outboxctl(["show", "--queue", topology.queue, "--id", "nope"])
            #expect(missing.status == 1 && missing.errors.contains("no dead letter nope"))
            #expect(await eventually { (try? await count(f, topology.deadLetterQueue)) == 2 })
        }
    }

    @Test("filters: --reason by x-error ignoring case, --older-than by dead-lettered time, --id; broker dead letters too")
    func filters() async throws {
        try await Fixture.with { f in
            let topology = topology(f)
            try await deadLetter(
                f, topology, ids: ["p-1", "p-2", "p-3"],
                failing: ["p-1": "Stock service TIMED OUT", "p-2": "malformed body", "p-3": "malformed body"])
            // A dead letter from two hours ago, as the consumer would have made it then.
            let twoHoursAgo = Int64((Date().timeIntervalSince1970 - 7200) * 1000)
            let old = AMQPProperties(
                contentType: "application/json",
                headers: [
                    "x-error": .string("malformed body"), "x-attempts": .int(5), "x-consumer": .string("inventory"),
                    "x-dead-lettered-at": .int(twoHoursAgo), "x-original-routing-key": .string("order.created"),
                ], deliveryMode: 2, messageId: "old-1", type: "OrderCreated")
            #expect(
                await f.admin.publishConfirmed(exchange: "", routingKey: topology.deadLetterQueue, properties: old, body: Array("{}".utf8)) == .acked)
            // One the broker dead-letters: rejected without requeue from the consumer's queue.
            #expect(
                await f.admin.publishConfirmed(
                    exchange: "", routingKey: topology.queue, properties: AMQPProperties(messageId: "rej-1", type: "OrderCreated"),
                    body: Array("{}".utf8)) == .acked)
            let rejected = try #require(try await f.admin.getUnacked(topology.queue))
            try await f.admin.nack([rejected], requeue: false)
            #expect(await eventually { (try? await count(f, topology.deadLetterQueue)) == 5 })

            #expect(ids(try await json(["list", "--queue", topology.queue, "--reason", "MALFORMED"])) == ["p-2", "p-3", "old-1"])
            #expect(ids(try await json(["list", "--queue", topology.queue, "--reason", "timed out"])) == ["p-1"])
            #expect(ids(try await json(["list", "--queue", topology.queue, "--older-than", "1h"])) == ["old-1"])
            #expect(ids(try await json(["list", "--queue", topology.queue, "--older-than", "1h", "--reason", "timed out"])).isEmpty)
            #expect(ids(try await json(["list", "--queue", topology.queue, "--id", "p-1", "--id", "old-1"])) == ["p-1", "old-1"])
            #expect(items(try await json(["list", "--queue", topology.queue, "--limit", "2"])).count == 2)
            let broker = items(try await json(["list", "--queue", topology.queue, "--reason", "rejected"]))
            #expect(broker.count == 1)
            #expect(string(broker.first?["messageId"]) == "rej-1" && string(broker.first?["deadLetteredBy"]) == "broker")
            #expect(string(broker.first?["deadLetteredAtFrom"]) == "x-death")

            // purge by age: only the old one goes.
            let purged = try await json(["purge", "--queue", topology.queue, "--older-than", "1h"])
            #expect(number(purged["changed"]) == 1 && items(purged["ids"] ?? .null).compactMap(string) == ["old-1"])
            #expect(await eventually { (try? await count(f, topology.deadLetterQueue)) == 4 })
        }
    }

    @Test("requeue --dry-run changes nothing; requeue puts dead letters back with their message id and headers, removed after the confirm")
    func requeue() async throws {
        try await Fixture.with { f in
            let topology = topology(f)
            let originals = try await deadLetter(f, topology, ids: ["p-1", "p-2", "p-3"], failing: ["p-1": "x", "p-2": "y", "p-3": "z"])
            // Read once before: the quorum queue now counts a delivery, which must not travel along.
            _ = try await json(["list", "--queue", topology.queue])

            let dry = try await json(["requeue", "--queue", topology.queue, "--dry-run"])
            #expect(number(dry["matched"]) == 3 && number(dry["changed"]) == 0 && dry["dryRun"] == .bool(true))
            #expect(await eventually { (try? await count(f, topology.deadLetterQueue)) == 3 })
            #expect(try await count(f, topology.queue) == 0, "a dry run publishes nothing")

            let done = try await json(["requeue", "--queue", topology.queue, "--id", "p-1", "--id", "p-3"])
            #expect(number(done["changed"]) == 2 && number(done["matched"]) == 2 && done["dryRun"] == .bool(false))
            #expect(await eventually { (try? await count(f, topology.queue)) == 2 })
            #expect(await eventually { (try? await count(f, topology.deadLetterQueue)) == 1 })
            #expect(ids(try await json(["list", "--queue", topology.queue])) == ["p-2"])

            var requeued: [String: AMQPMessage] = [:]
            while let message = try await f.admin.getUnacked(topology.queue) { requeued[message.properties.messageId ?? "-"] = message }
            #expect(Set(requeued.keys) == ["p-1", "p-3"])
            for original in originals where original.id != "p-2" {
                let message = try #require(requeued[original.id])
                let properties = message.properties
                #expect(properties.type == "OrderCreated" && properties.correlationId == original.correlationId)
                #expect(properties.contentType == original.contentType && properties.deliveryMode == 2)
                #expect(message.body == original.body)
                #expect(message.routingKey == topology.queue && message.exchange == "")
                let expected = original.wireHeaders.mapValues(AMQPFieldValue.init(header:))
                // The consumer's quorum queue counts its own deliveries (0 for this first one); the
                // dead-letter queue's count, 1 after the list above, does not travel along.
                var headers = properties.headers
                #expect(headers.removeValue(forKey: "x-delivery-count").map { $0 == .int(0) } ?? true)
                #expect(headers == expected, "the original headers, nothing dead-lettering added")
            }
        }
    }

    @Test("requeued dead letters are applied exactly once by a handler that now succeeds; the dead-letter queue empties")
    func requeueApplies() async throws {
        try await Fixture.with { f in
            let topology = topology(f)
            let poison = ["p-1": "stock service down", "p-2": "stock service down", "p-3": "stock service down"]
            try await deadLetter(f, topology, ids: ["ok-1", "p-1", "p-2", "p-3", "ok-2"], failing: poison)
            #expect(try await f.count("applied") == 2)

            // The cause is fixed: the same consumer, whose handler succeeds now.
            let fixed = consumer(f, topology, failing: [:])
            let running = Task { try await fixed.run() }
            defer { running.cancel() }
            #expect(await eventually { await fixed.isConnected })
            let result = try await outboxctl(["requeue", "--queue", topology.queue, "--reason", "STOCK SERVICE"])
            #expect(result.status == 0, "\(result.output) \(result.errors)")
            #expect(result.output.contains("3 of 3 selected dead letter(s) requeued to \(topology.queue)"))
            #expect(await eventually { fixed.stats.processed == 3 })
            #expect(await eventually { (try? await count(f, topology.deadLetterQueue)) == 0 })
            let again = try await json(["requeue", "--queue", topology.queue])
            #expect(number(again["matched"]) == 0, "nothing is left to requeue")
            try await Task.sleep(for: .milliseconds(300))
            // Exactly the three requeued ones applied here (a redelivery of something the first
            // consumer applied would be skipped as a duplicate, which is what the inbox is for).
            #expect(fixed.stats.processed == 3 && fixed.stats.deadLettered == 0)
            #expect(Set(try await f.find("applied").compactMap { $0["_id"]?.stringValue }) == ["ok-1", "ok-2", "p-1", "p-2", "p-3"])
            #expect(try await f.count("applied") == 5)
            #expect(try await f.count("inbox") == 5, "each effect once, each message id once in the inbox")
        }
    }

    @Test("purge --dry-run removes nothing; purge --id removes those; purge alone removes the rest")
    func purge() async throws {
        try await Fixture.with { f in
            let topology = topology(f)
            try await deadLetter(f, topology, ids: ["p-1", "p-2", "p-3"], failing: ["p-1": "a", "p-2": "b", "p-3": "c"])
            let dry = try await json(["purge", "--queue", topology.queue, "--dry-run"])
            #expect(number(dry["matched"]) == 3 && number(dry["changed"]) == 0)
            #expect(await eventually { (try? await count(f, topology.deadLetterQueue)) == 3 })
            let one = try await json(["purge", "--queue", topology.queue, "--id", "p-2"])
            #expect(number(one["changed"]) == 1)
            #expect(ids(try await json(["list", "--queue", topology.queue])) == ["p-1", "p-3"])
            let rest = try await outboxctl(["purge", "--queue", topology.queue])
            #expect(rest.status == 0 && rest.output.contains("2 of 2 selected dead letter(s) removed"), "\(rest.output)")
            #expect(await eventually { (try? await count(f, topology.deadLetterQueue)) == 0 })
            #expect(items(try await json(["list", "--queue", topology.queue])).isEmpty)
        }
    }

    @Test("a requeue the broker refuses leaves the dead letter where it is and exits 1; --dead-letter-queue names another queue")
    func refused() async throws {
        try await Fixture.with { f in
            // A consumer queue that refuses every publish, and a dead-letter queue of another name.
            let target = try await f.queue("full", bindings: [], arguments: ["x-max-length": .int(0), "x-overflow": .string("reject-publish")])
            let dlq = try await f.queue("parked-letters", bindings: [])
            let headers: [String: AMQPFieldValue] = ["x-error": .string("boom"), "x-consumer": .string("inventory")]
            for id in ["d-1", "d-2"] {
                let properties = AMQPProperties(headers: headers, messageId: id, type: "OrderCreated")
                #expect(await f.admin.publishConfirmed(exchange: "", routingKey: dlq, properties: properties, body: [1]) == .acked)
            }
            let result = try await json(["requeue", "--queue", target, "--dead-letter-queue", dlq], status: 1)
            #expect(number(result["matched"]) == 2 && number(result["changed"]) == 0)
            #expect(items(result["failures"] ?? .null).count == 2)
            #expect(string(items(result["failures"] ?? .null).first?["error"])?.contains("refused") == true)
            #expect(await eventually { (try? await count(f, dlq)) == 2 }, "both stay in the dead-letter queue")
        }
    }

    @Test("bad arguments and a missing queue exit 64, an unreachable broker 69 without the password, no AMQP_URL 78")
    func exitCodes() async throws {
        for arguments in [
            ["list"], ["list", "--queue", "q", "--older-than", "soon"], ["requeue", "--queue", "q", "--limit", "0"], ["show", "--queue", "q"],
            ["purge", "--queue", "q", "--confirm-timeout", "1s"],
        ] {
            let result = try await outboxctl(arguments)
            #expect(result.status == 64, "\(arguments) exited \(result.status): \(result.errors)")
        }
        let missing = try await outboxctl(["list", "--queue", "no-such-queue-\(UUID().uuidString.prefix(8))"])
        #expect(missing.status == 64 && missing.errors.contains("no queue") && missing.errors.contains(".dlq"), "\(missing.errors)")
        let password = "n0t-the-real-pa55word"
        let unreachable = try await outboxctl(["list", "--queue", "q"], environment: ["AMQP_URL": "amqp://ops:\(password)@127.0.0.1:1/"])
        #expect(unreachable.status == 69, "\(unreachable.errors)")
        #expect(!(unreachable.output + unreachable.errors).contains(password))
        let unset = try await outboxctl(["list", "--queue", "q"], environment: [:])
        #expect(unset.status == 78 && unset.errors.contains("AMQP_URL"))
    }
}
