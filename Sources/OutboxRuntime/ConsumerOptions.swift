import ArgumentParser
import Logging
import OutboxMongo
import Prometheus
import ServiceLifecycle
import Outbox
import OutboxAMQP
import OutboxConsumer

/// Options every consumer takes.
public struct ConsumerOptions: ParsableArguments {
    @Option(name: .customLong("amqp-url"), help: ArgumentHelp(Help.amqpURL))
    public var amqpURL: String?

    @Option(help: "Exchange to consume from (env CONSUMER_EXCHANGE; default orders).")
    public var exchange: String?

    @Option(help: "Queue name (env CONSUMER_QUEUE; default <consumer>.order-created).")
    public var queue: String?

    @Option(help: "Type of the queue and its dead-letter queue: quorum (replicated, RabbitMQ's choice for data safety) or classic (env CONSUMER_QUEUE_TYPE; default quorum). An existing queue keeps its type; see docs/production-checklist.md to move one.")
    public var queueType: String?

    @Option(help: "Unacknowledged messages in flight, 1-1000, at least the batch size (env CONSUMER_PREFETCH; default twice the batch size, at least 32).")
    public var prefetch: Int?

    @Option(help: "Most messages applied in one transaction and acked together, 1-1000; 1 applies them one by one (env CONSUMER_BATCH_SIZE; default 32).")
    public var batchSize: Int?

    @Option(help: "How long a batch waits for more messages once it has one, e.g. 100ms; bounds the latency batching adds to a lone message, and under a steady trickle makes batches of more than one (env CONSUMER_BATCH_WAIT; default 100ms; 0 takes only what has arrived).")
    public var batchWait: String?

    @Option(help: "Handler tries before a message is dead-lettered, 1-100 (env CONSUMER_MAX_ATTEMPTS; default 5).")
    public var maxAttempts: Int?

    @Option(help: "How long processed message ids are kept, e.g. 7d as 168h (env CONSUMER_INBOX_RETENTION; default 168h).")
    public var inboxRetention: String?

    @Option(help: "Address of /metrics, /health/live and /health/ready, host:port; 'off' for none (env CONSUMER_HTTP_ADDRESS; default 127.0.0.1:9401 inventory, 9402 notification).")
    public var httpAddress: String?

    @Option(help: "How often the dead-letter queue's depth is read for outbox_consumer_dead_letters, e.g. 15s (env CONSUMER_METRICS_INTERVAL; default 15s).")
    public var metricsInterval: String?

    public init() {}

    /// The ops server for `consumer` (metrics, liveness, readiness: broker connected and database reachable).
    public func opsServices(
        _ settings: Settings, consumer: InboxConsumer, pool: MongoClientPool, amqp: AMQPConfiguration, defaultPort: Int,
        registry: PrometheusCollectorRegistry, logger: Logger
    ) throws -> [any Service] {
        let text = try settings.string(httpAddress, env: "CONSUMER_HTTP_ADDRESS", default: "127.0.0.1:\(defaultPort)", flagName: "--http-address")
        let interval = try settings.duration(metricsInterval, env: "CONSUMER_METRICS_INTERVAL", default: "15s", flagName: "--metrics-interval")
        var services: [any Service] = [
            ConnectionGauges(probes: [("broker", { consumer.isConnectedNow })]),
            DeadLetterGauge(
                consumer: consumer.configuration.name, queue: consumer.configuration.topology.deadLetterQueue, amqp: amqp,
                interval: interval, logger: logger),
        ]
        guard text != "off" else { return services }
        let endpoint = try OpsServer.address(text, setting: "CONSUMER_HTTP_ADDRESS (--http-address)")
        services.append(OpsServer.make(host: endpoint.host, port: endpoint.port, registry: registry, logger: logger) {
            ["database": .init(up: (try? await pool.ping()) != nil), "broker": .init(up: consumer.isConnectedNow)]
        })
        return services
    }

    public func amqp(_ settings: Settings) throws -> AMQPConfiguration {
        try settings.amqp(amqpURL)
    }

    func queueType(_ settings: Settings) throws -> ConsumerTopology.QueueType {
        let raw = try settings.string(queueType, env: "CONSUMER_QUEUE_TYPE", default: "quorum", flagName: "--queue-type")
        guard let type = ConsumerTopology.QueueType(rawValue: raw) else {
            throw ConfigurationError(setting: "CONSUMER_QUEUE_TYPE (--queue-type)", reason: "'\(raw)' is not quorum or classic")
        }
        return type
    }

    public func configuration(_ settings: Settings, name: String) throws -> ConsumerConfiguration {
        let queue = try settings.string(queue, env: "CONSUMER_QUEUE", default: "\(name).order-created", flagName: "--queue")
        let batchSize = try settings.int(batchSize, env: "CONSUMER_BATCH_SIZE", default: 32, flagName: "--batch-size", range: 1...1000)
        let prefetch = try settings.int(
            prefetch, env: "CONSUMER_PREFETCH", default: min(max(2 * batchSize, 32), 1000), flagName: "--prefetch", range: 1...1000)
        guard prefetch >= batchSize else {
            throw ConfigurationError(
                setting: "CONSUMER_PREFETCH (--prefetch)",
                reason: "\(prefetch) is less than the batch size \(batchSize) (CONSUMER_BATCH_SIZE): batches could never fill")
        }
        let topology = ConsumerTopology(
            exchange: try settings.string(exchange, env: "CONSUMER_EXCHANGE", default: "orders", flagName: "--exchange"),
            queue: queue, bindings: ["order.created"],
            queueType: try queueType(settings),
            prefetch: UInt16(prefetch))
        return ConsumerConfiguration(
            name: name, topology: topology,
            maxAttempts: try settings.int(maxAttempts, env: "CONSUMER_MAX_ATTEMPTS", default: 5, flagName: "--max-attempts", range: 1...100),
            inboxRetention: try settings.duration(inboxRetention, env: "CONSUMER_INBOX_RETENTION", default: "168h", flagName: "--inbox-retention"),
            batchSize: batchSize,
            batchWait: try settings.duration(batchWait, env: "CONSUMER_BATCH_WAIT", default: "100ms", flagName: "--batch-wait", allowZero: true))
    }
}
