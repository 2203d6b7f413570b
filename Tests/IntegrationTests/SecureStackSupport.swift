import Foundation
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

/// The secure stack `ops/test` starts beside the plain one (`STACK_NAME=secure STACK_TLS=1
/// RABBIT_NODES=2 ops/stack start`): SecantusDB with TLS and SCRAM-SHA-256, RabbitMQ nodes with a
/// mutual-TLS listener only. Its settings arrive as `SECURE_*` variables; the passwords are files
/// under its folder.
enum SecureStack {
    static let environment = ProcessInfo.processInfo.environment
    static func setting(_ name: String) -> String { environment["SECURE_\(name)"] ?? "" }

    static let mongoURIFile = setting("MONGODB_URI_FILE")
    static let amqpURLFile = setting("AMQP_URL_FILE")
    static let caFile = setting("AMQP_TLS_CA_FILE")
    static let certFile = setting("AMQP_TLS_CERT_FILE")
    static let keyFile = setting("AMQP_TLS_KEY_FILE")
    static let directory = setting("STACK_DIR")
    static let configured = ![mongoURIFile, amqpURLFile, caFile, certFile, keyFile, directory].contains(where: \.isEmpty)
    /// Runs when the stack is there, and must run (and fail without it) when the test command promised it.
    static let enabled = configured || Servers.required

    static func read(_ path: String) -> String {
        var text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        while text.hasSuffix("\n") { text.removeLast() }
        return text
    }

    static var mongoURI: String { read(mongoURIFile) }
    static var amqpURL: String { read(amqpURLFile) }
    /// A URL that names both RabbitMQ nodes.
    static var amqpURLAllNodes: String { read("\(directory)/secrets/amqp_url_all_nodes") }
    static var otherCAFile: String { "\(directory)/tls/other-ca.pem" }
    static func rabbitPort(node: Int) -> Int { Int(read("\(directory)/\(node == 1 ? "rabbit" : "rabbit\(node)")/port")) ?? 0 }
    static var mongoPort: Int { Int(read("\(directory)/mongo/port")) ?? 0 }

    /// The stack's passwords, as they are and as URLs carry them.
    static var passwords: [String] { [read("\(directory)/secrets/mongodb_password"), read("\(directory)/secrets/amqp_password")] }

    /// What a program of the product needs to reach the secure stack: secret files and TLS files,
    /// none of the plain stack's settings.
    static func programEnvironment(_ extra: [String: String] = [:]) -> [String: String] {
        var result = environment.filter { !$0.key.hasPrefix("SECURE_") }
        for name in ["MONGODB_URI", "AMQP_URL"] { result[name] = nil }
        result["MONGODB_URI_FILE"] = mongoURIFile
        result["AMQP_URL_FILE"] = amqpURLFile
        result["AMQP_TLS_CA_FILE"] = caFile
        result["AMQP_TLS_CERT_FILE"] = certFile
        result["AMQP_TLS_KEY_FILE"] = keyFile
        result["LOG_LEVEL"] = "info"
        result.merge(extra) { $1 }
        return result.filter { !$0.value.isEmpty }
    }

    /// An in-process link to the broker, with the stack's TLS files.
    static func amqp(url: String? = nil) throws -> AMQPConfiguration {
        var endpoint = try AMQPEndpoint(url: url ?? amqpURL)
        endpoint.tls?.caFile = caFile
        endpoint.tls?.certFile = certFile
        endpoint.tls?.keyFile = keyFile
        return AMQPConfiguration(endpoint: endpoint, connectTimeout: .seconds(5))
    }

    static func pool(database: String, observer: (@Sendable (String, Document) -> Void)? = nil) throws -> MongoClientPool {
        try MongoClientPool(MongoConfiguration(uri: mongoURI, database: database, threads: 2, appName: "secure-tests", commandObserver: observer))
    }

    /// Runs `ops/stack ARGS` on the secure stack (e.g. `rabbitmqctl`, `stop-rabbit` with RABBIT_NODE).
    static func stack(_ arguments: [String], node: Int = 1) async throws -> (status: Int32, output: String) {
        let script = environment["OUTBOX_STACK_SCRIPT"] ?? ""
        #expect(!script.isEmpty, "OUTBOX_STACK_SCRIPT must name ops/stack (ops/test sets it)")
        var env = environment
        env["STACK_NAME"] = "secure"
        env["STACK_DIR"] = directory
        env["RABBIT_NODE"] = "\(node)"
        let run = try Program(path: "/bin/bash", [script] + arguments, environment: env, label: "stack-\(arguments.first ?? "")")
        let status = await run.wait(timeout: .seconds(120))
        return (status ?? -1, run.output)
    }
}

/// A program run as a child process, its standard output and error captured in one file.
/// posix_spawn and a polling waitpid: nothing blocks a cooperative thread.
final class Program: @unchecked Sendable {
    static let outputDirectory: URL = {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-secure-\(getpid())")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }()

    let label: String
    let pid: pid_t
    let outputFile: URL
    private let lock = NSLock()
    private var status: Int32?

    /// Starts one of the project's executables (the product's or the examples').
    convenience init(_ executable: String, _ arguments: [String] = [], environment: [String: String], label: String? = nil) throws {
        try self.init(path: Executables.path(executable), arguments, environment: environment, label: label ?? executable)
    }

    init(path: String, _ arguments: [String], environment: [String: String], label: String) throws {
        self.label = label
        outputFile = Self.outputDirectory.appendingPathComponent("\(label)-\(UUID().uuidString.prefix(6)).log")
        pid = try Self.spawn(path, arguments, environment: environment, output: outputFile.path)
    }

    /// Starts `path` with standard input from /dev/null and its output written to `output` (and
    /// its errors to `errors`, or to `output` too); returns its pid, which the caller reaps.
    static func spawn(_ path: String, _ arguments: [String], environment: [String: String], output: String, errors: String? = nil) throws
        -> pid_t
    {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if let errors {
            posix_spawn_file_actions_addopen(&actions, 2, errors, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        } else {
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, path, &actions, nil, argv, envp)
        guard result == 0 else { throw POSIXError(POSIXErrorCode(rawValue: result) ?? .EINVAL) }
        return pid
    }

    /// The exit status of a `waitpid` status word: the program's own, or 128 + the signal that
    /// ended it.
    static func exitStatus(_ raw: Int32) -> Int32 {
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : 128 + signal
    }

    /// Everything the program wrote so far.
    var output: String { (try? String(contentsOf: outputFile, encoding: .utf8)) ?? "" }

    /// The exit status (128 + signal when killed), or nil while it runs.
    func poll() -> Int32? {
        lock.withLock {
            if let status { return status }
            var raw: Int32 = 0
            guard waitpid(pid, &raw, WNOHANG) == pid else { return nil }
            status = Self.exitStatus(raw)
            return status
        }
    }

    /// Waits up to `timeout` for the exit; nil if it still runs.
    func wait(timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = poll() { return status }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return poll()
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`; returns the exit status.
    @discardableResult
    func terminate(grace: Duration = .seconds(20)) async -> Int32 {
        if let status = poll() { return status }
        kill(pid, SIGTERM)
        if let status = await wait(timeout: grace) { return status }
        kill(pid, SIGKILL)
        return await wait(timeout: .seconds(10)) ?? -1
    }

    deinit {
        if poll() == nil {
            kill(pid, SIGKILL)
            var raw: Int32 = 0
            waitpid(pid, &raw, 0)
        }
    }
}

/// GET http://127.0.0.1:port/path; nil when nothing answers.
func httpGet(port: Int, _ path: String) async -> (status: Int, body: String)? {
    var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)\(path)")!)
    request.timeoutInterval = 3
    guard let (data, response) = try? await URLSession.shared.data(for: request) else { return nil }
    return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
}

/// A TCP socket bound to a free port on 127.0.0.1 (not listening); the caller closes it.
func boundLoopbackSocket() -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
func unusedPort() -> Int {
    let (fd, port) = boundLoopbackSocket()
    close(fd)
    return port
}

/// Searches texts for secrets: each secret as it is, percent-encoded (as URLs carry it), and its
/// longest run of letters and digits (so that half a password is found too).
struct LeakSearch {
    let needles: [String]

    init(secrets: [String]) {
        var needles: Set<String> = []
        for secret in secrets where !secret.isEmpty {
            needles.insert(secret)
            needles.insert(Secrets.percentEncoded(secret))
            let runs = secret.split { !($0.isLetter || $0.isNumber) }.map(String.init)
            if let longest = runs.max(by: { $0.count < $1.count }), longest.count >= 12 { needles.insert(longest) }
        }
        self.needles = needles.sorted()
    }

    /// The (text name, needle) pairs found.
    func hits(in texts: [(name: String, text: String)]) -> [String] {
        texts.flatMap { item in needles.filter { item.text.contains($0) }.map { "\(item.name) contains a secret (\($0.count) characters)" } }
    }
}
