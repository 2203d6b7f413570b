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
    @Option(name: SettingDeclaration.amqpURL.name, help: SettingDeclaration.amqpURL.argumentHelp)
    public var amqpURL: String?

    @Option(name: SettingDeclaration.consumerExchange.name, help: SettingDeclaration.consumerExchange.argumentHelp)
    public var exchange: String?

    @Option(name: SettingDeclaration.consumerQueue.name, help: SettingDeclaration.consumerQueue.argumentHelp)
    public var queue: String?

    @Option(name: SettingDeclaration.consumerQueueType.name, help: SettingDeclaration.consumerQueueType.argumentHelp)
    public var queueType: String?

    @Option(name: SettingDeclaration.consumerPrefetch.name, help: SettingDeclaration.consumerPrefetch.argumentHelp)
    public var prefetch: Int?

    @Option(name: SettingDeclaration.consumerBatchSize.name, help: SettingDeclaration.consumerBatchSize.argumentHelp)
    public var batchSize: Int?

    @Option(name: SettingDeclaration.consumerBatchWait.name, help: SettingDeclaration.consumerBatchWait.argumentHelp)
    public var batchWait: String?

    @Option(name: SettingDeclaration.consumerMaxAttempts.name, help: SettingDeclaration.consumerMaxAttempts.argumentHelp)
    public var maxAttempts: Int?

    @Option(name: SettingDeclaration.consumerInboxRetention.name, help: SettingDeclaration.consumerInboxRetention.argumentHelp)
    public var inboxRetention: String?

    @Option(name: SettingDeclaration.consumerHTTPAddress.name, help: SettingDeclaration.consumerHTTPAddress.argumentHelp)
    public var httpAddress: String?

    @Option(name: SettingDeclaration.consumerMetricsInterval.name, help: SettingDeclaration.consumerMetricsInterval.argumentHelp)
    public var metricsInterval: String?

    @Option(name: SettingDeclaration.metricsEventTypes.name, help: SettingDeclaration.metricsEventTypes.argumentHelp)
    public var metricsEventTypes: Int?

    public init() {}

    /// The ops server for `consumer` (metrics, liveness, readiness: broker connected and database reachable).
    public func opsServices(
        _ settings: Settings, consumer: InboxConsumer, pool: MongoClientPool, amqp: AMQPConfiguration, defaultPort: Int,
        registry: PrometheusCollectorRegistry, logger: Logger
    ) throws -> [any Service] {
        let text = try settings.string(httpAddress, .consumerHTTPAddress, default: "127.0.0.1:\(defaultPort)")
        let interval = try settings.duration(metricsInterval, .consumerMetricsInterval)
        var services: [any Service] = [
            ConnectionGauges(probes: [("broker", { consumer.isConnectedNow })]),
            DeadLetterGauge(
                consumer: consumer.configuration.name, queue: consumer.configuration.topology.deadLetterQueue, amqp: amqp,
                interval: interval, logger: logger),
        ]
        guard text != "off" else { return services }
        let endpoint = try OpsServer.address(text, setting: SettingDeclaration.consumerHTTPAddress.label)
        services.append(
            OpsServer.make(host: endpoint.host, port: endpoint.port, registry: registry, logger: logger) {
                ["database": .init(up: (try? await pool.ping()) != nil), "broker": .init(up: consumer.isConnectedNow)]
            })
        return services
    }

    public func amqp(_ settings: Settings) throws -> AMQPConfiguration {
        try settings.amqp(amqpURL)
    }

    func queueType(_ settings: Settings) throws -> ConsumerTopology.QueueType {
        let raw = try settings.string(queueType, .consumerQueueType)
        guard let type = ConsumerTopology.QueueType(rawValue: raw) else {
            throw ConfigurationError(setting: SettingDeclaration.consumerQueueType.label, reason: "'\(raw)' is not quorum or classic")
        }
        return type
    }

    public func configuration(_ settings: Settings, name: String) throws -> ConsumerConfiguration {
        let queue = try settings.string(queue, .consumerQueue, default: "\(name).order-created")
        let batchSize = try settings.int(batchSize, .consumerBatchSize)
        let prefetch = try settings.int(prefetch, .consumerPrefetch, default: min(max(2 * batchSize, 32), 1000))
        guard prefetch >= batchSize else {
            throw ConfigurationError(
                setting: SettingDeclaration.consumerPrefetch.label,
                reason: "\(prefetch) is less than the batch size \(batchSize) (\(SettingDeclaration.consumerBatchSize.env)): batches could never fill"
            )
        }
        let topology = ConsumerTopology(
            exchange: try settings.string(exchange, .consumerExchange),
            queue: queue, bindings: ["order.created"],
            queueType: try queueType(settings),
            prefetch: UInt16(prefetch))
        return ConsumerConfiguration(
            name: name, topology: topology,
            maxAttempts: try settings.int(maxAttempts, .consumerMaxAttempts),
            inboxRetention: try settings.duration(inboxRetention, .consumerInboxRetention),
            batchSize: batchSize,
            batchWait: try settings.duration(batchWait, .consumerBatchWait))
    }
}
