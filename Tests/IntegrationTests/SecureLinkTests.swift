import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Issue 9 on real servers: every program over TLS with authentication, bad settings failing with
/// one clear message and the documented exit status, and no password in any output.
@Suite("Secure links: TLS, authentication, secrets (secure stack)", .serialized, .enabled(if: SecureStack.enabled), .timeLimit(.minutes(8)))
struct SecureLinkTests {
    static let executables = [
        "outbox-relay", "outboxctl", "inventory-consumer", "notification-consumer", "order-service", "outbox-demo", "outbox-bench",
    ]

    init() {
        #expect(SecureStack.configured, "OUTBOX_REQUIRE_SERVERS=1 but the SECURE_* settings are missing; run ops/test")
    }

    @Test("the whole flow runs over TLS with SCRAM authentication; no output holds a password")
    func wholeFlow() async throws {
        let database = "secure_\(UUID().uuidString.prefix(8).lowercased())"
        let servicePort = unusedPort()
        let relayPort = unusedPort()
        let consumerPorts = [unusedPort(), unusedPort()]
        let environment = SecureStack.programEnvironment(["OUTBOX_DATABASE": database])
        var programs: [Program] = []
        programs.append(try Program("order-service", environment: environment.merging(["ORDER_SERVICE_PORT": "\(servicePort)"]) { $1 }))
        programs.append(try Program("outbox-relay", environment: environment.merging(["RELAY_HTTP_ADDRESS": "127.0.0.1:\(relayPort)"]) { $1 }))
        programs.append(
            try Program("inventory-consumer", environment: environment.merging(["CONSUMER_HTTP_ADDRESS": "127.0.0.1:\(consumerPorts[0])"]) { $1 }))
        programs.append(
            try Program("notification-consumer", environment: environment.merging(["CONSUMER_HTTP_ADDRESS": "127.0.0.1:\(consumerPorts[1])"]) { $1 }))
        var outputs: [(name: String, text: String)] = []
        do {
            for (port, path) in [
                (servicePort, "/health"), (relayPort, "/health/ready"), (consumerPorts[0], "/health/ready"), (consumerPorts[1], "/health/ready"),
            ] {
                let up = await eventually(timeout: .seconds(60)) { await httpGet(port: port, path)?.status == 200 }
                #expect(up, "127.0.0.1:\(port)\(path) is not ready: \(programs.map { "\($0.label): \($0.output.suffix(600))" })")
            }
            // The demo drives the flow over HTTP, re-publishes some events as duplicates, and
            // exits 0 only if every order was delivered and applied exactly once.
            let demo = try Program(
                "outbox-demo", ["--service-url", "http://127.0.0.1:\(servicePort)", "--orders", "40", "--timeout", "90"], environment: environment)
            let demoStatus = await demo.wait(timeout: .seconds(150))
            #expect(demoStatus == 0, "outbox-demo: \(demo.output.suffix(2000))")
            #expect(demo.output.contains("result: OK"))
            outputs.append(("outbox-demo", demo.output))

            let status = try Program("outboxctl", ["status"], environment: environment)
            #expect(await status.wait(timeout: .seconds(60)) == 0, "\(status.output)")
            #expect(status.output.contains("delivered"))
            let replay = try Program("outboxctl", ["replay", "--type", "OrderCreated", "--status", "delivered"], environment: environment)
            #expect(await replay.wait(timeout: .seconds(60)) == 0, "\(replay.output)")
            #expect(replay.output.contains("40 of 40"), "\(replay.output)")
            outputs += [("outboxctl status", status.output), ("outboxctl replay", replay.output)]

            for port in [relayPort] + consumerPorts {
                let metrics = await httpGet(port: port, "/metrics")
                #expect(metrics?.status == 200)
                #expect(metrics?.body.contains(#"outbox_connection_up{target="broker"} 1"#) == true, "\(metrics?.body.prefix(300) ?? "")")
                outputs.append(("metrics \(port)", metrics?.body ?? ""))
                outputs.append(("ready \(port)", await httpGet(port: port, "/health/ready")?.body ?? ""))
            }
        } catch {
            Issue.record(error)
        }
        for program in programs {
            #expect(await program.terminate() == 0, "\(program.label) did not stop cleanly: \(program.output.suffix(600))")
            outputs.append((program.label, program.output))
            #expect(!program.output.contains(" error "), "\(program.label) logged an error: \(program.output.suffix(1500))")
        }
        #expect(outputs.count >= 13 && outputs.allSatisfy { !$0.text.isEmpty })
        let hits = LeakSearch(secrets: SecureStack.passwords).hits(in: outputs)
        #expect(hits.isEmpty, "\(hits)")
        let pool = try SecureStack.pool(database: database)
        _ = try? await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
    }

    @Test("the benchmark runs over TLS with authentication and prints the store without its password")
    func benchmark() async throws {
        let bench = try Program(
            "outbox-bench",
            [
                "--bin-directory", Executables.productDirectory, "--examples-bin-directory", Executables.examplesDirectory, "--backlog", "100",
                "--broker-messages", "200", "--rate", "20", "--latency-seconds",
                "1",
                "--large-events", "10", "--large-event-bytes", "10000", "--consumer-messages", "0", "--flow-orders", "0",
                "--scheduled-events", "20", "--scheduled-seconds", "1", "--console-parked", "200", "--soak-minutes", "0",
                "--fairness-backlog", "0", "--streams-sources", "0",
            ],
            environment: SecureStack.programEnvironment(["OUTBOX_DATABASE": "secure_bench"]))
        #expect(await bench.wait(timeout: .seconds(240)) == 0, "\(bench.output.suffix(2000))")
        #expect(bench.output.contains("store (MongoDB wire: mongodb://outbox@127.0.0.1:\(SecureStack.mongoPort))"), "\(bench.output)")
        #expect(bench.output.contains("relay drain of a 100 backlog"))
        let hits = LeakSearch(secrets: SecureStack.passwords).hits(in: [("outbox-bench", bench.output)])
        #expect(hits.isEmpty, "\(hits)")
    }

    /// One wrong setting and what it must produce.
    struct BadLink: Sendable, CustomStringConvertible {
        var name: String
        var environment: [String: String]
        var status: Int32
        var message: [String]
        var description: String { name }
    }

    /// Writes `text` to a file of the test's own (mode 600) and returns its path.
    static func secretFile(_ text: String) throws -> String {
        let url = Program.outputDirectory.appendingPathComponent("secret-\(UUID().uuidString)")
        try text.write(to: url, atomically: true, encoding: .utf8)
        chmod(url.path, 0o600)
        return url.path
    }

    static let wrongPassword = "wrong-\(UUID().uuidString.replacingOccurrences(of: "-", with: ""))"

    static func mongoCases() throws -> [BadLink] {
        let uri = SecureStack.mongoURI
        let password = Secrets.percentEncoded(SecureStack.passwords[0])
        let link = "MongoDB link mongodb://outbox@"
        return [
            BadLink(
                name: "MongoDB wrong password",
                environment: ["MONGODB_URI_FILE": try secretFile(uri.replacingOccurrences(of: password, with: wrongPassword))],
                status: 78, message: [link, "authentication failed"]),
            BadLink(
                name: "MongoDB wrong CA",
                environment: ["MONGODB_URI_FILE": try secretFile(uri.replacingOccurrences(of: SecureStack.caFile, with: SecureStack.otherCAFile))],
                status: 78, message: [link, "not signed by a trusted CA"]),
            BadLink(
                name: "MongoDB host name mismatch",
                environment: ["MONGODB_URI_FILE": try secretFile(uri.replacingOccurrences(of: "@127.0.0.1:", with: "@localhost:"))],
                status: 78, message: ["MongoDB link mongodb://outbox@localhost:", "host name mismatch"]),
            BadLink(
                name: "MongoDB plain text to the TLS port",
                // tlsCAFile alone would turn TLS on again.
                environment: [
                    "MONGODB_URI_FILE": try secretFile(uri.replacingOccurrences(of: "tls=true&tlsCAFile=\(SecureStack.caFile)&", with: ""))
                ],
                status: 69, message: [link, "add tls=true"]),
        ]
    }

    static func amqpCases() throws -> [BadLink] {
        let url = SecureStack.amqpURL
        let password = Secrets.percentEncoded(SecureStack.passwords[1])
        let link = "amqps://outbox@127.0.0.1:\(SecureStack.rabbitPort(node: 1))/"
        return [
            BadLink(
                name: "AMQP wrong password",
                environment: ["AMQP_URL_FILE": try secretFile(url.replacingOccurrences(of: password, with: wrongPassword))],
                status: 78, message: [link, "refused the user name or password"]),
            BadLink(
                name: "AMQP wrong CA", environment: ["AMQP_TLS_CA_FILE": SecureStack.otherCAFile],
                status: 78, message: [link, "not signed by a trusted CA"]),
            BadLink(
                name: "AMQP host name mismatch",
                environment: ["AMQP_URL_FILE": try secretFile(url.replacingOccurrences(of: "@127.0.0.1:", with: "@localhost:"))],
                status: 78, message: ["amqps://outbox@localhost:", "host name mismatch"]),
            BadLink(
                name: "AMQP plain text to the TLS port",
                environment: [
                    "AMQP_URL_FILE": try secretFile(url.replacingOccurrences(of: "amqps://", with: "amqp://")),
                    "AMQP_TLS_CA_FILE": "", "AMQP_TLS_CERT_FILE": "", "AMQP_TLS_KEY_FILE": "",
                ],
                status: 78, message: ["amqp://outbox@127.0.0.1:", "a TLS port needs amqps://"]),
            BadLink(
                name: "AMQP without the client certificate the broker requires",
                environment: ["AMQP_TLS_CERT_FILE": "", "AMQP_TLS_KEY_FILE": ""],
                status: 78, message: [link, "client certificate"]),
            BadLink(
                name: "AMQP secret in a file and in the environment",
                environment: ["AMQP_URL": url], status: 78, message: ["AMQP_URL_FILE", "give the value one way only"]),
        ]
    }

    @Test("wrong password, wrong CA, host name mismatch, plain text to a TLS port: one clear error, exit 78 or 69, no password in any output")
    func badLinks() async throws {
        let database = "secure_bad_\(UUID().uuidString.prefix(8).lowercased())"
        var outputs: [(name: String, text: String)] = []
        var runs: [(BadLink, String, Program)] = []
        func start(_ bad: BadLink, _ executable: String, _ arguments: [String] = []) throws {
            var environment = SecureStack.programEnvironment([
                "OUTBOX_DATABASE": database, "RELAY_HTTP_ADDRESS": "off", "CONSUMER_HTTP_ADDRESS": "off",
            ])
            for (key, value) in bad.environment { environment[key] = value.isEmpty ? nil : value }
            let label = "\(executable) \(arguments.first ?? "") \(bad.name)"
            runs.append((bad, label, try Program(executable, arguments, environment: environment, label: executable)))
        }
        // --help of every program, with the secure settings in its environment.
        for executable in Self.executables {
            let help = try Program(executable, ["--help"], environment: SecureStack.programEnvironment())
            #expect(await help.wait(timeout: .seconds(30)) == 0)
            #expect(help.output.contains("USAGE"), "\(executable) --help: \(help.output.prefix(200))")
            if ["outbox-relay", "inventory-consumer", "notification-consumer"].contains(executable) {
                #expect(help.output.contains("OTEL_TRACES_EXPORTER"), "\(executable) --help says how to turn tracing on")
            }
            outputs.append(("\(executable) --help", help.output))
        }
        for bad in try Self.mongoCases() {
            for executable in ["outbox-relay", "inventory-consumer", "notification-consumer", "order-service"] { try start(bad, executable) }
            try start(bad, "outboxctl", ["status"])
        }
        for bad in try Self.amqpCases() {
            for executable in ["outbox-relay", "inventory-consumer", "notification-consumer"] { try start(bad, executable) }
            try start(bad, "outboxctl", ["replay", "--status", "parked"])
        }
        for (bad, label, program) in runs {
            let status = await program.wait(timeout: .seconds(90))
            let text = program.output
            outputs.append((label, text))
            #expect(status == bad.status, "\(label): exit \(status.map(String.init) ?? "none (still running)"), expected \(bad.status): \(text)")
            for part in bad.message {
                #expect(text.contains(part), "\(label) does not say '\(part)': \(text)")
            }
            // One clear message: the exit line, not a cascade of warnings.
            let lines = text.split(separator: "\n").filter { !$0.isEmpty }
            #expect(lines.count == 1, "\(label) printed \(lines.count) lines: \(text)")
        }
        let expectedRuns = 4 * 5 + 6 * 4
        #expect(runs.count == expectedRuns)
        let hits = LeakSearch(secrets: SecureStack.passwords + [Self.wrongPassword]).hits(in: outputs)
        #expect(hits.isEmpty, "\(hits)")
    }

    @Test("a broker that is away: outboxctl exits 69; the relay waits, not ready, and names the broker once")
    func unreachableBroker() async throws {
        let url = try Self.secretFile(SecureStack.amqpURL.replacingOccurrences(of: ":\(SecureStack.rabbitPort(node: 1))/", with: ":\(unusedPort())/"))
        let database = "secure_away_\(UUID().uuidString.prefix(8).lowercased())"
        let environment = SecureStack.programEnvironment(["AMQP_URL_FILE": url, "OUTBOX_DATABASE": database])
        let replay = try Program("outboxctl", ["replay", "--status", "parked"], environment: environment)
        #expect(await replay.wait(timeout: .seconds(60)) == 69, "\(replay.output)")
        #expect(replay.output.contains("cannot connect"), "\(replay.output)")

        let port = unusedPort()
        let relay = try Program(
            "outbox-relay", environment: environment.merging(["RELAY_HTTP_ADDRESS": "127.0.0.1:\(port)", "RELAY_POLL_INTERVAL": "100ms"]) { $1 })
        let answered = await eventually(timeout: .seconds(60)) { await httpGet(port: port, "/health/ready") != nil }
        #expect(answered, "\(relay.output)")
        let ready = await httpGet(port: port, "/health/ready")
        #expect(ready?.status == 503 && ready?.body.contains(#""broker":"down""#) == true, "\(String(describing: ready))")
        try await Task.sleep(for: .seconds(2))
        #expect(relay.poll() == nil, "the relay keeps running: \(relay.output)")
        #expect(await relay.terminate() == 0)
        let downs = relay.output.components(separatedBy: "AMQP link down").count - 1
        #expect(downs == 1, "the same cause is logged once, not once per retry: \(relay.output)")
        let hits = LeakSearch(secrets: SecureStack.passwords).hits(in: [("outboxctl", replay.output), ("relay", relay.output)])
        #expect(hits.isEmpty, "\(hits)")
    }

    @Test("the broker refuses the password after a rotation: not ready, one clear error; back to ready when it accepts it again")
    func passwordRotation() async throws {
        // Node 2 is used by nobody else before the failover test, which runs later, alone.
        let node2 = SecureStack.rabbitPort(node: 2)
        let url = try Self.secretFile(SecureStack.amqpURL.replacingOccurrences(of: ":\(SecureStack.rabbitPort(node: 1))/", with: ":\(node2)/"))
        let database = "secure_rotation_\(UUID().uuidString.prefix(8).lowercased())"
        let port = unusedPort()
        let relay = try Program(
            "outbox-relay",
            environment: SecureStack.programEnvironment([
                "AMQP_URL_FILE": url, "OUTBOX_DATABASE": database, "RELAY_HTTP_ADDRESS": "127.0.0.1:\(port)", "RELAY_POLL_INTERVAL": "100ms",
            ]))
        let rotated = "rotated-\(UUID().uuidString.replacingOccurrences(of: "-", with: ""))"
        var restored = false
        do {
            #expect(await eventually(timeout: .seconds(60)) { await httpGet(port: port, "/health/ready")?.status == 200 }, "\(relay.output)")
            let change = try await SecureStack.stack(["rabbitmqctl", "-q", "change_password", "outbox", rotated], node: 2)
            #expect(change.status == 0, "\(change.output)")
            let close = try await SecureStack.stack(["rabbitmqctl", "-q", "close_all_connections", "password rotation test"], node: 2)
            #expect(close.status == 0, "\(close.output)")
            let notReady = await eventually(timeout: .seconds(30)) {
                guard let ready = await httpGet(port: port, "/health/ready") else { return false }
                return ready.status == 503 && ready.body.contains(#""broker":"down""#)
            }
            #expect(notReady, "\(relay.output)")
            try await Task.sleep(for: .seconds(2))
            let refusals = relay.output.split(separator: "\n").filter { $0.contains("AMQP link down") }
            #expect(refusals.count == 1, "one error for the refused password, not one per retry: \(relay.output)")
            #expect(
                refusals.first?.contains("refused the user name or password") == true
                    && refusals.first?.contains("error.cause=authentication") == true)
            let back = try await SecureStack.stack(["rabbitmqctl", "-q", "change_password", "outbox", SecureStack.passwords[1]], node: 2)
            #expect(back.status == 0, "\(back.output)")
            restored = back.status == 0
            #expect(
                await eventually(timeout: .seconds(30)) { await httpGet(port: port, "/health/ready")?.status == 200 }, "ready again: \(relay.output)")
        } catch {
            Issue.record(error)
        }
        if !restored { _ = try? await SecureStack.stack(["rabbitmqctl", "-q", "change_password", "outbox", SecureStack.passwords[1]], node: 2) }
        #expect(await relay.terminate() == 0)
        #expect(relay.output.components(separatedBy: "AMQP connection open").count - 1 == 2, "\(relay.output)")
        let hits = LeakSearch(secrets: SecureStack.passwords + [rotated]).hits(in: [("relay", relay.output)])
        #expect(hits.isEmpty, "\(hits)")
    }

    @Test("several brokers: an address that never answers is given up after connection_timeout and the next one is used")
    func connectionTimeoutAndNextAddress() async throws {
        // A listener that never accepts: the TLS handshake waits until the deadline.
        let (fd, silent) = boundLoopbackSocket()
        defer { close(fd) }
        #expect(listen(fd, 16) == 0)
        let node = SecureStack.rabbitPort(node: 1)
        func admin(_ hosts: String) throws -> AMQPAdmin {
            let url = SecureStack.amqpURL.replacingOccurrences(of: "@127.0.0.1:\(node)/", with: "@\(hosts)/") + "?connection_timeout=1500&heartbeat=7"
            var endpoint = try AMQPEndpoint(url: url)
            endpoint.tls = try SecureStack.amqp().endpoint.tls
            let configuration = AMQPConfiguration(endpoint: endpoint)
            #expect(configuration.connectTimeout == .milliseconds(1500) && configuration.heartbeatSeconds == 7)
            return AMQPAdmin(configuration: configuration, logger: Servers.logger)
        }
        // The silent address alone: given up after 1.5 s, well before the 5 s default would pass.
        let alone = try admin("127.0.0.1:\(silent)")
        var started = ContinuousClock.now
        await #expect(throws: (any Error).self) { try await alone.connect() }
        var elapsed = ContinuousClock.now - started
        #expect(elapsed >= .milliseconds(1400) && elapsed < .milliseconds(4900), "silent address alone took \(elapsed)")
        await alone.close()
        // The silent address first, then a real node: the real node is used after the silent one
        // was given up.
        let both = try admin("127.0.0.1:\(silent),127.0.0.1:\(node)")
        started = ContinuousClock.now
        try await both.connect()
        elapsed = ContinuousClock.now - started
        #expect(elapsed >= .milliseconds(1400), "took \(elapsed)")
        await both.close()
    }
}
