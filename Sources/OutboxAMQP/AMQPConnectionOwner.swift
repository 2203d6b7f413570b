import Logging
import NIOPosix
import Outbox
import Synchronization

/// Settings shared by publishers and consumers.
public struct AMQPConfiguration: Sendable {
    public var endpoint: AMQPEndpoint
    /// Heartbeat interval negotiated with the broker; 0 turns heartbeats off.
    public var heartbeatSeconds: Int
    /// Limit for connecting (per broker address), logging in and each blocking read or write.
    public var connectTimeout: Duration

    /// Unless given here, `heartbeatSeconds` and `connectTimeout` come from the URL's `heartbeat`
    /// and `connection_timeout` parameters, else 30 s and 5 s.
    public init(endpoint: AMQPEndpoint, heartbeatSeconds: Int? = nil, connectTimeout: Duration? = nil) {
        self.endpoint = endpoint
        self.heartbeatSeconds = heartbeatSeconds ?? endpoint.heartbeatSeconds ?? 30
        self.connectTimeout = connectTimeout ?? endpoint.connectionTimeout ?? .seconds(5)
    }
}

/// Gives one AMQP connection a single owner: a thread of its own.
///
/// rabbitmq-c blocks and is not thread-safe, so every call runs on one dedicated thread, in
/// submission order, never on Swift's cooperative pool. The connection is opened on first use
/// and after any failure (an `AMQPError` closes it; the next call reconnects and runs `setup`
/// again, e.g. `confirm.select` and declarations).
///
/// With several broker addresses, a connection attempt tries them in turn, starting after the one
/// whose connection was lost, so a node that went away is tried last.
///
/// `@unchecked Sendable`: `connection` is read and written only on `thread`, which has exactly one
/// thread, so no two calls ever touch it at once.
public final class AMQPConnectionOwner: @unchecked Sendable {
    public let configuration: AMQPConfiguration
    private let thread = NIOThreadPool(numberOfThreads: 1)
    private var connection: AMQPConnection? {
        didSet {
            connected.store(connection?.isOpen ?? false, ordering: .relaxed)
            noteFlow()
        }
    }
    private var generation = 0
    /// Index of the address the last connection was open to.
    private var lastAddress: Int?
    /// The last connection failure logged, so that a broker that stays away is one error, not one per retry.
    private var lastFailure: String?
    /// Mirrors whether a connection is open, readable from any thread without waiting for the owner's.
    private let connected = Atomic<Bool>(false)

    /// Whether the last call left a connection open; never waits (for health checks).
    public var isConnectedNow: Bool { connected.load(ordering: .relaxed) }
    /// Mirrors whether the open connection is blocked by the broker (`connection.blocked`).
    private let blocked = Atomic<Bool>(false)
    /// Whether the broker has blocked the open connection (a resource alarm); never waits.
    public var isBlockedNow: Bool { blocked.load(ordering: .relaxed) }
    /// Called on the owner's thread whenever the blocked state changes.
    private let onBlockedChange: (@Sendable (Bool) -> Void)?
    private let setup: (AMQPConnection) throws -> Void
    private let logger: Logger

    init(
        configuration: AMQPConfiguration, logger: Logger, onBlockedChange: (@Sendable (Bool) -> Void)? = nil,
        setup: @escaping (AMQPConnection) throws -> Void
    ) {
        self.onBlockedChange = onBlockedChange
        self.configuration = configuration
        self.logger = logger
        self.setup = setup
        thread.start()
    }

    deinit {
        try? thread.syncShutdownGracefully()
    }

    /// True while a connection is open (as far as the last call knows).
    public var isConnected: Bool {
        get async { (try? await thread.runIfActive { [self] in connection?.isOpen ?? false }) ?? false }
    }

    /// Runs `body` on the owning thread with an open connection.
    func run<R: Sendable>(_ body: @escaping @Sendable (AMQPConnection) throws -> R) async throws -> R {
        try await thread.runIfActive { [self] in
            let open = try openConnection()
            do {
                let result = try body(open)
                if !open.isOpen { connection = nil }
                connected.store(connection?.isOpen ?? false, ordering: .relaxed)
                noteFlow()
                return result
            } catch {
                if !open.isOpen || error is AMQPError {
                    open.abandon()
                    connection = nil
                }
                connected.store(connection?.isOpen ?? false, ordering: .relaxed)
                noteFlow()
                throw error
            }
        }
    }

    /// Mirrors the connection's blocked state and logs each transition. A connection that is gone
    /// is not blocked (it is down, which `isConnectedNow` reports).
    private func noteFlow() {
        let reason = connection.flatMap { $0.isOpen ? $0.blockedReason : nil }
        let now = reason != nil
        guard blocked.exchange(now, ordering: .relaxed) != now else { return }
        if let reason {
            logger.warning(
                "broker blocked publishing (resource alarm); events stay pending until it unblocks",
                metadata: [LogKey.amqpBlockedReason: "\(reason)"])
        } else if connection?.isOpen == true {
            logger.notice("broker unblocked publishing")
        } else {
            logger.notice("broker connection closed while blocked")
        }
        onBlockedChange?(now)
    }

    /// Closes the connection, if any.
    public func close() async {
        _ = try? await thread.runIfActive { [self] in
            connection?.close()
            connection = nil
        }
    }

    private func openConnection() throws -> AMQPConnection {
        if let connection, connection.isOpen { return connection }
        connection = nil
        let endpoint = configuration.endpoint
        let count = endpoint.addresses.count
        let first = lastAddress.map { ($0 + 1) % count } ?? 0
        var failures: [AMQPError] = []
        for index in (0..<count).map({ (first + $0) % count }) {
            generation += 1
            do {
                let fresh = try AMQPConnection(
                    endpoint: endpoint, address: endpoint.addresses[index], heartbeatSeconds: Int32(configuration.heartbeatSeconds),
                    connectTimeout: configuration.connectTimeout, generation: generation)
                try setup(fresh)
                logger.info("AMQP connection open", metadata: [LogKey.amqpEndpoint: "\(endpoint.link(endpoint.addresses[index]))"])
                lastAddress = index
                lastFailure = nil
                connection = fresh
                return fresh
            } catch let error as AMQPError {
                failures.append(error)
            }
        }
        let error = Self.combine(failures)
        if error.description != lastFailure {
            lastFailure = error.description
            logger.error(
                "AMQP link down", metadata: [LogKey.amqpEndpoint: "\(endpoint)", LogKey.error: "\(error)", LogKey.errorCause: "\(error.cause)"])
        }
        throw error
    }

    /// One error for a failed attempt on every address: a configuration cause only when every
    /// address failed for one (another node may just be restarting).
    private static func combine(_ failures: [AMQPError]) -> AMQPError {
        guard failures.count > 1 else { return failures[0] }
        let cause = failures.allSatisfy(\.cause.isConfiguration) ? failures[0].cause : .unreachable
        return AMQPError(
            operation: "connect to any broker", message: failures.map(\.description).joined(separator: "; "), cause: cause)
    }
}
