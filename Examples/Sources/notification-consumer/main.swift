import ArgumentParser
import Notifications
import OutboxConsumer
import OutboxMongo
import OutboxRuntime
import OutboxTracing

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
            """ + " " + SettingDeclaration.tracingHelp)

    @OptionGroup var mongo: MongoOptions
    @OptionGroup var consumer: ConsumerOptions

    func run() async throws {
        try await ConsumerProgram.run(name: "notification", defaultHTTPPort: 9402, mongo: mongo, options: consumer, tracing: TracingBootstrap.start) {
            settings in
            NotificationHandler()
        }
    }
}
