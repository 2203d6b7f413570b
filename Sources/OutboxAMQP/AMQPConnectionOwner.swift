import Logging
import NIOPosix
import Outbox
import Synchronization

/// Settings shared by publishers and consumers.
public struct AMQPConfiguration: Sendable {
    public var endpoint: AMQPEndpoint
    /// Heartbeat interval negotiated with the broker; 0 turns heartbeats off.
    public var heartbeatSeconds: Int
    /// Limit for connecting, logging in and each blocking read or write.
    public var connectTimeout: Duration

    public init(endpoint: AMQPEndpoint, heartbeatSeconds: Int = 30, connectTimeout: Duration = .seconds(5)) {
        self.endpoint = endpoint
        self.heartbeatSeconds = heartbeatSeconds
        self.connectTimeout = connectTimeout
    }
}

/// Gives one AMQP connection a single owner: a thread of its own.
///
/// rabbitmq-c blocks and is not thread-safe, so every call runs on one dedicated thread, in
/// submission order, never on Swift's cooperative pool. The connection is opened on first use
/// and after any failure (an `AMQPError` closes it; the next call reconnects and runs `setup`
/// again, e.g. `confirm.select` and declarations).
///
/// `@unchecked Sendable`: `connection` is read and written only on `thread`, which has exactly one
/// thread, so no two calls ever touch it at once.
public final class AMQPConnectionOwner: @unchecked Sendable {
    public let configuration: AMQPConfiguration
    private let thread = NIOThreadPool(numberOfThreads: 1)
    private var connection: AMQPConnection? {
        didSet { connected.store(connection?.isOpen ?? false, ordering: .relaxed) }
    }
    private var generation = 0
    /// Mirrors whether a connection is open, readable from any thread without waiting for the owner's.
    private let connected = Atomic<Bool>(false)

    /// Whether the last call left a connection open; never waits (for health checks).
    public var isConnectedNow: Bool { connected.load(ordering: .relaxed) }
    private let setup: (AMQPConnection) throws -> Void
    private let logger: Logger

    init(configuration: AMQPConfiguration, logger: Logger, setup: @escaping (AMQPConnection) throws -> Void) {
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
                return result
            } catch {
                if !open.isOpen || error is AMQPError {
                    open.abandon()
                    connection = nil
                }
                connected.store(connection?.isOpen ?? false, ordering: .relaxed)
                throw error
            }
        }
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
        generation += 1
        let fresh = try AMQPConnection(
            endpoint: configuration.endpoint, heartbeatSeconds: Int32(configuration.heartbeatSeconds),
            connectTimeout: configuration.connectTimeout, generation: generation)
        try setup(fresh)
        logger.info("AMQP connection open", metadata: ["amqp.endpoint": "\(configuration.endpoint)"])
        connection = fresh
        return fresh
    }
}
