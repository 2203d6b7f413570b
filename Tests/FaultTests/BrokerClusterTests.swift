import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

/// The cluster stack of `ops/test` (`STACK_NAME=cluster RABBIT_CLUSTER=3 ops/stack start`): three
/// clustered RabbitMQ nodes. Its settings arrive as `CLUSTER_*` variables.
enum ClusterEnv {
    static func setting(_ name: String) -> String { Env.environment["CLUSTER_\(name)"] ?? "" }
    /// A URL naming all three nodes.
    static let amqpURL = setting("AMQP_URL")
    static let nodes = SideStack(name: setting("STACK_NAME"), directory: setting("STACK_DIR"))
    static let count = 3
    /// Runs when the cluster is there, and must run (and fail without it) when the test command promised it.
    static let enabled = Env.required || !amqpURL.isEmpty

    /// The node (1, 2, 3) whose AMQP port is `port`; nil for none.
    static func node(port: Int) -> Int? { (1...count).first { nodes.port(node: $0) == port } }

    /// The node (1, 2, 3) named `name` (`outbox<AMQP port>@localhost`, as ops/stack names them).
    static func node(named name: Substring) -> Int? {
        guard name.hasPrefix("outbox"), let at = name.firstIndex(of: "@") else { return nil }
        return Int(name[name.index(name.startIndex, offsetBy: 6)..<at]).flatMap { node(port: $0) }
    }

    /// `rabbitmqctl ARGS` on the first node that answers.
    static func rabbitmqctl(_ arguments: [String]) async throws -> String {
        var last = ""
        for node in 1...count {
            let result = try await nodes.run(["rabbitmqctl", "-q"] + arguments, node: node)
            if result.status == 0 { return result.output }
            last = result.output
        }
        Issue.record("rabbitmqctl \(arguments.joined(separator: " ")) failed on every node: \(last.suffix(1000))")
        return ""
    }

    /// Each queue's type, leader node and member nodes, by queue name.
    static func queues() async throws -> [String: (type: String, leader: Int?, members: Set<Int>)] {
        let text = try await rabbitmqctl(["--no-table-headers", "list_queues", "name", "type", "leader", "members"])
        var result: [String: (type: String, leader: Int?, members: Set<Int>)] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: "\t", maxSplits: 3, omittingEmptySubsequences: false)
            guard fields.count == 4 else { continue }
            let members = fields[3].split(whereSeparator: { "[], ".contains($0) }).compactMap { node(named: $0) }
            result[String(fields[0])] = (String(fields[1]), node(named: fields[2]), Set(members))
        }
        return result
    }
}

/// Where a program's log ends now, and the broker port it last connected to.
private struct LogMark {
    let length: Int
    let port: Int?

    init(_ program: RelayProcess) {
        let log = program.log
        length = log.utf8.count
        port = connectionPorts(log[...]).last
    }

    /// The ports the program connected to since the mark.
    func portsSince(_ program: RelayProcess) -> [Int] {
        let log = program.log
        return connectionPorts(log[log.utf8.index(log.startIndex, offsetBy: min(length, log.utf8.count))...])
    }
}

/// Nested in `FaultTests` so that it runs serialized with them: it uses the test stack's
/// SecantusDB, which other fault tests stop and start.
extension FaultTests {
    @Suite(
        "Broker cluster: three clustered RabbitMQ nodes, quorum queues, nodes killed under a relay and both consumers",
        .enabled(if: ClusterEnv.enabled), .timeLimit(.minutes(6)))
    struct BrokerClusterTests {
        @Test("kill -9 of the relay's node, then of the inventory queue's leader: every order applied exactly once by both consumers")
        func nodesKilledUnderLoad() async throws {
            try #require(
                !ClusterEnv.amqpURL.isEmpty && !ClusterEnv.nodes.directory.isEmpty && !Env.stackScript.isEmpty,
                "the cluster stack was promised (CLUSTER_AMQP_URL, CLUSTER_STACK_DIR); run ops/test")
            let started = ContinuousClock.now
            let orders = 2000
            let f = try FaultFixture(amqpURL: ClusterEnv.amqpURL)
            // Records every message (OrderCreated and the inventory consumer's follow-ups): the relay
            // publishes as mandatory, and the follow-ups have no other queue.
            try await f.prepare(queueArguments: ["x-queue-type": .string("quorum")])
            try await f.seedStock()
            // Two backlogs of half the orders each: the first drains while the relay's node dies; the
            // second is written once that node is back, so the leader's death lands mid-stream however
            // fast the consumers are.
            let half = orders / 2
            _ = try await f.appendEvents(half, aggregates: half, prefix: "order", data: f.orderData)

            // Both consumers first: they declare their quorum queues (leaders where they connect,
            // members on every node) before the relay publishes.
            let consumers = try FaultFixture.consumerKinds.map { try f.startConsumer($0, kind: $0) }
            let queues = FaultFixture.consumerKinds.map { "\(f.exchange).\($0)" }
            var declared: [String: (type: String, leader: Int?, members: Set<Int>)] = [:]
            for _ in 0..<120 where !queues.allSatisfy({ declared[$0] != nil }) {
                try await Task.sleep(for: .milliseconds(500))
                declared = try await ClusterEnv.queues()
            }
            for queue in queues {
                #expect(declared[queue]?.type == "quorum", "\(queue) is a quorum queue: \(declared[queue].map { "\($0)" } ?? "missing")")
                #expect(declared[queue]?.members == [1, 2, 3], "\(queue) has a member on every node")
            }
            let relay = try f.startRelay("relay")
            let programs = [("relay", relay)] + zip(FaultFixture.consumerKinds, consumers).map { ($0, $1) }

            func count(_ collection: String, _ filter: Document = [:]) async -> Int {
                (try? await f.pool.withConnection { try $0.collection(collection).countDocuments(filter) }) ?? -1
            }
            /// Whether `done` came true within `timeout`.
            func waitFor(timeout: Duration = .seconds(120), _ done: () async -> Bool) async -> Bool {
                let deadline = ContinuousClock.now + timeout
                while ContinuousClock.now < deadline {
                    if await done() { return true }
                    try? await Task.sleep(for: .milliseconds(250))
                }
                return false
            }
            /// Kills `node`, checks that every program that was on it connected to another node, restarts it.
            func killNode(_ node: Int, because reason: String) async throws -> [String] {
                let marks = programs.map { ($0.0, $0.1, LogMark($0.1)) }
                #expect(try await ClusterEnv.nodes.run(["kill-rabbit"], node: node).status == 0, "kill node \(node)")
                var moved: [String] = []
                let killedPort = ClusterEnv.nodes.port(node: node)
                for (name, program, mark) in marks where mark.port == killedPort {
                    let reconnected = await waitFor(timeout: .seconds(60)) {
                        mark.portsSince(program).contains { $0 != killedPort && ClusterEnv.node(port: $0) != nil }
                    }
                    #expect(reconnected, "\(name) reconnects to a surviving node when node \(node) (\(reason)) dies: \(program.log.suffix(2000))")
                    if reconnected { moved.append(name) }
                }
                #expect(try await ClusterEnv.nodes.run(["start-rabbit"], node: node).status == 0, "restart node \(node)")
                return moved
            }

            // (a) The node the relay publishes through, a fifth of the way into the first backlog.
            #expect(await waitFor { await count("outbox", ["status": "delivered"]) >= half / 5 }, "a fifth of the first backlog delivered")
            let relayNode = try #require(
                connectionPorts(relay.log[...]).last.flatMap(ClusterEnv.node(port:)), "the relay's node: \(relay.log.suffix(2000))")
            let deliveredAtA = await count("outbox", ["status": "delivered"]), pendingAtA = await count("outbox", ["status": "pending"])
            let movedA = try await killNode(relayNode, because: "the relay's")
            #expect(Set(movedA) == Set(programs.map(\.0)), "all three started on the URL's first node and moved: \(movedA)")
            #expect(pendingAtA > 0, "node \(relayNode) must be killed while events are pending")

            // (b) The leader of the inventory consumer's queue, while the second backlog flows through it.
            // It is looked up before that backlog is written (asking the cluster takes seconds, in
            // which the consumers could apply it all); no node fails in between, so it stays leader.
            let inventoryQueue = "\(f.exchange).inventory"
            let leader = try #require(try await ClusterEnv.queues()[inventoryQueue]?.leader, "the inventory queue's leader")
            _ = try await f.appendEvents(orders - half, aggregates: orders - half, prefix: "late-order", data: { f.orderData(half + $0) })
            #expect(await waitFor { await count("reservations") >= half + 50 }, "the second backlog reaches the inventory consumer")
            let appliedAtB = await count("reservations")
            #expect(appliedAtB < orders, "the leader must be killed while orders are still being applied (\(appliedAtB))")
            let movedB = try await killNode(leader, because: "the inventory queue's leader")

            // Every event delivered: the OrderCreated ones and the inventory consumer's follow-ups.
            #expect(await f.waitUntilDelivered(2 * orders, timeout: .seconds(180)), "relay log: \(relay.log.suffix(3000))")
            #expect(
                await waitFor {
                    let reservations = await count("reservations"), notifications = await count("notifications")
                    return reservations == orders && notifications == orders
                }, "both consumers finish")
            for program in [relay] + consumers { #expect(program.stop() == 0, "SIGTERM ends \(program.logPath) cleanly") }

            // Exactly once: one reservation, one notification and one inbox entry per order per
            // consumer, stock decremented once per order; nothing parked or dead-lettered, nothing left.
            #expect(await count("reservations") == orders)
            #expect(await count("notifications") == orders)
            for kind in FaultFixture.consumerKinds { #expect(await count("inbox", ["consumer": .string(kind)]) == orders, "\(kind) inbox") }
            #expect(await count("outbox", ["type": "OrderCreated", "status": "delivered"]) == orders)
            #expect(await count("outbox", ["type": "InventoryReserved", "status": "delivered"]) == orders)
            #expect(await count("outbox", ["status": "parked"]) == 0)
            let stock = try await f.pool.withConnection { try $0.collection("stock").findOne(["_id": "SKU-A"]) }
            #expect(stock?["available"]?.intValue == Int(FaultFixture.initialStock) - orders, "each order decremented stock exactly once")
            for queue in queues {
                #expect(try await f.admin.messageCount(queue) == 0, "every message of \(queue) was acked")
                #expect(try await f.admin.messageCount("\(queue).dlq") == 0, "nothing dead-lettered from \(queue)")
            }
            let recorded = try await f.admin.messageCount(f.queue) ?? -1
            #expect(recorded >= 2 * orders, "every confirmed message is still in the cluster's quorum queue (\(recorded))")
            let skipped = try await f.pool.withConnection { connection in
                try connection.collection("consumer_stats").find().reduce(0) { $0 + ($1["duplicatesSkipped"]?.intValue ?? 0) }
            }
            let seconds = (ContinuousClock.now - started).components.seconds
            func moved(_ names: [String]) -> String { names.isEmpty ? "no program on it" : names.joined(separator: ", ") + " moved" }
            print(
                """
                broker cluster: \(orders) orders, node \(relayNode) (relay's) killed at \(deliveredAtA) events delivered [\(moved(movedA))], \
                node \(leader) (inventory leader) at \(appliedAtB) orders applied [\(moved(movedB))]; \(2 * orders) events delivered, \
                \(orders) reservations, \(orders) notifications, \(2 * orders) inbox entries, \(skipped) duplicates skipped, \
                \(recorded - 2 * orders) duplicate publishes, 0 parked, \(seconds) s
                """)
            await f.cleanup()
        }
    }
}
