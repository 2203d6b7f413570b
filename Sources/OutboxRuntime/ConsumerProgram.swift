import Foundation
import Logging
import OutboxConsumer
import ServiceLifecycle

/// The whole of a consumer executable: settings, logging, metrics and health, the consumer
/// itself, graceful shutdown. Each consumer differs only in its name and handler.
public enum ConsumerProgram {
    public static func run(
        name: String, defaultHTTPPort: Int, mongo: MongoOptions, options: ConsumerOptions, tracing startTracing: Runtime.StartTracing? = nil,
        handler: (Settings) throws -> any InboxHandler
    ) async throws {
        let program = "\(name)-consumer"
        let settings = Settings()
        let logger: Logger
        let consumer: InboxConsumer
        var services: [any Service] = []
        do {
            logger = Runtime.bootstrap(label: program, level: try settings.logLevel(mongo.logLevel))
            let registry = OpsServer.bootstrapMetrics(eventTypes: try settings.int(options.metricsEventTypes, .metricsEventTypes))
            // The span exporter first: it stops last and exports what the consumer ended.
            if let tracing = try startTracing?(program, ProcessInfo.processInfo.environment, logger) {
                services.append(tracing)
            }
            let pool = try settings.mongoPool(uri: try mongo.resolvedURI(settings), database: try mongo.resolvedDatabase(settings), appName: program)
            let configuration = try options.configuration(settings, name: name)
            let amqp = try options.amqp(settings)
            let topology = configuration.topology
            await Runtime.checkLinks(
                program: program, mongo: pool, amqp: amqp, broker: .wait, brokerCheck: { try await $0.declare(topology) }, logger: logger)
            consumer = InboxConsumer(configuration: configuration, pool: pool, amqp: amqp, handler: try handler(settings), logger: logger)
            services += try options.opsServices(
                settings, consumer: consumer, pool: pool, amqp: amqp, defaultPort: defaultHTTPPort, registry: registry, logger: logger)
        } catch {
            Runtime.failConfiguration(error, program: program)
        }
        try await Runtime.runServices(services + [consumer], shutdownTimeout: .seconds(15), logger: logger)
    }
}
