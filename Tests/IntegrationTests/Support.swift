import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

/// The real servers the integration tests use, from `MONGODB_URI` and `AMQP_URL` (as `ops/test`
/// sets them). When `OUTBOX_REQUIRE_SERVERS=1` the servers were promised, and their absence fails.
enum Servers {
    static let environment = ProcessInfo.processInfo.environment
    static let mongoURI = environment["MONGODB_URI"] ?? ""
    static let amqpURL = environment["AMQP_URL"] ?? ""
    static let required = environment["OUTBOX_REQUIRE_SERVERS"] == "1"
    static let configured = !mongoURI.isEmpty && !amqpURL.isEmpty
    /// Integration suites run when the servers are configured, and must run when they were promised.
    static let enabled = configured || required

    static var amqp: AMQPConfiguration {
        get throws { AMQPConfiguration(endpoint: try AMQPEndpoint(url: amqpURL), connectTimeout: .seconds(3)) }
    }

    static let logger: Logger = {
        var logger = Logger(label: "integration")
        logger.logLevel = environment["TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .critical
        return logger
    }()
}

@Suite("Integration prerequisites")
struct PrerequisiteTests {
    @Test("servers are configured when the test command promised them")
    func promised() {
        if Servers.required {
            #expect(Servers.configured, "OUTBOX_REQUIRE_SERVERS=1 but MONGODB_URI or AMQP_URL is empty; run ops/test")
        }
    }
}

/// A database, exchange and queues of a test's own, removed afterwards.
final class Fixture: Sendable {
    let database: String
    let exchange: String
    let pool: MongoClientPool
    let admin: AMQPAdmin
    let amqp: AMQPConfiguration
    let logger = Servers.logger
    private let queues = LockedArray<String>()

    init() throws {
        #expect(Servers.configured, "MONGODB_URI and AMQP_URL must be set (ops/test sets them)")
        let suffix = UUID().uuidString.prefix(8).lowercased()
        database = "it_\(suffix)"
        exchange = "it.\(suffix)"
        pool = try MongoClientPool(MongoConfiguration(uri: Servers.mongoURI, database: database, threads: 4, appName: "integration-tests"))
        amqp = try Servers.amqp
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

    func cleanup() async {
        for queue in queues.values { try? await admin.deleteQueue(queue) }
        try? await admin.deleteExchange(exchange)
        await admin.close()
        _ = try? await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
    }

    /// A queue of this test bound to the test exchange.
    func queue(_ name: String, bindings: [String] = ["#"], arguments: [String: AMQPArgument] = [:]) async throws -> String {
        let full = "\(exchange).\(name)"
        queues.append(full)
        try await admin.declareQueue(full, arguments: arguments)
        for key in bindings { try await admin.bindQueue(full, exchange: exchange, routingKey: key) }
        return full
    }

    /// Remembers a queue created elsewhere (e.g. by a consumer) for removal.
    func track(queue: String) { queues.append(queue) }

    func count(_ collection: String, _ filter: Document = [:]) async throws -> Int {
        try await pool.withConnection { try $0.collection(collection).countDocuments(filter) }
    }

    func find(_ collection: String, _ filter: Document = [:], sort: Document = ["_id": 1]) async throws -> [Document] {
        try await pool.withConnection { try $0.collection(collection).find(filter, options: ["sort": .document(sort)]) }
    }

    /// Appends events to the outbox, each in a transaction of its own.
    @discardableResult
    func appendEvents(_ events: [NewEvent]) async throws -> [String] {
        try await pool.withTransaction { try OutboxWriter().append(events, using: $0) }
    }

    func event(aggregate: String, version: Int = 1, type: String = "OrderCreated", data: Document = ["n": 1]) -> NewEvent {
        NewEvent(type: type, aggregateType: "Order", aggregateId: aggregate, aggregateVersion: version, data: data, exchange: exchange)
    }

    func makeStore(owner: String = "test-relay") -> MongoOutboxStore { MongoOutboxStore(pool: pool, owner: owner, logger: logger) }

    /// A second pool on the fixture's database that records every command sent through it (name
    /// and body), for tests of what the relay asks the store.
    func observedPool() throws -> (pool: MongoClientPool, commands: LockedArray<(name: String, command: Document)>) {
        let commands = LockedArray<(name: String, command: Document)>()
        let pool = try MongoClientPool(
            MongoConfiguration(uri: Servers.mongoURI, database: database, threads: 2, appName: "integration-observed") { commands.append(($0, $1)) })
        return (pool, commands)
    }

    /// A lease manager for `owner` that has taken its share of the partitions. Nothing renews
    /// them, so the default lease outlives any test, also on a slow machine.
    func makeLeases(owner: String = "test-relay", ttl: Duration = .seconds(600)) async throws -> LeaseManager {
        let store = MongoLeaseStore(pool: pool)
        try await store.ensurePartitions()
        let leases = LeaseManager(store: store, configuration: .init(owner: owner, ttl: ttl), logger: logger)
        try await leases.tick()
        return leases
    }

    func makePublisher(_ options: ConfirmPublisher.Options = .init(confirmTimeout: .seconds(5))) -> ConfirmPublisher {
        ConfirmPublisher(configuration: amqp, options: options, logger: logger)
    }

    func makeRelay(
        store: MongoOutboxStore, publisher: any ConfirmingPublisher, retry: RetryPolicy = .init(maxAttempts: 3, baseDelay: .zero),
        leases: LeaseManager? = nil
    ) async throws -> Relay {
        let held: LeaseManager
        if let leases { held = leases } else { held = try await makeLeases() }
        return Relay(store: store, publisher: publisher, leases: held, configuration: .init(batchSize: 200, retryPolicy: retry), logger: logger)
    }

    /// Runs relay passes until one finds nothing due (bounded).
    func drain(_ relay: Relay, maxPasses: Int = 200) async throws {
        for _ in 0..<maxPasses where try await relay.runOnce().fetched > 0 {}
    }
}

/// A small lock-protected array for test bookkeeping.
final class LockedArray<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [T] = []
    func append(_ value: T) { lock.withLock { storage.append(value) } }
    var values: [T] { lock.withLock { storage } }
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

/// Where the executables the tests run are: the product's beside the test bundle (or in
/// OUTBOX_BIN_DIR), the reference application's in the examples package's build folder (or in
/// OUTBOX_EXAMPLES_BIN_DIR; ops/test sets both).
enum Executables {
    static let examples: Set<String> = ["order-service", "inventory-consumer", "notification-consumer", "outbox-demo"]
    static let productDirectory =
        Servers.environment["OUTBOX_BIN_DIR"] ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
    static let examplesDirectory =
        Servers.environment["OUTBOX_EXAMPLES_BIN_DIR"] ?? Programs.root.appendingPathComponent("Examples/.build/debug").path

    static func path(_ name: String) -> String {
        URL(fileURLWithPath: examples.contains(name) ? examplesDirectory : productDirectory).appendingPathComponent(name).path
    }
}

/// Runs programs the way a user would, from the tests: the project's executables (built next to
/// the test bundle), and foreign clients (Python in the project's virtual environment, Node.js).
enum Programs {
    /// The repository's root.
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let python = root.appendingPathComponent(".venv/bin/python").path
    /// Debian's `node-mongodb` installs the driver here (ops/setup).
    static let nodePath = "/usr/share/nodejs"

    struct Result {
        var status: Int32
        /// Standard output.
        var output: String
        /// Standard error.
        var errors: String
    }

    /// Runs `executable` to its end with exactly `environment`; bounded by `timeout` (then SIGTERM,
    /// and SIGKILL five seconds later). It waits with `Task.sleep`, never blocking a thread of the
    /// shared pool that other tests run on. Spawned with `posix_spawn` and reaped by its own pid,
    /// as `Program` does, never through Foundation's `Process`: its monitor of children reaped
    /// other children of the test process (a `Program`'s, which then waited in vain) and missed
    /// the end of one of its own, leaving a test waiting for ever.
    static func run(
        _ executable: String, _ arguments: [String], environment: [String: String], timeout: Duration = .seconds(120)
    ) async throws -> Result {
        let directory = FileManager.default.temporaryDirectory
        let out = directory.appendingPathComponent("program-\(UUID().uuidString).out")
        let err = directory.appendingPathComponent("program-\(UUID().uuidString).err")
        defer {
            try? FileManager.default.removeItem(at: out)
            try? FileManager.default.removeItem(at: err)
        }
        let pid = try Program.spawn(executable, arguments, environment: environment, output: out.path, errors: err.path)
        let deadline = ContinuousClock.now + timeout
        var killAt: ContinuousClock.Instant?
        var status: Int32?
        while status == nil {
            var raw: Int32 = 0
            let reaped = waitpid(pid, &raw, WNOHANG)
            if reaped == pid {
                status = Program.exitStatus(raw)
            } else if reaped == -1 && errno != EINTR {
                status = -1  // not ours to wait for any more: nothing left to wait for
            } else {
                let now = ContinuousClock.now
                if let at = killAt {
                    if now >= at { kill(pid, SIGKILL) }
                } else if now >= deadline {
                    kill(pid, SIGTERM)
                    killAt = now + .seconds(5)
                }
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        return Result(
            status: status ?? -1, output: (try? String(contentsOf: out, encoding: .utf8)) ?? "",
            errors: (try? String(contentsOf: err, encoding: .utf8)) ?? "")
    }

    /// Runs one of the package's executables.
    static func product(_ name: String, _ arguments: [String], environment: [String: String], timeout: Duration = .seconds(120)) async throws
        -> Result
    {
        try await run(Executables.path(name), arguments, environment: environment, timeout: timeout)
    }

    /// The environment of a program that talks to the fixture's database and broker.
    static func environment(_ f: Fixture, _ extra: [String: String] = [:]) -> [String: String] {
        var environment = ["MONGODB_URI": Servers.mongoURI, "AMQP_URL": Servers.amqpURL, "OUTBOX_DATABASE": f.database, "PATH": "/usr/bin:/bin"]
        environment.merge(extra) { $1 }
        return environment
    }
}
