import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The secure stack of `ops/test`: TLS everywhere, two RabbitMQ nodes that are not clustered.
enum SecureEnv {
    static let environment = ProcessInfo.processInfo.environment
    static func setting(_ name: String) -> String { environment["SECURE_\(name)"] ?? "" }
    static let directory = setting("STACK_DIR")
    static let tls = ["AMQP_TLS_CA_FILE", "AMQP_TLS_CERT_FILE", "AMQP_TLS_KEY_FILE"].map { ($0, setting($0)) }
    static let mongoURIFile = setting("MONGODB_URI_FILE")
    static let enabled = Env.required || !directory.isEmpty
    static let nodes = SideStack(name: "secure", directory: directory)

    static func read(_ path: String) -> String {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").trimmingCharacters(in: .newlines)
    }

    /// An in-process link to one node.
    static func amqp(node: Int) throws -> AMQPConfiguration {
        let url = read("\(directory)/secrets/amqp_url").replacingOccurrences(of: ":\(nodes.port(node: 1))/", with: ":\(nodes.port(node: node))/")
        var endpoint = try AMQPEndpoint(url: url)
        endpoint.tls?.caFile = setting("AMQP_TLS_CA_FILE")
        endpoint.tls?.certFile = setting("AMQP_TLS_CERT_FILE")
        endpoint.tls?.keyFile = setting("AMQP_TLS_KEY_FILE")
        return AMQPConfiguration(endpoint: endpoint, connectTimeout: .seconds(5))
    }
}

@Suite("Broker failover: two RabbitMQ nodes over TLS (secure stack)", .serialized, .enabled(if: SecureEnv.enabled), .timeLimit(.minutes(6)))
struct BrokerFailoverTests {
    @Test("the node in use is killed: the relay goes on with the other one and nothing is lost; heartbeat from the URL")
    func failover() async throws {
        #expect(!SecureEnv.directory.isEmpty && !Env.stackScript.isEmpty, "the secure stack was promised (SECURE_STACK_DIR); run ops/test")
        let database = "failover_\(UUID().uuidString.prefix(8).lowercased())"
        let exchange = "failover.\(database)"
        let queue = "\(exchange).all"
        let logs = FileManager.default.temporaryDirectory.appendingPathComponent(database)
        try FileManager.default.createDirectory(at: logs, withIntermediateDirectories: true)

        // Unclustered nodes: each needs the queue, as every node of a cluster would see it.
        let admins = [
            try AMQPAdmin(configuration: SecureEnv.amqp(node: 1), logger: Env.logger),
            try AMQPAdmin(configuration: SecureEnv.amqp(node: 2), logger: Env.logger),
        ]
        for admin in admins {
            try await admin.declareExchange(exchange)
            try await admin.declareQueue(queue)
            try await admin.purgeQueue(queue)
            try await admin.bindQueue(queue, exchange: exchange, routingKey: "#")
        }
        let pool = try MongoClientPool(MongoConfiguration(uri: SecureEnv.read(SecureEnv.mongoURIFile), database: database, appName: "failover-test"))

        // Both nodes in one URL, with heartbeat and connection timeout parameters; in a secret file.
        let urlFile = logs.appendingPathComponent("amqp_url").path
        try (SecureEnv.read("\(SecureEnv.directory)/secrets/amqp_url_all_nodes") + "?heartbeat=5&connection_timeout=2000")
            .write(toFile: urlFile, atomically: true, encoding: .utf8)
        chmod(urlFile, 0o600)
        var environment = Env.environment.filter { !$0.key.hasPrefix("SECURE_") && $0.key != "MONGODB_URI" && $0.key != "AMQP_URL" }
        for (name, value) in SecureEnv.tls { environment[name] = value }
        environment.merge([
            "MONGODB_URI_FILE": SecureEnv.mongoURIFile, "AMQP_URL_FILE": urlFile, "OUTBOX_DATABASE": database,
            "RELAY_POLL_INTERVAL": "50ms", "RELAY_RETRY_BASE_DELAY": "50ms", "RELAY_RETRY_MAX_DELAY": "1s", "RELAY_MAX_ATTEMPTS": "1000",
            "RELAY_CONFIRM_TIMEOUT": "3s", "RELAY_LEASE_TTL": "3s", "RELAY_HTTP_ADDRESS": "off", "LOG_LEVEL": "info",
        ]) { $1 }
        let log = logs.appendingPathComponent("relay.log").path
        let relay = try spawn([Env.binDirectory.appendingPathComponent("outbox-relay").path], environment: environment, log: log)
        var relayStopped = false
        defer { if !relayStopped { kill(relay, SIGKILL); wait(pid: relay) } }

        let writer = OutboxWriter()
        func append(_ range: Range<Int>) async throws -> [String] {
            let documents = range.map { i in
                writer.document(
                    for: NewEvent(
                        type: "OrderCreated", aggregateType: "Order", aggregateId: "failover-\(i % 50)", aggregateVersion: i / 50 + 1,
                        data: ["index": .int64(Int64(i))], exchange: exchange))
            }
            try await pool.withConnection { try $0.collection("outbox").insertMany(documents) }
            return documents.compactMap { $0["_id"]?.stringValue }
        }
        func delivered() async -> Int {
            (try? await pool.withConnection { try $0.collection("outbox").countDocuments(["status": "delivered"]) }) ?? -1
        }
        func waitDelivered(_ total: Int) async -> Bool {
            let deadline = ContinuousClock.now + .seconds(120)
            while ContinuousClock.now < deadline {
                if await delivered() == total { return true }
                try? await Task.sleep(for: .milliseconds(100))
            }
            return false
        }

        // 1. Node 1, the first address, is in use.
        var ids = try await append(0..<100)
        #expect(await waitDelivered(100), "relay log: \(SecureEnv.read(log))")
        #expect(try await admins[0].declareQueue(queue) == 100, "node 1 got the first 100")
        #expect(try await admins[1].declareQueue(queue) == 0)
        let connections = try await SecureEnv.nodes.run(["rabbitmqctl", "-q", "list_connections", "timeout"], node: 1).output
        #expect(connections.split(separator: "\n").contains("5"), "the relay's connection negotiated the URL's heartbeat=5: \(connections)")

        // 2. Events keep coming while node 1 is killed.
        let more = Task { () -> [String] in
            var written: [String] = []
            for start in stride(from: 100, to: 300, by: 20) {
                written += try await append(start..<(start + 20))
                try await Task.sleep(for: .milliseconds(100))
            }
            return written
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(try await SecureEnv.nodes.run(["kill-rabbit"], node: 1).status == 0)
        ids += try await more.value
        #expect(await waitDelivered(300), "every event is delivered through node 2; relay log: \(SecureEnv.read(log).suffix(3000))")
        let parked = try await pool.withConnection { try $0.collection("outbox").countDocuments(["status": "parked"]) }
        #expect(parked == 0)
        let relayLog = SecureEnv.read(log)
        #expect(
            relayLog.contains("AMQP connection open") && relayLog.contains(":\(SecureEnv.nodes.port(node: 2))/"),
            "the relay moved to node 2: \(relayLog.suffix(3000))")
        kill(relay, SIGTERM)
        #expect(wait(pid: relay) == 0, "SIGTERM ends the relay cleanly")
        relayStopped = true

        // 3. Every event is on one node or the other: node 2 now, node 1 once it is back (durable
        //    queue, persistent messages: what node 1 confirmed survived the kill).
        var received = try await admins[1].drain(queue).compactMap(\.messageId)
        let onNode2 = received.count
        #expect(try await SecureEnv.nodes.run(["start-rabbit"], node: 1).status == 0)
        var fromNode1: [String] = []
        for _ in 0..<50 {
            do {
                fromNode1 = try await admins[0].drain(queue).compactMap(\.messageId)
                break
            } catch {
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        received += fromNode1
        let missing = Set(ids).subtracting(received)
        #expect(ids.count == 300 && missing.isEmpty, "lost: \(missing.prefix(5).sorted())")
        print("failover: 300 events, node 1 \(fromNode1.count) messages, node 2 \(onNode2), duplicates \(received.count - Set(received).count)")

        for admin in admins {
            try? await admin.deleteQueue(queue)
            try? await admin.deleteExchange(exchange)
            await admin.close()
        }
        _ = try? await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
    }
}
