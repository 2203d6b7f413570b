import Logging
import Metrics
import Outbox
import OutboxAMQP
import ServiceLifecycle

/// Samples the depth of a consumer's dead-letter queue every `interval` into
/// `outbox_consumer_dead_letters{consumer}`: the messages waiting for an operator
/// (`outboxctl dlq list`). Reads with a passive declare on a connection of its own, so the
/// consuming channel is never held up.
public final class DeadLetterGauge: Service {
    private let admin: AMQPAdmin
    private let queue: String
    private let gauge: Gauge
    private let interval: Duration
    private let logger: Logger

    public init(consumer: String, queue: String, amqp: AMQPConfiguration, interval: Duration = .seconds(15), logger: Logger) {
        admin = AMQPAdmin(configuration: amqp, logger: logger)
        self.queue = queue
        gauge = Gauge(label: "outbox_consumer_dead_letters", dimensions: [("consumer", consumer)])
        self.interval = interval
        self.logger = logger
    }

    /// Reads the depth once and records it; nil (nothing recorded) while the queue does not exist.
    @discardableResult
    public func sample() async throws -> Int? {
        guard let depth = try await admin.messageCount(queue) else { return nil }
        gauge.record(depth)
        return depth
    }

    public func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await sample()
            } catch {
                // The consumer declares the queue when it connects; until then there is nothing to count.
                logger.debug("dead-letter queue depth not read", metadata: [LogKey.error: "\(error)"])
            }
            // Woken by a graceful shutdown: the service stops at once, not an interval later.
            try? await cancelWhenGracefulShutdown { [interval] in try await Task.sleep(for: interval) }
        }
        await admin.close()
    }
}
