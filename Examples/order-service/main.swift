import ArgumentParser
import Hummingbird
import Logging
import OrderService
import OutboxMongo
import OutboxRuntime

@main
struct OrderServiceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "order-service",
        abstract: "The reference order service: POST /orders, GET /orders/{id}, GET /health.",
        discussion: """
            POST /orders writes the order and its OrderCreated event to the outbox in one MongoDB \
            transaction; outbox-relay publishes the event. Every option can also be set by the \
            environment variable named in its help.
            """)

    @OptionGroup var mongo: MongoOptions

    @Option(help: "Address to listen on (env ORDER_SERVICE_HOST; default 127.0.0.1).")
    var host: String?

    @Option(help: "Port to listen on (env ORDER_SERVICE_PORT; default 8080).")
    var port: Int?

    @Option(help: "Exchange the order events go to (env ORDER_EXCHANGE; default orders).")
    var exchange: String?

    func run() async throws {
        let settings = Settings()
        let logger: Logger
        let app: Application<RouterResponder<BasicRequestContext>>
        let store: OrderStore
        do {
            logger = Runtime.bootstrap(label: "order-service", level: try settings.logLevel(mongo.logLevel))
            let host = try settings.string(host, env: "ORDER_SERVICE_HOST", default: "127.0.0.1", flagName: "--host")
            let port = try settings.int(port, env: "ORDER_SERVICE_PORT", default: 8080, flagName: "--port", range: 0...65535)
            let exchange = try settings.string(exchange, env: "ORDER_EXCHANGE", default: "orders", flagName: "--exchange")
            let pool = try settings.mongoPool(
                uri: try mongo.resolvedURI(settings), database: try mongo.resolvedDatabase(settings), appName: "order-service", threads: 8)
            await Runtime.checkLinks(program: "order-service", mongo: pool, amqp: nil, broker: .exit, logger: logger)
            store = OrderStore(pool: pool, exchange: exchange)
            app = Application(
                router: OrderAPI(store: store).buildRouter(),
                configuration: .init(address: .hostname(host, port: port), serverName: "order-service"),
                logger: logger)
        } catch {
            Runtime.failConfiguration(error, program: "order-service")
        }
        try await store.ensureIndexes()
        try await Runtime.runServices([app], shutdownTimeout: .seconds(10), logger: logger)
    }
}
