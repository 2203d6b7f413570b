import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

/// Issue 9, points 7 and 8 on the plain stack: quorum queues for consumers, majority commits.
@Suite("Durable links: majority commits, quorum queues", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct DurableLinkTests {
    @Test("transactions that write events commit with write concern majority; the writes inside carry none")
    func majorityCommit() async throws {
        let commands = LockedArray<(name: String, command: Document)>()
        let database = "it_wc_\(UUID().uuidString.prefix(8).lowercased())"
        let pool = try MongoClientPool(
            MongoConfiguration(uri: Servers.mongoURI, database: database, threads: 2, appName: "write-concern-test") { name, command in
                if name == "insert" || name == "commitTransaction" { commands.append((name, command)) }
            })
        let event = NewEvent(
            type: "OrderCreated", aggregateType: "Order", aggregateId: "wc-1", aggregateVersion: 1, data: ["n": 1], exchange: "orders")
        try await pool.withTransaction { connection in
            try connection.collection("orders").insertOne(["_id": "wc-1"])
            _ = try OutboxWriter().append([event], using: connection)
        }
        let seen = commands.values
        let commits = seen.filter { $0.name == "commitTransaction" }
        #expect(commits.count == 1)
        let writeConcern = commits.first?.command["writeConcern"]?.documentValue
        #expect(writeConcern?["w"]?.stringValue == "majority", "commit: \(String(describing: commits.first?.command))")
        #expect(writeConcern?["wtimeout"]?.intValue == Int(MongoClientPool.majorityTimeoutMilliseconds))
        let inserts = seen.filter { $0.name == "insert" }
        #expect(inserts.count == 2 && inserts.allSatisfy { $0.command["writeConcern"] == nil })
        #expect(try await pool.withConnection { try $0.collection("outbox").countDocuments() } == 1)
        _ = try? await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
    }

    @Test("consumer queues and dead-letter queues are quorum queues; a consumer set to classic exits 78 naming the queue")
    func quorumQueues() async throws {
        try await Fixture.with { f in
            let topology = ConsumerTopology(exchange: f.exchange, queue: "\(f.exchange).quorum", bindings: ["#"])
            f.track(queue: topology.queue)
            f.track(queue: topology.deadLetterQueue)
            #expect(topology.queueType == .quorum)
            try await f.admin.declare(topology)
            try await f.admin.declare(topology)  // idempotent
            // The broker says what the queues are: declaring them as classic is refused.
            let dlx: [String: AMQPArgument] = ["x-dead-letter-exchange": .string(topology.deadLetterExchange)]
            for (queue, arguments) in [(topology.queue, dlx), (topology.deadLetterQueue, [:])] {
                let classic = arguments.merging(["x-queue-type": .string("classic")]) { $1 }
                await #expect(
                    performing: { try await f.admin.declareQueue(queue, arguments: classic) },
                    throws: { error in
                        let error = error as? AMQPError
                        return error?.cause == .inequivalent && error?.message.contains("x-queue-type") == true
                    })
            }
            // Messages flow through it and the dead-letter exchange reaches the quorum dead-letter queue.
            let channel = AMQPConsumerChannel(configuration: f.amqp, topology: topology, logger: f.logger)
            try await channel.connect()
            let publisher = f.makePublisher()
            let message = OutboxMessage(
                id: "q-1", type: "OrderCreated", aggregateType: "Order", aggregateId: "q", aggregateVersion: 1, exchange: f.exchange,
                routingKey: "order.created", occurredAt: 0, body: Array("{}".utf8))
            #expect(await publisher.publish([message]) == [.acked])
            var delivery: AMQPDelivery?
            for _ in 0..<40 where delivery == nil { delivery = try await channel.next(timeout: .milliseconds(250)) }
            #expect(delivery?.messageId == "q-1")
            if let delivery { try await channel.reject(delivery, requeue: false) }
            let deadLettered = await eventually(timeout: .seconds(10)) {
                (try? await f.admin.declareQueue(topology.deadLetterQueue, arguments: topology.queueTypeArguments)) == 1
            }
            #expect(deadLettered)
            await channel.close()
            await publisher.close()

            // A consumer told the queue is classic stops at start with one line naming the queue.
            var environment = ProcessInfo.processInfo.environment
            environment.merge([
                "OUTBOX_DATABASE": f.database, "CONSUMER_EXCHANGE": f.exchange, "CONSUMER_QUEUE": topology.queue,
                "CONSUMER_QUEUE_TYPE": "classic", "CONSUMER_HTTP_ADDRESS": "off",
            ]) { $1 }
            let consumer = try Program("inventory-consumer", environment: environment)
            #expect(await consumer.wait(timeout: .seconds(60)) == 78, "\(consumer.output)")
            #expect(consumer.output.contains(topology.deadLetterQueue) && consumer.output.contains("CONSUMER_QUEUE_TYPE"), "\(consumer.output)")
        }
    }
}
