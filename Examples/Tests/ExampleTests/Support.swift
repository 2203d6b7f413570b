import Foundation
import Logging
import Synchronization
import Outbox
import OutboxAMQP
import OutboxConsumer
import OutboxMongo
import Testing

/// The real servers, from `MONGODB_URI` and `AMQP_URL` (as `ops/test` sets them). When
/// `OUTBOX_REQUIRE_SERVERS=1` the servers were promised, and their absence fails.
enum Servers {
    static let environment = ProcessInfo.processInfo.environment
    static let mongoURI = environment["MONGODB_URI"] ?? ""
    static let amqpURL = environment["AMQP_URL"] ?? ""
    static let required = environment["OUTBOX_REQUIRE_SERVERS"] == "1"
    static let configured = !mongoURI.isEmpty && !amqpURL.isEmpty
    static let enabled = configured || required

    static let logger: Logger = {
        var logger = Logger(label: "examples")
        logger.logLevel = environment["TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .critical
        return logger
    }()
}

/// A database and exchange of a test's own (and the queues its consumers declare), removed afterwards.
final class Fixture: Sendable {
    let database: String
    let exchange: String
    let pool: MongoClientPool
    let admin: AMQPAdmin
    let amqp: AMQPConfiguration
    let logger = Servers.logger
    private let queues = Mutex<[String]>([])

    init() throws {
        #expect(Servers.configured, "MONGODB_URI and AMQP_URL must be set (ops/test sets them)")
        let suffix = UUID().uuidString.prefix(8).lowercased()
        database = "ex_\(suffix)"
        exchange = "ex.\(suffix)"
        pool = try MongoClientPool(MongoConfiguration(uri: Servers.mongoURI, database: database, threads: 4, appName: "example-tests"))
        amqp = AMQPConfiguration(endpoint: try AMQPEndpoint(url: Servers.amqpURL), connectTimeout: .seconds(3))
        admin = AMQPAdmin(configuration: amqp, logger: logger)
    }

    /// Runs `body` with a fresh fixture and removes what it created, also when `body` throws.
    static func with<R>(_ body: (Fixture) async throws -> R) async throws -> R {
        let fixture = try Fixture()
        try await fixture.admin.declareExchange(fixture.exchange)
        do {
            let result = try await body(fixture)
            await fixture.cleanup()
            return result
        } catch {
            await fixture.cleanup()
            throw error
        }
    }

    private func cleanup() async {
        for queue in queues.withLock({ $0 }) { try? await admin.deleteQueue(queue) }
        try? await admin.deleteExchange(exchange)
        await admin.close()
        _ = try? await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
    }

    /// A queue of this test bound to the test exchange.
    func queue(_ name: String, bindings: [String]) async throws -> String {
        let full = "\(exchange).\(name)"
        track(queue: full)
        try await admin.declareQueue(full)
        for key in bindings { try await admin.bindQueue(full, exchange: exchange, routingKey: key) }
        return full
    }

    /// Remembers a queue created elsewhere (by a consumer) for removal.
    func track(queue: String) { queues.withLock { $0.append(queue) } }

    func count(_ collection: String, _ filter: Document = [:]) async throws -> Int {
        try await pool.withConnection { try $0.collection(collection).countDocuments(filter) }
    }

    func find(_ collection: String, _ filter: Document = [:]) async throws -> [Document] {
        try await pool.withConnection { try $0.collection(collection).find(filter, options: ["sort": ["_id": 1]]) }
    }

    /// A consumer of the test exchange's `order.created` messages, on a queue of this test.
    func consumer(_ name: String, handler: any InboxHandler) -> InboxConsumer {
        let topology = ConsumerTopology(exchange: exchange, queue: "\(exchange).\(name)", bindings: ["order.created"])
        track(queue: topology.queue)
        track(queue: topology.deadLetterQueue)
        return InboxConsumer(
            configuration: .init(name: name, topology: topology, maxAttempts: 2, retryDelay: .milliseconds(10)),
            pool: pool, amqp: amqp, handler: handler, logger: logger)
    }

    func makePublisher() -> ConfirmPublisher {
        ConfirmPublisher(configuration: amqp, options: .init(confirmTimeout: .seconds(5)), logger: logger)
    }

    /// Runs a relay of the product's library on this database, holding every partition (as one
    /// `outbox-relay` would), until `count` events are delivered; false if they never are.
    func relay(until count: Int) async throws -> Bool {
        let leaseStore = MongoLeaseStore(pool: pool)
        try await leaseStore.ensurePartitions()
        let leases = LeaseManager(store: leaseStore, configuration: .init(owner: "example-tests", ttl: .seconds(600)), logger: logger)
        try await leases.tick()
        let publisher = makePublisher()
        let relay = Relay(
            store: MongoOutboxStore(pool: pool, owner: "example-tests", logger: logger), publisher: publisher, leases: leases,
            configuration: .init(batchSize: 200, retryPolicy: .init(maxAttempts: 3, baseDelay: .zero)), logger: logger)
        let delivered = await eventually {
            _ = try? await relay.runOnce()
            return (try? await self.count("outbox", ["status": "delivered"])) == count
        }
        await publisher.close()
        return delivered
    }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
func eventually(timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return try await condition()
}
