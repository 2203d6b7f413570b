import ArgumentParser
import Logging
import Inventory
import OutboxConsumer
import OutboxMongo
import OutboxRuntime
import ServiceLifecycle

@main
struct ConsumerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inventory-consumer",
        abstract: "Reserves stock for each OrderCreated and emits InventoryReserved or InventoryReservationFailed through the outbox.",
        discussion: """
            Consumes order.created from its own durable queue with manual acks. Each message's \
            effect and its id in the inbox are written in one MongoDB transaction, so a redelivered \
            message changes nothing. A message whose handler keeps failing goes to the consumer's \
            dead-letter queue with the reason. Every option can also be set by the environment \
            variable named in its help.
            """)

    @OptionGroup var mongo: MongoOptions
    @OptionGroup var consumer: ConsumerOptions

    @Option(help: "Exchange for InventoryReserved / InventoryReservationFailed (env INVENTORY_EXCHANGE; default inventory).")
    var eventsExchange: String?

    func run() async throws {
        let settings = Settings()
        let logger: Logger
        let service: InboxConsumer
        var services: [any Service] = []
        do {
            logger = Runtime.bootstrap(label: "inventory-consumer", level: try settings.logLevel(mongo.logLevel))
            let registry = OpsServer.bootstrapMetrics()
            let pool = try settings.mongoPool(
                uri: try mongo.resolvedURI(settings), database: try mongo.resolvedDatabase(settings), appName: "inventory-consumer")
            service = InboxConsumer(
                configuration: try consumer.configuration(settings, name: "inventory"), pool: pool,
                amqp: try consumer.amqp(settings), handler: InventoryHandler(writer: OutboxWriter(), exchange: try settings.string(eventsExchange, env: "INVENTORY_EXCHANGE", default: "inventory", flagName: "--events-exchange")), logger: logger)
            services = try consumer.opsServices(settings, consumer: service, pool: pool, defaultPort: 9401, registry: registry, logger: logger)
        } catch {
            Runtime.failConfiguration(error, program: "inventory-consumer")
        }
        try await Runtime.runServices(services + [service], shutdownTimeout: .seconds(15), logger: logger)
    }
}
