import ArgumentParser
import OutboxRuntime
import OutboxTracing

@main
struct RelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-relay", abstract: "Publishes outbox events from MongoDB to RabbitMQ with publisher confirms.",
        discussion: RelayProgram.discussion)

    @OptionGroup var mongo: MongoOptions
    @OptionGroup var options: RelayOptions

    func run() async throws {
        try await RelayProgram.run(mongo: mongo, options: options, tracing: TracingBootstrap.start)
    }
}
