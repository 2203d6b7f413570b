import Logging
import OutboxConsumer
import ServiceLifecycle

/// The whole of a consumer executable: settings, logging, metrics and health, the consumer
/// itself, graceful shutdown. Each consumer differs only in its name and handler.
public enum ConsumerProgram {
    public static func run(
        name: String, defaultHTTPPort: Int, mongo: MongoOptions, options: ConsumerOptions,
        handler: (Settings) throws -> any InboxHandler
    ) async throws {
        let program = "\(name)-consumer"
        let settings = Settings()
        let logger: Logger
        let consumer: InboxConsumer
        var services: [any Service] = []
        do {
            logger = Runtime.bootstrap(label: program, level: try settings.logLevel(mongo.logLevel))
            let registry = OpsServer.bootstrapMetrics()
            let pool = try settings.mongoPool(uri: try mongo.resolvedURI(settings), database: try mongo.resolvedDatabase(settings), appName: program)
            consumer = InboxConsumer(
                configuration: try options.configuration(settings, name: name), pool: pool, amqp: try options.amqp(settings),
                handler: try handler(settings), logger: logger)
            services = try options.opsServices(settings, consumer: consumer, pool: pool, defaultPort: defaultHTTPPort, registry: registry, logger: logger)
        } catch {
            Runtime.failConfiguration(error, program: program)
        }
        try await Runtime.runServices(services + [consumer], shutdownTimeout: .seconds(15), logger: logger)
    }
}
