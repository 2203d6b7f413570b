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

    @Option(help: "Unacknowledged messages in flight, 1-1000 (env CONSUMER_PREFETCH; default 32).")
    public var prefetch: Int?

    @Option(help: "Handler tries before a message is dead-lettered, 1-100 (env CONSUMER_MAX_ATTEMPTS; default 5).")
    public var maxAttempts: Int?

    @Option(help: "How long processed message ids are kept, e.g. 7d as 168h (env CONSUMER_INBOX_RETENTION; default 168h).")
    public var inboxRetention: String?

    @Option(help: "Address of /metrics, /health/live and /health/ready, host:port; 'off' for none (env CONSUMER_HTTP_ADDRESS; default 127.0.0.1:9401 inventory, 9402 notification).")
    public var httpAddress: String?

    public init() {}

    /// The ops server for `consumer` (metrics, liveness, readiness: broker connected and database reachable).
    public func opsServices(_ settings: Settings, consumer: InboxConsumer, pool: MongoClientPool, defaultPort: Int, registry: PrometheusCollectorRegistry, logger: Logger) throws -> [any Service] {
        let text = try settings.string(httpAddress, env: "CONSUMER_HTTP_ADDRESS", default: "127.0.0.1:\(defaultPort)", flagName: "--http-address")
        var services: [any Service] = [ConnectionGauges(probes: [("broker", { consumer.isConnectedNow })])]
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
        let topology = ConsumerTopology(
            exchange: try settings.string(exchange, env: "CONSUMER_EXCHANGE", default: "orders", flagName: "--exchange"),
            queue: queue, bindings: ["order.created"],
            queueType: try queueType(settings),
            prefetch: UInt16(try settings.int(prefetch, env: "CONSUMER_PREFETCH", default: 32, flagName: "--prefetch", range: 1...1000)))
        return ConsumerConfiguration(
            name: name, topology: topology,
            maxAttempts: try settings.int(maxAttempts, env: "CONSUMER_MAX_ATTEMPTS", default: 5, flagName: "--max-attempts", range: 1...100),
            inboxRetention: try settings.duration(inboxRetention, env: "CONSUMER_INBOX_RETENTION", default: "168h", flagName: "--inbox-retention"))
    }
}
