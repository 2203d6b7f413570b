import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

#if canImport(Glibc)
    import Glibc
#endif
#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// A TCP port on 127.0.0.1 that nothing listens on right now.
func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// GET http://127.0.0.1:port/path; nil when nothing answers.
func get(port: Int, _ path: String) async -> (status: Int, body: String)? {
    var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)\(path)")!)
    request.timeoutInterval = 2
    guard let (data, response) = try? await URLSession.shared.data(for: request) else { return nil }
    return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
}

/// Parses Prometheus text into "name{labels}" → value (labels as written).
/// Prometheus text as `series → value`. A relay of these tests serves one outbox, so the `source`
/// label is left out of the keys: `outbox_parked_events`, `outbox_publishes_total{result="acked"}`.
func parseMetrics(_ text: String) -> [String: Double] {
    var values: [String: Double] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
        let series = line[..<space].replacing(/source="[^"]*",?/, with: "").replacing(/,\}/, with: "}").replacing("{}", with: "")
        values[String(series)] = value
    }
    return values
}

/// Fault tests kill and restart real relay processes and real servers. They run alone, after the
/// other suites (`ops/test` does that), because stopping a server would break tests running beside them.
enum Env {
    static let environment = ProcessInfo.processInfo.environment
    static let mongoURI = environment["MONGODB_URI"] ?? ""
    static let amqpURL = environment["AMQP_URL"] ?? ""
    static let stackScript = environment["OUTBOX_STACK_SCRIPT"] ?? ""
    static let required = environment["OUTBOX_REQUIRE_SERVERS"] == "1"
    /// Debian's libfaketime (multi-threaded build), which gives a relay a clock of its own.
    static let fakeTime = ["x86_64", "aarch64"].map { "/usr/lib/\($0)-linux-gnu/faketime/libfaketimeMT.so.1" }
        .first { FileManager.default.fileExists(atPath: $0) }
    static let enabled = required || (!mongoURI.isEmpty && !amqpURL.isEmpty && !stackScript.isEmpty)

    /// Where the relay executable is: beside the test bundle, or OUTBOX_BIN_DIR.
    static var binDirectory: URL {
        if let dir = environment["OUTBOX_BIN_DIR"] { return URL(fileURLWithPath: dir) }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    }

    /// Where the consumers are: the examples package's build folder, or OUTBOX_EXAMPLES_BIN_DIR.
    static var examplesDirectory: URL {
        if let dir = environment["OUTBOX_EXAMPLES_BIN_DIR"] { return URL(fileURLWithPath: dir) }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent("Examples/.build/debug")
    }

    static let logger: Logger = {
        var logger = Logger(label: "fault-tests")
        logger.logLevel = .critical
        return logger
    }()
}

/// Starts `arguments` with `environment`, output appended to `log` (or inherited); returns the pid.
/// posix_spawn and waitpid directly: Foundation's Process.waitUntilExit can hang in async code.
func spawn(_ arguments: [String], environment: [String: String], log: String? = nil) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    if let log {
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
    }
    let argv = arguments.map { strdup($0) } + [nil]
    let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        argv.forEach { free($0) }
        envp.forEach { free($0) }
    }
    var pid: pid_t = 0
    let status = posix_spawn(&pid, arguments[0], &actions, nil, argv, envp)
    guard status == 0 else { throw POSIXError(POSIXErrorCode(rawValue: status) ?? .EINVAL) }
    return pid
}

/// Waits for `pid` to exit; returns its exit status (or 128 + signal).
@discardableResult
func wait(pid: pid_t) -> Int32 {
    var status: Int32 = 0
    while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
    return exitStatus(status)
}

/// Waits for `pid` to exit without holding a thread of the shared pool (starting a RabbitMQ node
/// takes tens of seconds on two cores); returns its exit status (or 128 + signal).
func exited(pid: pid_t) async -> Int32 {
    var status: Int32 = 0
    while true {
        let result = waitpid(pid, &status, WNOHANG)
        if result == pid { return exitStatus(status) }
        if result == -1 && errno != EINTR { return -1 }
        try? await Task.sleep(for: .milliseconds(50))
    }
}

private func exitStatus(_ status: Int32) -> Int32 {
    let signal = status & 0x7f
    return signal == 0 ? (status >> 8) & 0xff : 128 + signal
}

/// Runs `ops/stack ACTION` for the test stack (stop-rabbit, start-mongo, ...).
func stack(_ action: String) throws {
    let pid = try spawn(["/bin/bash", Env.stackScript, action], environment: Env.environment)
    let status = wait(pid: pid)
    #expect(status == 0, "ops/stack \(action) failed with status \(status)")
}

/// A stack `ops/test` starts beside the test stack (the secure one, the cluster), named and in its
/// folder; `ops/stack` runs against one of its RabbitMQ nodes.
struct SideStack: Sendable {
    let name: String
    let directory: String

    /// The AMQP port of node `node` (1, 2, ...).
    func port(node: Int) -> Int {
        let text = (try? String(contentsOfFile: "\(directory)/\(node == 1 ? "rabbit" : "rabbit\(node)")/port", encoding: .utf8)) ?? ""
        return Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }

    /// Runs `ops/stack ARGS` for one node; returns its exit status and what it printed.
    func run(_ arguments: [String], node: Int) async throws -> (status: Int32, output: String) {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("stack-\(UUID().uuidString).txt").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        var environment = Env.environment
        environment["STACK_NAME"] = name
        environment["STACK_DIR"] = directory
        environment["RABBIT_NODE"] = "\(node)"
        let status = await exited(pid: try spawn(["/bin/bash", Env.stackScript] + arguments, environment: environment, log: file))
        return (status, (try? String(contentsOfFile: file, encoding: .utf8)) ?? "")
    }
}

/// The broker ports of a program's "AMQP connection open" log lines, in order.
func connectionPorts(_ log: Substring) -> [Int] {
    log.split(separator: "\n").filter { $0.contains("AMQP connection open") }.compactMap { line in
        guard let host = line.range(of: "@127.0.0.1:") else { return nil }
        return Int(line[host.upperBound...].prefix(while: \.isNumber))
    }
}

/// A real `outbox-relay` process.
final class RelayProcess: @unchecked Sendable {
    let pid: pid_t
    /// Where its standard output and error go.
    let logPath: String
    private var exited = false

    init(
        database: String, name: String, logDirectory: URL, executable: String = "outbox-relay", arguments: [String] = [],
        extra: [String: String] = [:]
    ) throws {
        var environment = Env.environment
        environment["OUTBOX_DATABASE"] = database
        environment["RELAY_LEASE_TTL"] = "3s"
        environment["RELAY_BATCH_SIZE"] = "200"
        environment["RELAY_POLL_INTERVAL"] = "50ms"
        environment["RELAY_RETRY_BASE_DELAY"] = "50ms"
        environment["RELAY_RETRY_MAX_DELAY"] = "1s"
        environment["RELAY_MAX_ATTEMPTS"] = "1000"
        environment["RELAY_CONFIRM_TIMEOUT"] = "3s"
        environment["LOG_LEVEL"] = "info"
        environment["RELAY_HTTP_ADDRESS"] = environment["RELAY_HTTP_ADDRESS"] ?? "127.0.0.1:0"
        environment["CONSUMER_HTTP_ADDRESS"] = environment["CONSUMER_HTTP_ADDRESS"] ?? "127.0.0.1:0"
        environment.merge(extra) { $1 }
        logPath = logDirectory.appendingPathComponent("\(name).log").path
        let directory = executable.hasSuffix("-consumer") ? Env.examplesDirectory : Env.binDirectory
        pid = try spawn([directory.appendingPathComponent(executable).path] + arguments, environment: environment, log: logPath)
    }

    /// What it logged so far.
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// SIGKILL: no shutdown, no lease release, confirms outstanding.
    func kill() {
        guard !exited else { return }
        Glibc.kill(pid, SIGKILL)
        wait(pid: pid)
        exited = true
    }

    /// Its peak resident memory in KiB, once `exit(within:)` saw it exit.
    private(set) var peakRSSKiB: Int?

    /// Waits up to `timeout` for the process to exit by itself (e.g. `--exit-when-idle`); returns
    /// its exit status, or nil while it still runs.
    func exit(within timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        var status: Int32 = 0
        var usage = rusage()
        while ContinuousClock.now < deadline {
            if wait4(pid, &status, WNOHANG, &usage) == pid {
                exited = true
                peakRSSKiB = usage.ru_maxrss
                return exitStatus(status)
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return nil
    }

    /// SIGTERM: the graceful path; returns the exit status.
    @discardableResult
    func stop() -> Int32 {
        guard !exited else { return 0 }
        Glibc.kill(pid, SIGTERM)
        exited = true
        return wait(pid: pid)
    }
}

/// A database, exchange and queue of one fault test, and the relays and consumers it starts.
final class FaultFixture: @unchecked Sendable {
    let database = "fault_\(UUID().uuidString.prefix(8).lowercased())"
    lazy var exchange = "fault.\(database)"
    lazy var queue = "\(exchange).all"
    /// The consumers a test may start: each executable is `<kind>-consumer`, its queue `<exchange>.<kind>`.
    static let consumerKinds = ["inventory", "notification"]
    let pool: MongoClientPool
    let admin: AMQPAdmin
    /// The broker the relays, consumers and `admin` use: the test stack's unless given.
    let amqpURL: String
    let logs: URL
    var relays: [RelayProcess] = []

    init(amqpURL: String = Env.amqpURL) throws {
        #expect(Env.enabled, "MONGODB_URI, AMQP_URL and OUTBOX_STACK_SCRIPT must be set (ops/test sets them)")
        self.amqpURL = amqpURL
        pool = try MongoClientPool(MongoConfiguration(uri: Env.mongoURI, database: database, appName: "fault-tests"))
        admin = AMQPAdmin(configuration: AMQPConfiguration(endpoint: try AMQPEndpoint(url: amqpURL)), logger: Env.logger)
        logs = FileManager.default.temporaryDirectory.appendingPathComponent(database)
        try FileManager.default.createDirectory(at: logs, withIntermediateDirectories: true)
    }

    /// Declares the exchange and the queue that records every message (`arguments` e.g. its type).
    func prepare(queueArguments: [String: AMQPArgument] = [:]) async throws {
        try await admin.declareExchange(exchange)
        try await admin.declareQueue(queue, arguments: queueArguments)
        try await admin.bindQueue(queue, exchange: exchange, routingKey: "#")
    }

    /// Starts an `inventory-consumer` (or another of `consumerKinds`) on the fixture's exchange;
    /// the inventory consumer's follow-up events go to that exchange too.
    func startConsumer(_ name: String, kind: String = "inventory", extra: [String: String] = [:]) throws -> RelayProcess {
        let consumer = try RelayProcess(
            database: database, name: name, logDirectory: logs, executable: "\(kind)-consumer",
            extra: ["AMQP_URL": amqpURL, "CONSUMER_EXCHANGE": exchange, "CONSUMER_QUEUE": "\(exchange).\(kind)", "INVENTORY_EXCHANGE": exchange]
                .merging(extra) { $1 })
        relays.append(consumer)
        return consumer
    }

    func startRelay(_ name: String, arguments: [String] = [], extra: [String: String] = [:]) throws -> RelayProcess {
        let relay = try RelayProcess(
            database: database, name: name, logDirectory: logs, arguments: arguments, extra: ["AMQP_URL": amqpURL].merging(extra) { $1 })
        relays.append(relay)
        return relay
    }

    /// Inserts `count` pending events over `aggregates` aggregates (versions in order), the data of
    /// each made by `data` from its index; returns their ids.
    func appendEvents(
        _ count: Int, aggregates: Int, prefix: String = "agg", data: (Int) -> Document = { ["index": .int64(Int64($0))] }
    ) async throws -> [String] {
        let writer = OutboxWriter()
        var ids: [String] = []
        var version: [Int: Int] = [:]
        for chunk in stride(from: 0, to: count, by: 1000) {
            let documents: [Document] = (chunk..<min(chunk + 1000, count)).map { index in
                let aggregate = index % aggregates
                version[aggregate, default: 0] += 1
                return writer.document(
                    for: NewEvent(
                        type: "OrderCreated", aggregateType: "Order", aggregateId: "\(prefix)-\(aggregate)",
                        aggregateVersion: version[aggregate]!, data: data(index), exchange: exchange))
            }
            ids += documents.compactMap { $0["_id"]?.stringValue }
            try await pool.withConnection { try $0.collection("outbox").insertMany(documents) }
        }
        return ids
    }

    /// Inserts `count` documents as a service in any language writes them (no relay fields; ids
    /// alternately ObjectIds and strings), `perAggregate` events per aggregate in timestamp order,
    /// each with the fields `extra` gives it; returns their message ids.
    func appendMinimal(_ count: Int, perAggregate: Int, extra: (Int) -> Document = { _ in [:] }) async throws -> [String] {
        var ids: [String] = []
        let start = Int64(Date().timeIntervalSince1970 * 1000) - Int64(count)
        for chunk in stride(from: 0, to: count, by: 1000) {
            let documents: [Document] = (chunk..<min(chunk + 1000, count)).map { index in
                let id: BSON = index % 2 == 0 ? .objectId(ObjectId()) : .string("event-\(index)")
                return
                    ([
                        "_id": id, "type": "OrderCreated", "aggregateId": .string("min-\(index / perAggregate)"),
                        "data": ["index": .int64(Int64(index))], "timestamp": .datetime(start + Int64(index)),
                    ] as Document).merging(extra(index))
            }
            ids += documents.compactMap { $0["_id"].flatMap(OutboxDocument.messageId(of:)) }
            try await pool.withConnection { try $0.collection("outbox").insertMany(documents) }
        }
        return ids
    }

    /// The data of OrderCreated number `i`: order `order-i`, one item of SKU-A.
    func orderData(_ i: Int) -> Document {
        [
            "orderId": .string("order-\(i)"), "customerId": "c", "totalAmount": "1.00",
            "items": [["sku": "SKU-A", "quantity": .int64(1), "unitPrice": "1.00"]],
        ]
    }

    /// `count` OrderCreated messages of one item of SKU-A each, as the relay would publish them.
    func orderCreatedMessages(_ count: Int) -> [OutboxMessage] {
        (0..<count).map { i in
            let envelope: Document = ["id": .string("evt-\(i)"), "type": "OrderCreated", "data": .document(orderData(i))]
            return OutboxMessage(
                id: "evt-\(i)", type: "OrderCreated", aggregateType: "Order", aggregateId: "order-\(i)", aggregateVersion: 1,
                exchange: exchange, routingKey: "order.created", occurredAt: 0, body: ExtendedJSON.renderBytes(envelope))
        }
    }

    /// The stock of SKU-A before a consumer test; `expectAppliedOnce` checks against it.
    static let initialStock: Int64 = 1_000_000

    /// Stocks SKU-A with `initialStock` units, so no order of `orderCreatedMessages` fails for lack of stock.
    func seedStock() async throws {
        try await pool.withConnection {
            try $0.collection("stock").insertOne(["_id": "SKU-A", "available": .int64(Self.initialStock), "reserved": .int64(0)])
        }
    }

    /// Checks that the inventory consumer applied each of `orders` orders of
    /// `orderCreatedMessages` exactly once: stock (`seedStock`) down by one per order, one inbox
    /// entry and one `InventoryReserved` each.
    func expectAppliedOnce(_ orders: Int) async throws {
        let stock = try await pool.withConnection { try $0.collection("stock").findOne(["_id": "SKU-A"]) }
        #expect(stock?["available"]?.intValue == Int(Self.initialStock) - orders, "each order decremented stock exactly once")
        #expect(try await pool.withConnection { try $0.collection("inbox").countDocuments() } == orders)
        #expect(try await pool.withConnection { try $0.collection("outbox").countDocuments(["type": "InventoryReserved"]) } == orders)
    }

    func count(_ filter: Document) async -> Int? {
        try? await pool.withConnection { try $0.collection("outbox").countDocuments(filter) }
    }

    /// Waits until `total` events are delivered; false on timeout. It counts what is left (pending
    /// or unseen), which shrinks as the relays work: a count reads every document it counts, and
    /// the relays share the store with it, so it waits nine times as long as the last look took
    /// (at least a second) and takes at most a tenth of the store's time.
    func waitUntilDelivered(_ total: Int, timeout: Duration = .seconds(240)) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let started = ContinuousClock.now
            if let pending = await count(["status": "pending"]), let unseen = await count(["status": .null]), pending + unseen == 0 {
                if await count(["status": "delivered"]) == total { return true }
            }
            try? await Task.sleep(for: max(.seconds(1), (ContinuousClock.now - started) * 9))
        }
        return false
    }

    /// Every message in the queue (reconnecting as needed), as message ids.
    func receivedIds() async throws -> [String] {
        var ids: [String] = []
        var failures = 0
        while true {
            do {
                guard let delivery = try await admin.get(queue) else { return ids }
                ids.append(delivery.messageId ?? "")
            } catch {
                failures += 1
                if failures > 50 { throw error }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    func cleanup() async {
        for relay in relays { relay.stop() }
        if ProcessInfo.processInfo.environment["KEEP_FAULT_DATA"] == "1" { return }
        for kind in Self.consumerKinds {
            for extra in ["\(exchange).\(kind)", "\(exchange).\(kind).dlq"] { try? await admin.deleteQueue(extra) }
            try? await admin.deleteExchange("\(exchange).\(kind).dlx")
        }
        try? await admin.deleteQueue(queue)
        try? await admin.deleteExchange(exchange)
        await admin.close()
        _ = try? await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
    }

    /// Kills one of `relays`, chosen at random, `kills` times, each after a pause of `pause`
    /// milliseconds, and puts `restart(victim, kill)` in its place; returns how many kills landed
    /// while events were still pending or unseen.
    func killInTurns(
        _ relays: inout [RelayProcess], kills: Int, pause: ClosedRange<Int>, restart: (Int, Int) throws -> RelayProcess
    ) async throws -> Int {
        var landed = 0
        for kill in 1...kills {
            try await Task.sleep(for: .milliseconds(Int.random(in: pause)))
            let victim = Int.random(in: relays.indices)
            relays[victim].kill()
            if let open = await count(OutboxSchema.notFinal), open > 0 { landed += 1 }
            relays[victim] = try restart(victim, kill)
        }
        return landed
    }

    /// I5: how often the first arrival of an event did not follow the first arrival of the one
    /// before it in its aggregate (`position`: each id's aggregate and place in it, from 1), with
    /// a few examples and the aggregate's documents.
    func outOfOrder(_ received: [String], position: [String: (aggregate: String, version: Int)]) async -> (count: Int, examples: [String]) {
        var seen = Set<String>()
        var last: [String: Int] = [:]
        var count = 0
        var examples: [String] = []
        for id in received where seen.insert(id).inserted {
            guard let (aggregate, version) = position[id] else { continue }
            if version != (last[aggregate] ?? 0) + 1 {
                count += 1
                if examples.count < 3 {
                    let events =
                        (try? await pool.withConnection {
                            try $0.collection("outbox").find(["aggregateId": .string(aggregate)], options: ["projection": ["data": 0]])
                        }) ?? []
                    examples.append("aggregate \(aggregate): \(version) after \(last[aggregate] ?? 0); \(events)")
                }
            }
            last[aggregate] = version
        }
        return (count, examples)
    }

    /// Checks that every id arrived at least once and reports the duplicates.
    /// Every event reached the broker; with `maxDuplicates`, no more than that were published twice.
    func checkReceived(_ ids: [String], test: String, maxDuplicates: Int? = nil) async throws {
        let received = try await receivedIds()
        let unique = Set(received)
        let missing = Set(ids).subtracting(unique)
        #expect(missing.count == 0, "events never reached the broker, e.g. \(missing.prefix(5).sorted())")
        #expect(unique.isSubset(of: Set(ids)))
        print("\(test): \(ids.count) events, \(received.count) messages received, \(received.count - unique.count) duplicate publishes")
        if let maxDuplicates {
            var seen = Set<String>()
            let twice = received.filter { !seen.insert($0).inserted }
            #expect(received.count - unique.count <= maxDuplicates, "\(test): duplicate publishes, e.g. \(twice.prefix(5).sorted())")
        }
    }
}

@Suite("Faults: killed relays, restarted servers, several relays (I2, I6)", .serialized, .enabled(if: Env.enabled), .timeLimit(.minutes(10)))
struct FaultTests {
    @Test("SIGKILL of the relay at random points, 5 times during 5,000 events: every event delivered")
    func killedRelays() async throws {
        let f = try FaultFixture()
        try await f.prepare()
        let ids = try await f.appendEvents(5000, aggregates: 2500)
        var relay = try f.startRelay("relay-0")
        var killsDuringRun = 0
        for kill in 1...5 {
            try await Task.sleep(for: .milliseconds(Int.random(in: 300...1200)))
            relay.kill()
            if let pending = await f.count(["status": "pending"]), pending > 0 { killsDuringRun += 1 }
            relay = try f.startRelay("relay-\(kill)")
        }
        #expect(killsDuringRun == 5, "every kill must land while events were still pending")
        #expect(await f.waitUntilDelivered(ids.count))
        #expect(relay.stop() == 0, "SIGTERM ends the relay cleanly")
        try await f.checkReceived(ids, test: "kill -9 ×5")
        #expect(await f.count(["status": "parked"]) == 0)
        await f.cleanup()
    }

    @Test("SIGKILL of two relays while they adopt documents written without relay fields: every event delivered")
    func killedWhileAdopting() async throws {
        let f = try FaultFixture()
        try await f.prepare()
        let ids = try await f.appendMinimal(4000, perAggregate: 2)
        let exchange = ["RELAY_EXCHANGE": f.exchange]
        var relays = [try f.startRelay("relay-a0", extra: exchange), try f.startRelay("relay-b0", extra: exchange)]
        let killsDuringRun = try await f.killInTurns(&relays, kills: 5, pause: 300...1200) { victim, kill in
            try f.startRelay("relay-\(victim == 0 ? "a" : "b")\(kill)", extra: exchange)
        }
        #expect(killsDuringRun == 5, "every kill must land while events were still pending or unseen")
        #expect(await f.waitUntilDelivered(ids.count))
        for relay in relays { #expect(relay.stop() == 0) }
        try await f.checkReceived(ids, test: "kill -9 ×5 while adopting")
        #expect(await f.count(["status": "parked"]) == 0)
        #expect(await f.count(OutboxSchema.notFinal) == 0)
        await f.cleanup()
    }

    @Test("RabbitMQ stopped and started mid-run: nothing lost, the relay recovers by itself")
    func brokerRestart() async throws {
        let f = try FaultFixture()
        try await f.prepare()
        let port = freePort()
        let relay = try f.startRelay("relay", extra: ["RELAY_HTTP_ADDRESS": "127.0.0.1:\(port)"])
        let ids = try await f.appendEvents(3000, aggregates: 3000)
        while (await f.count(["status": "delivered"]) ?? 0) < 200 { try await Task.sleep(for: .milliseconds(20)) }
        #expect(await get(port: port, "/health/ready")?.status == 200, "ready while both connections are up")
        try stack("stop-rabbit")
        let pendingWhileDown = await f.count(["status": "pending"]) ?? 0
        var notReadyWhileDown = false
        for _ in 0..<40 where !notReadyWhileDown {
            notReadyWhileDown = await get(port: port, "/health/ready")?.status == 503
            try await Task.sleep(for: .milliseconds(250))
        }
        #expect(notReadyWhileDown, "/health/ready turns false while the broker is down")
        #expect(await get(port: port, "/health/live")?.status == 200)
        try stack("start-rabbit")
        #expect(pendingWhileDown > 0, "the broker must stop while events are pending")
        #expect(await f.waitUntilDelivered(ids.count))
        var readyAgain = false
        for _ in 0..<40 where !readyAgain {
            readyAgain = await get(port: port, "/health/ready")?.status == 200
            try await Task.sleep(for: .milliseconds(250))
        }
        #expect(readyAgain, "/health/ready turns true again once the broker is back")
        relay.stop()
        try await f.checkReceived(ids, test: "broker restart")
        await f.cleanup()
    }

    @Test("SecantusDB stopped and started mid-run: nothing lost, the relay recovers by itself")
    func databaseRestart() async throws {
        let f = try FaultFixture()
        try await f.prepare()
        let relay = try f.startRelay("relay")
        let ids = try await f.appendEvents(3000, aggregates: 3000)
        while (await f.count(["status": "delivered"]) ?? 0) < 200 { try await Task.sleep(for: .milliseconds(20)) }
        let before = await f.count(["status": "delivered"]) ?? 0
        try stack("stop-mongo")
        try await Task.sleep(for: .seconds(2))
        try stack("start-mongo")
        #expect(before < ids.count, "the database must stop while events are pending")
        #expect(await f.waitUntilDelivered(ids.count))
        relay.stop()
        try await f.checkReceived(ids, test: "database restart")
        await f.cleanup()
    }

    /// Documents written in the status-pending format: half with a partition, attempts and a due
    /// time as older writers added them, half with the status alone.
    static func pendingFormat(_ index: Int) -> Document {
        index % 2 == 0
            ? ["status": "pending"] : ["status": "pending", "attempts": 0, "nextAttemptAt": .datetime(0), "partition": .int32(Int32(index % 16))]
    }

    @Test(
        "a relay draining 20,000 minimal events in batches of 5,000 with a 3 s lease, joined by two more mid-drain: no event published twice",
        arguments: [1, 2])
    func joinMidDrain(round: Int) async throws {
        let f = try FaultFixture()
        try await f.prepare()
        let ids = try await f.appendMinimal(20_000, perAggregate: 4)
        let settings = ["RELAY_BATCH_SIZE": "5000", "RELAY_LEASE_TTL": "3s", "RELAY_EXCHANGE": f.exchange]
        var relays = [try f.startRelay("relay-first", extra: settings)]
        try await Task.sleep(for: .seconds(4))
        relays.append(try f.startRelay("relay-second", extra: settings))
        try await Task.sleep(for: .milliseconds(1500))
        relays.append(try f.startRelay("relay-third", extra: settings))
        // Two thirds of the events go through the adopter's hand-over (a write per event) on one
        // single-threaded store shared by three debug-built relays: about five minutes here.
        #expect(await f.waitUntilDelivered(ids.count, timeout: .seconds(480)))
        for relay in relays { #expect(relay.stop() == 0) }
        try await f.checkReceived(ids, test: "three relays joining a drain (round \(round))", maxDuplicates: 0)
        #expect(await f.count(["status": "parked"]) == 0)
        await f.cleanup()
    }

    @Test("three relays on one outbox, 10,000 events: nothing lost, duplicates counted")
    func threeRelays() async throws {
        let f = try FaultFixture()
        try await f.prepare()
        let ids = try await f.appendEvents(10_000, aggregates: 5000)
        let relays = try (0..<3).map { try f.startRelay("relay-\($0)") }
        // Three debug-built relays share one single-threaded store here: about four minutes.
        #expect(await f.waitUntilDelivered(ids.count, timeout: .seconds(480)))
        // All three took part.
        let owners = try await f.pool.withConnection {
            try $0.collection(MongoLeaseStore.leasesCollection).find().compactMap { $0["owner"]?.stringValue }
        }
        #expect(Set(owners).count == 3, "the partitions are spread over the three relays")
        for relay in relays { relay.stop() }
        try await f.checkReceived(ids, test: "three relays")
        await f.cleanup()
    }

    @Test("an inventory consumer in batches of 32 killed with SIGKILL mid-stream and restarted applies every order once")
    func killedConsumer() async throws {
        let f = try FaultFixture()
        try await f.prepare()
        try await f.seedStock()
        let batches = ["CONSUMER_BATCH_SIZE": "32"]
        var consumer = try f.startConsumer("consumer-0", extra: batches)
        // The consumer declares its queue and bindings when it connects.
        try await Task.sleep(for: .seconds(2))
        let orders = 1000
        let messages = f.orderCreatedMessages(orders)
        let publisher = ConfirmPublisher(configuration: AMQPConfiguration(endpoint: try AMQPEndpoint(url: Env.amqpURL)), logger: Env.logger)
        #expect(await publisher.publish(messages).allSatisfy { $0 == .acked })
        await publisher.close()

        func applied() async -> Int {
            (try? await f.pool.withConnection { try $0.collection("reservations").countDocuments() }) ?? -1
        }
        var killsMidStream = 0
        for kill in 1...3 {
            // Kill at a quarter, half and three quarters of the stream.
            let deadline = ContinuousClock.now + .seconds(120)
            while await applied() < orders * kill / 4 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
            consumer.kill()
            if await applied() < orders { killsMidStream += 1 }
            consumer = try f.startConsumer("consumer-\(kill)", extra: batches)
        }
        #expect(killsMidStream == 3, "every kill must land while messages were still being applied")
        let deadline = ContinuousClock.now + .seconds(180)
        while await applied() < orders && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(250)) }
        consumer.stop()
        #expect(await applied() == orders)
        try await f.expectAppliedOnce(orders)
        print("consumer kill -9 ×3: \(orders) orders applied exactly once")
        await f.cleanup()
    }

    @Test("SecantusDB stopped and started while an inventory consumer applies batches of 32: every order applied once")
    func databaseRestartMidBatch() async throws {
        let f = try FaultFixture()
        try await f.prepare()
        try await f.seedStock()
        let consumer = try f.startConsumer("consumer", extra: ["CONSUMER_BATCH_SIZE": "32"])
        try await Task.sleep(for: .seconds(2))  // the consumer declares its queue and bindings
        let orders = 2000
        let publisher = ConfirmPublisher(configuration: AMQPConfiguration(endpoint: try AMQPEndpoint(url: Env.amqpURL)), logger: Env.logger)
        #expect(await publisher.publish(f.orderCreatedMessages(orders)).allSatisfy { $0 == .acked })
        await publisher.close()
        func applied() async -> Int {
            (try? await f.pool.withConnection { try $0.collection("reservations").countDocuments() }) ?? -1
        }
        var deadline = ContinuousClock.now + .seconds(120)
        while await applied() < 200 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        let before = await applied()
        try stack("stop-mongo")
        try await Task.sleep(for: .seconds(3))
        try stack("start-mongo")
        #expect(before < orders, "the database must stop while orders are still to be applied (\(before) of \(orders) applied)")
        deadline = ContinuousClock.now + .seconds(240)
        while await applied() < orders && ContinuousClock.now < deadline { try await Task.sleep(for: .seconds(1)) }
        consumer.stop()
        #expect(await applied() == orders)
        try await f.expectAppliedOnce(orders)
        #expect(try await f.admin.messageCount("\(f.exchange).inventory") == 0, "every message was acked")
        print("database restart under a batching consumer: \(orders) orders applied exactly once")
        await f.cleanup()
    }

    @Test("metrics scraped as Prometheus text match the database while a backlog builds, is parked and drains")
    func metricsMatchDatabase() async throws {
        let f = try FaultFixture()
        try await f.prepare()
        let port = freePort()
        func metrics() async -> [String: Double] { parseMetrics(await get(port: port, "/metrics")?.body ?? "") }
        func gauge(_ name: String) async -> Int? { await metrics()[name].map { Int($0) } }
        /// Waits until the gauge shows `expected` (sampled every 100 ms by the relay).
        func settles(_ name: String, at expected: Int) async -> Bool {
            for _ in 0..<100 {
                if await gauge(name) == expected { return true }
                try? await Task.sleep(for: .milliseconds(100))
            }
            return false
        }
        // A relay whose broker is unreachable: nothing drains, so the backlog is still.
        let stalled = try f.startRelay(
            "stalled",
            extra: [
                "RELAY_HTTP_ADDRESS": "127.0.0.1:\(port)", "RELAY_METRICS_INTERVAL": "100ms", "AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2f",
            ])
        try await f.pool.withConnection { connection in
            try connection.collection("outbox").insertMany(
                (0..<3).map { i in
                    [
                        "_id": .string(ObjectId().hex), "status": "pending", "partition": .int32(Int32(i)), "nextAttemptAt": .date(Date()),
                        "type": .int32(1), "aggregateId": .string("bad-\(i)"), "aggregateVersion": 1,
                    ]
                })
        }
        _ = try await f.appendEvents(400, aggregates: 400)
        #expect(await settles("outbox_parked_events", at: 3), "malformed documents are parked while the broker is down")
        #expect(await settles("outbox_pending_events", at: await f.count(["status": "pending"]) ?? -1))
        _ = try await f.appendEvents(250, aggregates: 250, prefix: "more")
        let pending = await f.count(["status": "pending"]) ?? -1
        #expect(pending == 650, "the three malformed ones were parked")
        #expect(await settles("outbox_pending_events", at: pending), "the backlog gauge follows the database as it builds")
        #expect(await f.count(["status": "parked"]) == 3)
        let sample = await metrics()
        #expect((sample["outbox_oldest_pending_age_seconds"] ?? -1) >= 0)
        #expect(sample["outbox_partitions_owned"] == 16)
        #expect(sample["outbox_partitions_without_owner"] == 0)
        #expect(sample[#"outbox_connection_up{target="database"}"#] == 1)
        #expect(sample[#"outbox_connection_up{target="broker"}"#] == 0)
        #expect(await get(port: port, "/health/ready")?.status == 503, "not ready without the broker")
        stalled.stop()

        // The same port, a relay with the broker: the backlog drains and the gauges follow.
        let relay = try f.startRelay("draining", extra: ["RELAY_HTTP_ADDRESS": "127.0.0.1:\(port)", "RELAY_METRICS_INTERVAL": "100ms"])
        #expect(await f.waitUntilDelivered(650))
        #expect(await settles("outbox_pending_events", at: 0))
        let after = await metrics()
        #expect(after[#"outbox_publishes_total{result="acked"}"#] == 650)
        #expect(after["outbox_parked_events"] == 3)
        #expect((after["outbox_confirm_duration_seconds_count"] ?? 0) > 0)
        #expect((after["outbox_batch_size_count"] ?? 0) > 0)
        #expect(await get(port: port, "/health/ready")?.status == 200)
        relay.stop()
        await f.cleanup()
    }
}
