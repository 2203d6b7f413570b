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

    public func duration(_ flag: String?, env: String, default value: String, flagName: String) throws -> Duration {
        let raw = (flag?.isEmpty == false ? flag : nil) ?? Setting.fromEnvironment(env, environment) ?? value
        return try Setting.duration(raw, setting: "\(env) (\(flagName))")
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

    public func amqp(url: String) throws -> AMQPConfiguration {
        AMQPConfiguration(endpoint: try AMQPEndpoint(url: url, setting: "AMQP_URL (--amqp-url)"))
    }
}

/// Options every process that talks to MongoDB takes.
public struct MongoOptions: ParsableArguments {
    @Option(name: .customLong("mongodb-uri"), help: "MongoDB connection string (env MONGODB_URI). Must reach a replica set.")
    public var mongodbURI: String?

    @Option(help: "Database holding the business, outbox and inbox collections (env OUTBOX_DATABASE; default outbox).")
    public var database: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error (env LOG_LEVEL; default info).")
    public var logLevel: String?

    public init() {}

    public func resolvedURI(_ settings: Settings) throws -> String {
        try settings.string(mongodbURI, env: "MONGODB_URI", flagName: "--mongodb-uri")
    }

    public func resolvedDatabase(_ settings: Settings) throws -> String {
        let name = try settings.string(database, env: "OUTBOX_DATABASE", default: "outbox", flagName: "--database")
        guard !name.contains(where: { "/\\. \"$".contains($0) }), name.utf8.count < 64 else {
            throw ConfigurationError(setting: "OUTBOX_DATABASE (--database)", reason: "'\(name)' is not a valid database name")
        }
        return name
    }
}

public enum Runtime {
    /// Process-wide start-up: ignore SIGPIPE (a broken socket must be an error, not a kill) and
    /// send logs to standard error at `level`.
    public static func bootstrap(label: String, level: Logger.Level) -> Logger {
        signal(SIGPIPE, SIG_IGN)
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
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

    /// Prints a configuration error naming the setting and exits with status 78 (EX_CONFIG).
    public static func failConfiguration(_ error: Error, program: String) -> Never {
        FileHandle.standardError.write(Data("\(program): \(error)\n".utf8))
        exit(78)
    }
}

extension Runtime {
    /// Runs long-lived parts in one service group: SIGTERM or SIGINT starts a graceful shutdown
    /// that may take at most `shutdownTimeout` before the parts are cancelled.
    public static func runServices(_ services: [any Service], shutdownTimeout: Duration, logger: Logger) async throws {
        var configuration = ServiceGroupConfiguration(
            services: services.map { .init(service: $0) }, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        configuration.maximumGracefulShutdownDuration = shutdownTimeout
        try await ServiceGroup(configuration: configuration).run()
    }
}
