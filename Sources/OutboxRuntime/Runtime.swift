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
                logger.warning("\(step) failed; retrying", metadata: [LogKey.error: "\(error)"])
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
                metadata: [LogKey.amqpTLSVerifyPeer: "\(tls.verifyPeer)", LogKey.amqpTLSVerifyHostname: "\(tls.verifyHostname)"])
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
                        link: "\(error)",
                        cause:
                            "a queue exists with another type or arguments: CONSUMER_QUEUE_TYPE (--queue-type) must match it (see docs/production-checklist.md)"
                    )
                    : LinkFailure(link: "", cause: "\(error)")
                if error.cause.isConfiguration { failConfiguration(failure, program: program) }
                if broker == .exit { failUnavailable(failure, program: program) }
                logger.warning("broker unreachable at start; waiting for it", metadata: [LogKey.error: "\(failure)"])
            } catch {
                failUnavailable(LinkFailure(link: "AMQP link \(amqp.endpoint)", cause: "\(error)"), program: program)
            }
            await admin.close()
        }
    }

    /// Starts a program's tracing (e.g. `TracingBootstrap.start` of OutboxTracing) for its service
    /// name and environment: the service that exports spans, or nil with tracing off.
    public typealias StartTracing = @Sendable (_ serviceName: String, _ environment: [String: String], _ logger: Logger) throws -> (any Service)?

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
