import Foundation
import Outbox
import OutboxAMQP
import OutboxConsumer
import OutboxMongo
import Testing

@Suite("Idempotent consumers on the real servers (I4)", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct ConsumerIntegrationTests {
    func orderCreated(_ f: Fixture, orderId: String, quantity: Int = 1) -> OutboxMessage {
        let data: Document = [
            "orderId": .string(orderId), "customerId": "c-1", "totalAmount": .decimal128(Decimal128("10.00")!), "quantity": .int64(Int64(quantity)),
        ]
        let body: Document = ["id": .string(orderId), "type": "OrderCreated", "data": .document(data)]
        return OutboxMessage(
            id: "evt-\(orderId)", type: "OrderCreated", aggregateType: "Order", aggregateId: orderId, aggregateVersion: 1,
            exchange: f.exchange, routingKey: "order.created", occurredAt: 0, body: ExtendedJSON.renderBytes(body))
    }

    func consumer(
        _ f: Fixture, name: String, handler: any InboxHandler, maxAttempts: Int = 3, batchSize: Int = 32,
        batchWait: Duration = .milliseconds(20)
    ) -> InboxConsumer {
        let topology = ConsumerTopology(
            exchange: f.exchange, queue: "\(f.exchange).\(name)", bindings: ["order.created"], prefetch: UInt16(max(2 * batchSize, 32)))
        f.track(queue: topology.queue)
        f.track(queue: topology.deadLetterQueue)
        return InboxConsumer(
            configuration: .init(
                name: name, topology: topology, maxAttempts: maxAttempts, retryDelay: .milliseconds(10), batchSize: batchSize,
                batchWait: batchWait),
            pool: f.pool, amqp: f.amqp, handler: handler, logger: f.logger)
    }

    @Test("batches: duplicates inside a batch and across batches are applied once, in few commits, all acked")
    func batchDuplicates() async throws {
        try await Fixture.with { f in
            // A long batch wait: whole batches of 32 even though the publisher is slow.
            let tally = consumer(f, name: "tally", handler: TallyHandler(exchange: f.exchange), batchWait: .milliseconds(500))
            let running = Task { try await tally.run() }
            #expect(await eventually { await tally.isConnected })
            let orders = (0..<64).map { orderCreated(f, orderId: "o-\($0)") }
            let publisher = f.makePublisher()
            // Each message twice in a row: the copy lands in the same batch as the original.
            #expect(await publisher.publish(orders.flatMap { [$0, $0] }).allSatisfy { $0 == .acked })
            #expect(await eventually { tally.stats.processed + tally.stats.duplicates == 128 })
            // Then 40 of them again: known already, skipped from later batches.
            #expect(await publisher.publish(Array(orders.prefix(40))).allSatisfy { $0 == .acked })
            await publisher.close()
            #expect(await eventually { tally.stats.processed + tally.stats.duplicates == 168 })
            let stats = tally.stats
            #expect(stats.processed == 64)
            #expect(stats.duplicates == 104)
            #expect(stats.commits <= 8, "64 orders in batches of up to 32 take a few transactions, not 64 (\(stats.commits))")
            let total = try await TallyHandler.total(f)
            #expect(total == 64)
            #expect(try await f.count("inbox") == 64)
            #expect(try await f.count(TallyHandler.effects) == 64)
            #expect(try await f.count("outbox") == 64)
            running.cancel()
            _ = try? await running.value
            // Unacked deliveries would be back in the queue now that the consumer is gone.
            #expect(try await f.admin.messageCount(tally.configuration.topology.queue) == 0, "every delivery was acked")
        }
    }

    /// Applies a whole batch or nothing, and cannot tell which message failed: the consumer has to
    /// narrow the failure down itself.
    struct OpaqueBatchHandler: InboxHandler {
        struct Boom: Error {}
        func handle(_ message: IncomingMessage, connection: MongoConnection) throws {
            try handle(batch: [message], connection: connection)
        }
        func handle(batch messages: [IncomingMessage], connection: MongoConnection) throws {
            try connection.collection("applied").insertMany(messages.map { ["_id": .string($0.messageId)] })
            if messages.contains(where: { $0.messageId == "evt-poison" }) { throw Boom() }
        }
    }

    @Test(
        "a poison message in a batch is dead-lettered after its attempts; every other message of the batch commits once",
        arguments: ["names the failing message", "fails the batch as a whole"])
    func poisonInBatch(handlerKind: String) async throws {
        try await Fixture.with { f in
            let handler: any InboxHandler = handlerKind == "names the failing message" ? FlakyHandler() : OpaqueBatchHandler()
            let service = consumer(f, name: "poison", handler: handler, maxAttempts: 3, batchWait: .milliseconds(500))
            let running = Task { try await service.run() }
            defer { running.cancel() }
            #expect(await eventually { await service.isConnected })
            var messages = (0..<24).map { orderCreated(f, orderId: "m-\($0)") }
            messages.insert(orderCreated(f, orderId: "poison"), at: 9)
            let publisher = f.makePublisher()
            #expect(await publisher.publish(messages).allSatisfy { $0 == .acked })
            await publisher.close()
            #expect(await eventually { service.stats.processed == 24 && service.stats.deadLettered == 1 })
            let applied = try await f.find("applied").compactMap { $0["_id"]?.stringValue }
            #expect(applied.count == 24)
            #expect(Set(applied) == Set((0..<24).map { "evt-m-\($0)" }), "the poison message's effect was rolled back")
            #expect(try await f.count("inbox") == 24)
            #expect(service.stats.handlerFailures == 3, "the poison message alone was tried maxAttempts times")
            let dead = try await f.admin.drain(service.configuration.topology.deadLetterQueue)
            #expect(dead.map(\.messageId) == ["evt-poison"])
            #expect(dead.first?.headers["x-attempts"] == .int(3))
        }
    }

    @Test("a message delivered twice or three times is applied once, with its follow-up event")
    func duplicates() async throws {
        try await Fixture.with { f in
            let service = consumer(f, name: "tally", handler: TallyHandler(exchange: f.exchange))
            let running = Task { try await service.run() }
            defer { running.cancel() }
            #expect(await eventually { await service.isConnected })

            let publisher = f.makePublisher()
            let first = orderCreated(f, orderId: "o-1", quantity: 3)
            let second = orderCreated(f, orderId: "o-2", quantity: 1)
            #expect(await publisher.publish([first, first, second, second, second]) == Array(repeating: .acked, count: 5))
            await publisher.close()

            #expect(await eventually { service.stats.processed + service.stats.duplicates == 5 })
            #expect(service.stats.processed == 2)
            #expect(service.stats.duplicates == 3)
            let total = try await TallyHandler.total(f)
            #expect(total == 4)
            #expect(try await f.count("inbox") == 2)
            let followUps = try await f.find("outbox")
            #expect(followUps.count == 2)
            #expect(followUps.allSatisfy { $0["type"] == "Tallied" })
        }
    }

    struct FlakyHandler: InboxHandler {
        struct Boom: Error {}
        func handle(_ message: IncomingMessage, connection: MongoConnection) throws {
            if message.messageId == "evt-poison" { throw Boom() }
            try connection.collection("applied").insertOne(["_id": .string(message.messageId)])
        }
    }

    @Test("a handler that keeps failing ends in the dead-letter queue with the reason; later messages are applied")
    func deadLetter() async throws {
        try await Fixture.with { f in
            let service = consumer(f, name: "flaky", handler: FlakyHandler(), maxAttempts: 3)
            let running = Task { try await service.run() }
            defer { running.cancel() }
            #expect(await eventually { await service.isConnected })
            let publisher = f.makePublisher()
            var poison = orderCreated(f, orderId: "poison")
            poison.priority = 4
            poison.replyTo = "order-replies"
            poison.contentEncoding = "identity"
            let tenant = HeaderValue.table(["id": .int(7), "vip": .bool(true), "rate": .double(0.5), "since": .timestamp(1_700_000_000)])
            poison.headers["x-tenant"] = tenant
            let after = (1...3).map { orderCreated(f, orderId: "after-\($0)") }
            #expect(await publisher.publish([poison] + after).allSatisfy { $0 == .acked })
            await publisher.close()
            #expect(await eventually { service.stats.processed == 3 && service.stats.deadLettered == 1 })
            #expect(service.stats.handlerFailures == 3)
            #expect(try await f.count("applied") == 3)
            let dead = try await f.admin.drain(service.configuration.topology.deadLetterQueue)
            #expect(dead.count == 1)
            #expect(dead.first?.messageId == "evt-poison")
            #expect(dead.first?.headers["x-attempts"] == .int(3))
            #expect(dead.first?.headers["x-error"].map { "\($0)".contains("Boom") } == true)
            #expect(dead.first?.priority == 4, "the dead letter keeps the message's priority")
            #expect(dead.first?.replyTo == "order-replies" && dead.first?.contentEncoding == "identity", "its reply-to and content encoding")
            #expect(dead.first?.headers["x-tenant"] == tenant, "and its headers of every type")
            #expect(try await f.count("inbox") == 3, "a dead-lettered message is not recorded as processed")
        }
    }

    /// Records each order's customer in a collection with a unique index: a second order of the
    /// same customer makes the handler's own insert hit a duplicate key.
    struct UniqueCustomerHandler: InboxHandler {
        func handle(_ message: IncomingMessage, connection: MongoConnection) throws {
            try connection.collection("customers").insertOne(["_id": .string(message.messageId), "customer": "c-1"])
        }
    }

    @Test("a handler's own duplicate key is a handler failure: retried and dead-lettered, never acked as a duplicate")
    func handlerDuplicateKey() async throws {
        try await Fixture.with { f in
            try await f.pool.withConnection {
                try $0.collection("customers").createIndexes([["key": ["customer": 1], "name": "one_per_customer", "unique": true]])
            }
            let service = consumer(f, name: "unique", handler: UniqueCustomerHandler(), maxAttempts: 3, batchSize: 1)
            let running = Task { try await service.run() }
            defer { running.cancel() }
            #expect(await eventually { await service.isConnected })
            let publisher = f.makePublisher()
            #expect(await publisher.publish([orderCreated(f, orderId: "first")]).allSatisfy { $0 == .acked })
            #expect(await eventually { service.stats.processed == 1 })
            #expect(await publisher.publish([orderCreated(f, orderId: "second")]).allSatisfy { $0 == .acked })
            await publisher.close()
            #expect(await eventually { service.stats.deadLettered == 1 })
            #expect(service.stats.duplicates == 0, "not taken for a redelivery")
            #expect(service.stats.handlerFailures == 3)
            let dead = try await f.admin.drain(service.configuration.topology.deadLetterQueue)
            #expect(dead.map(\.messageId) == ["evt-second"])
            #expect(try await f.count("inbox") == 1, "only the first is recorded as processed")
        }
    }

}
