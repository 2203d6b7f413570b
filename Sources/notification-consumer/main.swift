import ArgumentParser
import Logging
import Notifications
import OutboxConsumer
import OutboxMongo
import OutboxRuntime
import ServiceLifecycle

@main
struct ConsumerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "notification-consumer",
        abstract: "Records an order-confirmation message for the customer of each OrderCreated.",
        discussion: """
            Consumes order.created from its own durable queue with manual acks. Each message's \
            effect and its id in the inbox are written in one MongoDB transaction, so a redelivered \
            message changes nothing. A message whose handler keeps failing goes to the consumer's \
            dead-letter queue with the reason. Every option can also be set by the environment \
            variable named in its help.
            """)

    @OptionGroup var mongo: MongoOptions
    @OptionGroup var consumer: ConsumerOptions

    func run() async throws {
        let settings = Settings()
        let logger: Logger
        let service: InboxConsumer
        var services: [any Service] = []
        do {
            logger = Runtime.bootstrap(label: "notification-consumer", level: try settings.logLevel(mongo.logLevel))
            let registry = OpsServer.bootstrapMetrics()
            let pool = try settings.mongoPool(
                uri: try mongo.resolvedURI(settings), database: try mongo.resolvedDatabase(settings), appName: "notification-consumer")
            service = InboxConsumer(
                configuration: try consumer.configuration(settings, name: "notification"), pool: pool,
                amqp: try consumer.amqp(settings), handler: NotificationHandler(), logger: logger)
            services = try consumer.opsServices(settings, consumer: service, pool: pool, defaultPort: 9402, registry: registry, logger: logger)
        } catch {
            Runtime.failConfiguration(error, program: "notification-consumer")
        }
        try await Runtime.runServices(services + [service], shutdownTimeout: .seconds(15), logger: logger)
    }
}
