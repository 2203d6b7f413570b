import ArgumentParser
import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// Resolves settings: a flag wins, then the environment variable, then the default. Errors name
/// both the flag and the variable.
public struct Settings: Sendable {
    public let environment: [String: String]

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.environment = environment
    }

    /// A value from the flag, the environment variable `env`, or the file named by `env_FILE` (the
    /// container-secret convention; a final line break is dropped). A value given both in a file
    /// and directly is an error, never a silent choice.
    public func secret(_ flag: String?, env: String, flagName: String) throws -> String {
        let fileSetting = "\(env)_FILE"
        let direct = flag?.isEmpty == false ? flagName : Setting.fromEnvironment(env, environment).map { _ in env }
        guard let path = Setting.fromEnvironment(fileSetting, environment) else {
            return try string(flag, env: env, flagName: flagName)
        }
        if let direct {
            throw ConfigurationError(setting: fileSetting, reason: "\(direct) is set too; give the value one way only")
        }
        return try readFile(path, setting: fileSetting)
    }

    /// The contents of a settings file without its final line break; errors name `setting`.
    public func readFile(_ path: String, setting: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(setting: setting, reason: "cannot read the file \(path)")
        }
        guard var text = String(data: data, encoding: .utf8) else {
            throw ConfigurationError(setting: setting, reason: "the file \(path) is not UTF-8 text")
        }
        while text.hasSuffix("\n") || text.hasSuffix("\r") { text.removeLast() }
        guard !text.isEmpty else { throw ConfigurationError(setting: setting, reason: "the file \(path) is empty") }
        return text
    }

    public func string(_ flag: String?, env: String, default value: String? = nil, flagName: String) throws -> String {
        if let flag, !flag.isEmpty { return flag }
        if let fromEnv = Setting.fromEnvironment(env, environment) { return fromEnv }
        if let value { return value }
        throw ConfigurationError(setting: "\(env) (\(flagName))", reason: "is required")
    }

    public func int(_ flag: Int?, env: String, default value: Int, flagName: String, range: ClosedRange<Int>) throws -> Int {
        let setting = "\(env) (\(flagName))"
        var resolved = value
        if let flag {
            resolved = flag
        } else if let raw = Setting.fromEnvironment(env, environment) {
            guard let parsed = Int(raw) else { throw ConfigurationError(setting: setting, reason: "'\(raw)' is not an integer") }
            resolved = parsed
        }
        guard range.contains(resolved) else {
            throw ConfigurationError(setting: setting, reason: "must be between \(range.lowerBound) and \(range.upperBound), got \(resolved)")
        }
        return resolved
    }

    /// A duration setting; zero is refused unless `allowZero` (a zero poll interval spins, a zero
    /// confirm timeout fails every publish).
    public func duration(_ flag: String?, env: String, default value: String, flagName: String, allowZero: Bool = false) throws -> Duration {
        let raw = (flag?.isEmpty == false ? flag : nil) ?? Setting.fromEnvironment(env, environment) ?? value
        let duration = try Setting.duration(raw, setting: "\(env) (\(flagName))")
        guard allowZero || duration > .zero else {
            throw ConfigurationError(setting: "\(env) (\(flagName))", reason: "must be more than 0, got '\(raw)'")
        }
        return duration
    }

    /// A duration that may also be `off`: nil when neither flag nor environment gives one,
    /// `.some(nil)` for `off`, else the duration.
    public func durationOrOff(_ flag: String?, env: String, flagName: String) throws -> Duration?? {
        guard let raw = (flag?.isEmpty == false ? flag : nil) ?? Setting.fromEnvironment(env, environment) else { return nil }
        guard raw.lowercased() != "off" else { return .some(nil) }
        return .some(try Setting.duration(raw, setting: "\(env) (\(flagName))"))
    }

    public func bool(env: String, default value: Bool, flagName: String) throws -> Bool {
        guard let raw = Setting.fromEnvironment(env, environment) else { return value }
        switch raw.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: throw ConfigurationError(setting: "\(env) (\(flagName))", reason: "'\(raw)' is not true or false")
        }
    }

    public func logLevel(_ flag: String?) throws -> Logger.Level {
        let raw = try string(flag, env: "LOG_LEVEL", default: "info", flagName: "--log-level")
        guard let level = Logger.Level(rawValue: raw.lowercased()) else {
            throw ConfigurationError(
                setting: "LOG_LEVEL (--log-level)", reason: "'\(raw)' is not one of trace, debug, info, notice, warning, error, critical")
        }
        return level
    }

    /// The MongoDB pool, with a bad URI reported as a configuration error.
    public func mongoPool(uri: String, database: String, appName: String, threads: Int = 4) throws -> MongoClientPool {
        do {
            return try MongoClientPool(MongoConfiguration(uri: uri, database: database, threads: threads, appName: appName))
        } catch let error as MongoError {
            throw ConfigurationError(setting: "MONGODB_URI (--mongodb-uri)", reason: error.message)
        }
    }

    /// The RabbitMQ link: the URL from `--amqp-url`, `AMQP_URL` or `AMQP_URL_FILE`, the password
    /// optionally from `AMQP_PASSWORD_FILE`, TLS settings from the URL and `AMQP_TLS_*`. Files
    /// are checked now, so a missing CA file stops the process at start, naming the setting.
    public func amqp(_ flag: String?) throws -> AMQPConfiguration {
        let urlSetting = Setting.fromEnvironment("AMQP_URL_FILE", environment) != nil ? "AMQP_URL_FILE" : "AMQP_URL (--amqp-url)"
        let url = try secret(flag, env: "AMQP_URL", flagName: "--amqp-url")
        var endpoint = try AMQPEndpoint(url: url, setting: urlSetting)
        if let path = Setting.fromEnvironment("AMQP_PASSWORD_FILE", environment) {
            guard url.prefix(while: { $0 != "?" }).contains("@"), endpoint.password.isEmpty else {
                throw ConfigurationError(
                    setting: "AMQP_PASSWORD_FILE", reason: "\(urlSetting) must name the user and hold no password (amqps://user@host/)")
            }
            endpoint.password = try readFile(path, setting: "AMQP_PASSWORD_FILE")
        }
        Secrets.register(endpoint.password)
        endpoint.tls = try amqpTLS(endpoint.tls, urlSetting: urlSetting)
        return AMQPConfiguration(endpoint: endpoint)
    }

    /// Merges `AMQP_TLS_*` into the URL's TLS settings: a setting given in both places differently is an error.
    private func amqpTLS(_ fromURL: AMQPTLSOptions?, urlSetting: String) throws -> AMQPTLSOptions? {
        let names = ["AMQP_TLS_CA_FILE", "AMQP_TLS_CERT_FILE", "AMQP_TLS_KEY_FILE", "AMQP_TLS_VERIFY_PEER", "AMQP_TLS_VERIFY_HOSTNAME"]
        guard var tls = fromURL else {
            if let name = names.first(where: { Setting.fromEnvironment($0, environment) != nil }) {
                throw ConfigurationError(setting: name, reason: "is set but \(urlSetting) is not amqps://; TLS needs amqps://")
            }
            return nil
        }
        func merge(_ current: String?, env: String, parameter: String) throws -> String? {
            guard let value = Setting.fromEnvironment(env, environment) else { return current }
            if let current, current != value {
                throw ConfigurationError(setting: env, reason: "differs from the URL's \(parameter); give it one way only")
            }
            return value
        }
        tls.caFile = try merge(tls.caFile, env: "AMQP_TLS_CA_FILE", parameter: "cacertfile")
        tls.certFile = try merge(tls.certFile, env: "AMQP_TLS_CERT_FILE", parameter: "certfile")
        tls.keyFile = try merge(tls.keyFile, env: "AMQP_TLS_KEY_FILE", parameter: "keyfile")
        if Setting.fromEnvironment("AMQP_TLS_VERIFY_PEER", environment) != nil {
            let verify = try bool(env: "AMQP_TLS_VERIFY_PEER", default: true, flagName: "no flag")
            if !tls.verifyPeer && verify {
                throw ConfigurationError(setting: "AMQP_TLS_VERIFY_PEER", reason: "is true but the URL says verify=verify_none")
            }
            tls.verifyPeer = verify
        }
        if Setting.fromEnvironment("AMQP_TLS_VERIFY_HOSTNAME", environment) != nil {
            let verify = try bool(env: "AMQP_TLS_VERIFY_HOSTNAME", default: true, flagName: "no flag")
            if !tls.verifyHostname && verify {
                throw ConfigurationError(setting: "AMQP_TLS_VERIFY_HOSTNAME", reason: "is true but the URL says verify=verify_none")
            }
            tls.verifyHostname = verify
        }
        if tls.verifyHostname && !tls.verifyPeer {
            throw ConfigurationError(
                setting: "AMQP_TLS_VERIFY_HOSTNAME", reason: "checking the host name of an unverified certificate proves nothing; turn both off or neither")
        }
        if (tls.certFile == nil) != (tls.keyFile == nil) {
            throw ConfigurationError(
                setting: tls.certFile == nil ? "AMQP_TLS_CERT_FILE" : "AMQP_TLS_KEY_FILE",
                reason: "a client certificate needs both AMQP_TLS_CERT_FILE and AMQP_TLS_KEY_FILE (or certfile and keyfile)")
        }
        for (file, setting) in [(tls.caFile, "AMQP_TLS_CA_FILE"), (tls.certFile, "AMQP_TLS_CERT_FILE"), (tls.keyFile, "AMQP_TLS_KEY_FILE")] {
            guard let file else { continue }
            let text = try readFile(file, setting: setting)
            guard text.contains("-----BEGIN ") else {
                throw ConfigurationError(setting: setting, reason: "the file \(file) is not PEM")
            }
            if setting == "AMQP_TLS_KEY_FILE" && text.contains("ENCRYPTED") {
                throw ConfigurationError(setting: setting, reason: "the key in \(file) is encrypted; rabbitmq-c needs an unencrypted key (protect the file instead)")
            }
        }
        return tls
    }
}

/// Options every process that talks to MongoDB takes.
public struct MongoOptions: ParsableArguments {
    @Option(name: .customLong("mongodb-uri"), help: ArgumentHelp(Help.mongodbURI))
    public var mongodbURI: String?

    @Option(help: "Database holding the business, outbox and inbox collections (env OUTBOX_DATABASE; default outbox).")
    public var database: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error (env LOG_LEVEL; default info).")
    public var logLevel: String?

    public init() {}

    /// The connection string from `--mongodb-uri`, `MONGODB_URI` or `MONGODB_URI_FILE`, with the
    /// password from `MONGODB_PASSWORD_FILE` when that is set. The password is registered with
    /// `Secrets`, so no output shows it.
    public func resolvedURI(_ settings: Settings) throws -> String {
        let uriSetting = Setting.fromEnvironment("MONGODB_URI_FILE", settings.environment) != nil ? "MONGODB_URI_FILE" : "MONGODB_URI (--mongodb-uri)"
        var uri = try settings.secret(mongodbURI, env: "MONGODB_URI", flagName: "--mongodb-uri")
        if let path = Setting.fromEnvironment("MONGODB_PASSWORD_FILE", settings.environment) {
            let password = try settings.readFile(path, setting: "MONGODB_PASSWORD_FILE")
            uri = try MongoURI.withPassword(uri, password, setting: "MONGODB_PASSWORD_FILE", uriSetting: uriSetting)
        }
        if let password = MongoURI.password(in: uri) { Secrets.register(password) }
        return uri
    }

    public func resolvedDatabase(_ settings: Settings) throws -> String {
        let name = try settings.string(database, env: "OUTBOX_DATABASE", default: "outbox", flagName: "--database")
        guard !name.contains(where: { "/\\. \"$".contains($0) }), name.utf8.count < 64 else {
            throw ConfigurationError(setting: "OUTBOX_DATABASE (--database)", reason: "'\(name)' is not a valid database name")
        }
        return name
    }
}

/// Help texts shared by the programs, so every one names the same settings.
public enum Help {
    public static let mongodbURI = """
        MongoDB connection string; must reach a replica set (env MONGODB_URI, or a file named by \
        MONGODB_URI_FILE; the password may come from a file named by MONGODB_PASSWORD_FILE). TLS and \
        authentication go in the URI: tls=true&tlsCAFile=...&authSource=admin&authMechanism=SCRAM-SHA-256.
        """
    public static let amqpURL = """
        RabbitMQ URL amqp[s]://user:pass@host[:port][,host2[:port]...]/vhost[?heartbeat=S&connection_timeout=MS] \
        (env AMQP_URL, or a file named by AMQP_URL_FILE; the password may come from a file named by \
        AMQP_PASSWORD_FILE). Several hosts are tried in turn. amqps:// uses TLS: env AMQP_TLS_CA_FILE, \
        AMQP_TLS_CERT_FILE and AMQP_TLS_KEY_FILE (client certificate), AMQP_TLS_VERIFY_PEER and \
        AMQP_TLS_VERIFY_HOSTNAME (default true), or the URL's cacertfile, certfile, keyfile, verify.
        """
}

public enum Runtime {
    /// Process-wide start-up: ignore SIGPIPE (a broken socket must be an error, not a kill),
    /// leave no libmongoc counter segment behind (`MongoCounters`) and send logs to standard
    /// error at `level`.
    public static func bootstrap(label: String, level: Logger.Level) -> Logger {
        signal(SIGPIPE, SIG_IGN)
        MongoCounters.releaseSegment()
        // Message bodies can be large and live for one batch. glibc raises its mmap threshold to
        // the size of the first large block freed, after which such blocks come from heaps that
        // keep their pages: peak memory then grows with every size seen. A fixed threshold
        // (which also fixes the trim threshold) gives large blocks back to the system when freed.
        #if canImport(Glibc)
        // `mallopt` is in malloc.h, which the Glibc module leaves out.
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        let M_MMAP_THRESHOLD: Int32 = -3
        if let symbol = dlsym(dlopen(nil, RTLD_NOW), "mallopt") {
            _ = unsafeBitCast(symbol, to: Mallopt.self)(M_MMAP_THRESHOLD, 128 * 1024)
        }
        #endif
        LoggingSystem.bootstrap { label in
            var handler = RedactingLogHandler(StreamLogHandler.standardError(label: label))
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }

    /// `host-pid-random`: unique per process, readable in lease tables and logs.
    public static func defaultInstanceName() -> String {
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "relay"
        return "\(host)-\(getpid())-\(UUID().uuidString.prefix(6).lowercased())"
    }

    /// Runs a start-up step on the database again while it fails (up to 50 times, backing off to a
    /// second), as the relay rides out store failures in operation; the last failure is thrown.
    public static func retryingAtStart<R>(_ step: String, logger: Logger, _ body: () async throws -> R) async throws -> R {
        var attempt = 1
        while true {
            do {
                return try await body()
            } catch {
                guard attempt < 50 else { throw error }
                logger.warning("\(step) failed; retrying", metadata: ["error": "\(error)"])
                try await Task.sleep(for: .milliseconds(100 * min(attempt, 10)))
                attempt += 1
            }
        }
    }

    /// Exit status for bad configuration (EX_CONFIG): restarting cannot help.
    public static let configurationExitStatus: Int32 = 78
    /// Exit status for a database or broker that cannot be reached (EX_UNAVAILABLE).
    public static let unavailableExitStatus: Int32 = 69

    /// Prints a configuration error naming the setting and exits with status 78 (EX_CONFIG).
    public static func failConfiguration(_ error: Error, program: String) -> Never {
        fail(error, program: program, status: configurationExitStatus)
    }

    /// Prints that a database or broker cannot be reached and exits with status 69 (EX_UNAVAILABLE).
    public static func failUnavailable(_ error: Error, program: String) -> Never {
        fail(error, program: program, status: unavailableExitStatus)
    }

    /// Prints `program: error` (without any registered secret) and exits with `status`.
    ///
    /// The process ends without running the exit handlers (`_exit` after flushing the output):
    /// libmongoc's server monitors may still be retrying a TLS handshake on their own threads, and
    /// OpenSSL's exit handler would free the locks they are using (seen as a crash, status 139,
    /// after the error was printed).
    public static func fail(_ error: Error, program: String, status: Int32) -> Never {
        FileHandle.standardError.write(Data(Secrets.redact("\(program): \(error)\n").utf8))
        fflush(nil)
        _exit(status)
    }
}

/// A link that failed the start-up check: names the link (without its password) and the cause.
struct LinkFailure: Error, CustomStringConvertible {
    let link: String
    let cause: String
    var description: String { link.isEmpty ? cause : "\(link): \(cause)" }
}

extension Runtime {
    /// What a program does when the start-up check cannot reach the broker.
    public enum WhenBrokerUnreachable: Sendable {
        /// Exit with status 69 (a command that needs the broker now).
        case exit
        /// Log it and carry on; the program reconnects by itself and reports not ready meanwhile.
        case wait
    }

    /// Checks the links once, at start, so that bad settings stop the process at once with one
    /// clear message naming the link and the cause:
    /// - wrong password, untrusted certificate, host name mismatch, TLS or plain text on the wrong
    ///   port, a queue that exists with another type: exit 78 (configuration);
    /// - the database unreachable: exit 69; the broker unreachable: exit 69 or wait, as `broker` says.
    /// `brokerCheck` replaces the plain connection check (e.g. to declare a consumer's queues).
    public static func checkLinks(
        program: String, mongo: MongoClientPool?, amqp: AMQPConfiguration?, broker: WhenBrokerUnreachable,
        brokerCheck: (@Sendable (AMQPAdmin) async throws -> Void)? = nil, logger: Logger
    ) async {
        if let tls = amqp?.endpoint.tls, !tls.verifyPeer || !tls.verifyHostname {
            logger.warning(
                "AMQP TLS verification is off: the broker's identity is not checked",
                metadata: ["amqp.tls.verify_peer": "\(tls.verifyPeer)", "amqp.tls.verify_hostname": "\(tls.verifyHostname)"])
        }
        if let mongo {
            let link = "MongoDB link \(Secrets.displayURI(mongo.configuration.uri, query: false))"
            do {
                try await mongo.ping()
            } catch let error as MongoError {
                let failure = LinkFailure(link: link, cause: error.linkExplanation)
                if error.isConfigurationFailure { failConfiguration(failure, program: program) }
                failUnavailable(failure, program: program)
            } catch {
                failUnavailable(LinkFailure(link: link, cause: "\(error)"), program: program)
            }
        }
        if let amqp {
            // A silent logger: the outcome is reported once, below.
            var quiet = logger
            quiet.logLevel = .critical
            let admin = AMQPAdmin(configuration: amqp, logger: quiet)
            do {
                if let brokerCheck { try await brokerCheck(admin) } else { try await admin.connect() }
            } catch let error as AMQPError {
                // The error names the broker (without the password) and the cause.
                let failure =
                    error.cause == .inequivalent
                    ? LinkFailure(
                        link: "\(error)", cause: "a queue exists with another type or arguments: CONSUMER_QUEUE_TYPE (--queue-type) must match it (see docs/production-checklist.md)")
                    : LinkFailure(link: "", cause: "\(error)")
                if error.cause.isConfiguration { failConfiguration(failure, program: program) }
                if broker == .exit { failUnavailable(failure, program: program) }
                logger.warning("broker unreachable at start; waiting for it", metadata: ["error": "\(failure)"])
            } catch {
                failUnavailable(LinkFailure(link: "AMQP link \(amqp.endpoint)", cause: "\(error)"), program: program)
            }
            await admin.close()
        }
    }

    /// Runs long-lived parts in one service group: SIGTERM or SIGINT starts a graceful shutdown
    /// that may take at most `shutdownTimeout` before the parts are cancelled.
    public static func runServices(_ services: [any Service], shutdownTimeout: Duration, logger: Logger) async throws {
        var configuration = ServiceGroupConfiguration(
            services: services.map { .init(service: $0) }, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        configuration.maximumGracefulShutdownDuration = shutdownTimeout
        try await ServiceGroup(configuration: configuration).run()
    }
}

/// Writes through `StreamLogHandler` after removing every registered secret (see `Secrets`) from
/// the message, the metadata and the error: a password that a driver puts in an error message
/// never reaches the log.
struct RedactingLogHandler: LogHandler {
    private var inner: StreamLogHandler

    init(_ inner: StreamLogHandler) { self.inner = inner }

    var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue.mapValues(Self.redact) }
    }

    var metadataProvider: Logger.MetadataProvider? {
        get { inner.metadataProvider }
        set { inner.metadataProvider = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue.map(Self.redact) }
    }

    func log(event: LogEvent) {
        var event = event
        event.message = "\(Secrets.redact(event.message.description))"
        event.metadata = event.metadata?.mapValues(Self.redact)
        if let error = event.error { event.error = RedactedError(description: Secrets.redact("\(error)")) }
        inner.log(event: event)
    }

    private static func redact(_ value: Logger.Metadata.Value) -> Logger.Metadata.Value {
        switch value {
        case .string(let text): .string(Secrets.redact(text))
        case .stringConvertible(let item): .string(Secrets.redact(item.description))
        case .array(let items): .array(items.map(redact))
        case .dictionary(let entries): .dictionary(entries.mapValues(redact))
        }
    }
}

private struct RedactedError: Error, CustomStringConvertible {
    let description: String
}
