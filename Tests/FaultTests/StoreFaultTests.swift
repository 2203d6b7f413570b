import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

/// Store faults on demand: mongod's `failCommand` fail point (SecantusDB with
/// `--enable-test-commands`, which `ops/stack` sets for the test stack), aimed at the relays'
/// connections only (`appName` outbox-relay), so the test's own reads are not disturbed.
struct StoreFaults {
    /// Commands the relay sends: fetch and fence checks (find), marks and lease renewals (update),
    /// lease takeover (findAndModify), relay counts (aggregate).
    static let commands: [BSON] = ["update", "find", "findAndModify", "aggregate"]

    /// The faults a store can throw at a client: retryable write errors, transient transaction
    /// errors, a dropped connection.
    /// What a consumer sends: its transaction (inbox insert, stock update, its own outbox insert, commit).
    static let consumerCommands: [BSON] = ["insert", "update", "find", "commitTransaction"]

    static func random(commands: [BSON] = commands, appName: String = "outbox-relay") -> Document {
        var data: Document = [
            "failCommands": .array(commands.shuffled().prefix(Int.random(in: 1...commands.count)).map { $0 }), "appName": .string(appName),
        ]
        switch Int.random(in: 0..<4) {
        case 0:
            data["errorCode"] = .int32(11600)  // InterruptedAtShutdown
            data["errorLabels"] = ["RetryableWriteError"]
        case 1:
            data["errorCode"] = .int32(91)  // ShutdownInProgress
            data["errorLabels"] = ["RetryableWriteError"]
        case 2:
            data["errorCode"] = .int32(112)  // WriteConflict
            data["errorLabels"] = ["TransientTransactionError"]
        default:
            data["closeConnection"] = .bool(true)
        }
        return data
    }

    /// Sets random fail points on and off every 100–400 ms until cancelled; returns how many were set.
    static func inject(_ pool: MongoClientPool, commands: [BSON] = commands, appName: String = "outbox-relay") -> Task<Int, Never> {
        Task {
            var set = 0
            while !Task.isCancelled {
                if Int.random(in: 0..<4) == 0 {
                    try? await StoreFaults.set(pool, mode: "off")
                } else if (try? await StoreFaults.set(
                    pool, mode: ["times": .int32(Int32.random(in: 1...4))], data: random(commands: commands, appName: appName))) != nil
                {
                    set += 1
                }
                try? await Task.sleep(for: .milliseconds(Int.random(in: 100...400)))
            }
            try? await StoreFaults.set(pool, mode: "off")
            return set
        }
    }

    static func set(_ pool: MongoClientPool, mode: BSON, data: Document = [:]) async throws {
        var command: Document = ["configureFailPoint": "failCommand", "mode": mode]
        if !data.fields.isEmpty { command["data"] = .document(data) }
        let configure = command
        _ = try await pool.withConnection { try $0.runCommand(configure, database: "admin") }
    }
}

extension FaultTests {
    @Test(
        "two relays while the store fails or drops their updates, finds, findAndModifys and aggregates: 0 lost, order kept, duplicates ≤ 5 %",
        arguments: ["OutboxWriter", "minimal", "status pending"])
    func storeFaults(shape: String) async throws {
        let f = try FaultFixture()
        try await f.prepare()
        // 600 aggregates × 5 events, in order: versions for OutboxWriter's, timestamps for the others.
        let aggregates = 600
        var position: [String: (aggregate: String, version: Int)] = [:]
        let ids: [String]
        switch shape {
        case "OutboxWriter":
            ids = try await f.appendEvents(3000, aggregates: aggregates)
            for (index, id) in ids.enumerated() { position[id] = ("agg-\(index % aggregates)", index / aggregates + 1) }
        default:
            ids = try await f.appendMinimal(3000, perAggregate: 5, extra: shape == "minimal" ? { _ in [:] } : Self.pendingFormat)
            for (index, id) in ids.enumerated() { position[id] = ("min-\(index / 5)", index % 5 + 1) }
        }
        try await StoreFaults.set(f.pool, mode: "off")
        // Documents without an exchange go to the relay's default one.
        let exchange = ["RELAY_EXCHANGE": f.exchange]
        let relays = [try f.startRelay("relay-a", extra: exchange), try f.startRelay("relay-b", extra: exchange)]
        let injected = StoreFaults.inject(f.pool)
        let delivered = await f.waitUntilDelivered(ids.count, timeout: .seconds(300))
        injected.cancel()
        let faults = await injected.value
        try await StoreFaults.set(f.pool, mode: "off")
        #expect(delivered, "every event delivered while the store failed")
        #expect(faults >= 20, "fail points were set during the run (\(faults))")
        for relay in relays { #expect(relay.stop() == 0) }

        let received = try await f.receivedIds()
        let unique = Set(received)
        let missing = Set(ids).subtracting(unique)
        #expect(missing.isEmpty, "events never reached the broker, e.g. \(missing.prefix(5).sorted())")
        let (outOfOrder, examples) = await f.outOfOrder(received, position: position)
        #expect(outOfOrder == 0, "versions of an aggregate arrived out of order \(outOfOrder) times: \(examples)")
        let duplicates = received.count - unique.count
        #expect(duplicates * 20 <= ids.count, "duplicate publishes \(duplicates) exceed 5 % of \(ids.count) events")
        #expect(await f.count(["status": "parked"]) == 0)
        print(
            "store faults, \(shape) documents (\(faults) fail points, 2 relays): \(ids.count) events, \(received.count) messages received, \(duplicates) duplicate publishes"
        )
        await f.cleanup()
    }

    @Test("an inventory consumer while the store fails or drops its transaction's commands applies every order once")
    func consumerStoreFaults() async throws {
        let f = try FaultFixture()
        try await f.prepare()
        try await StoreFaults.set(f.pool, mode: "off")
        try await f.seedStock()
        let consumer = try f.startConsumer("consumer", extra: ["CONSUMER_MAX_ATTEMPTS": "100"])
        try await Task.sleep(for: .seconds(2))  // the consumer declares its queue and bindings
        let orders = 2000
        let messages = f.orderCreatedMessages(orders)
        let injected = StoreFaults.inject(f.pool, commands: StoreFaults.consumerCommands, appName: "inventory-consumer")
        let publisher = ConfirmPublisher(configuration: AMQPConfiguration(endpoint: try AMQPEndpoint(url: Env.amqpURL)), logger: Env.logger)
        // In four waves a second apart: a consumer applying batches would otherwise be done before
        // many fail points were set.
        for wave in stride(from: 0, to: orders, by: orders / 4) {
            #expect(await publisher.publish(Array(messages[wave..<wave + orders / 4])).allSatisfy { $0 == .acked })
            try await Task.sleep(for: .seconds(1))
        }
        await publisher.close()
        func applied() async -> Int {
            (try? await f.pool.withConnection { try $0.collection("reservations").countDocuments() }) ?? -1
        }
        let deadline = ContinuousClock.now + .seconds(180)
        while await applied() < orders && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(250)) }
        injected.cancel()
        let faults = await injected.value
        consumer.stop()
        #expect(await applied() == orders)
        #expect(faults >= 5, "fail points were set during the run (\(faults))")
        try await f.expectAppliedOnce(orders)
        print("consumer under store faults (\(faults) fail points): \(orders) orders applied exactly once")
        await f.cleanup()
    }
}
