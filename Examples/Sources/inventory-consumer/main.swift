import ArgumentParser
import Inventory
import OutboxConsumer
import OutboxMongo
import OutboxRuntime
import OutboxTracing

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
            """ + " " + SettingDeclaration.tracingHelp)

    @OptionGroup var mongo: MongoOptions
    @OptionGroup var consumer: ConsumerOptions

    static let eventsExchangeSetting = SettingDeclaration(
        env: "INVENTORY_EXCHANGE", flag: "events-exchange", default: "inventory", usedBy: "inventory-consumer",
        "Exchange for InventoryReserved / InventoryReservationFailed")

    @Option(name: eventsExchangeSetting.name, help: eventsExchangeSetting.argumentHelp)
    var eventsExchange: String?

    func run() async throws {
        try await ConsumerProgram.run(name: "inventory", defaultHTTPPort: 9401, mongo: mongo, options: consumer, tracing: TracingBootstrap.start) {
            settings in
            InventoryHandler(writer: OutboxWriter(), exchange: try settings.string(eventsExchange, Self.eventsExchangeSetting))
        }
    }
}
