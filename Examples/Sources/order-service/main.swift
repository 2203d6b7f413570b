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

    static let hostSetting = SettingDeclaration(
        env: "ORDER_SERVICE_HOST", flag: "host", default: "127.0.0.1", usedBy: "order-service", "Address to listen on")
    static let portSetting = SettingDeclaration(
        env: "ORDER_SERVICE_PORT", flag: "port", kind: .integer(0...65535), default: "8080", usedBy: "order-service", "Port to listen on")
    static let exchangeSetting = SettingDeclaration(
        env: "ORDER_EXCHANGE", flag: "exchange", default: "orders", usedBy: "order-service", "Exchange the order events go to")

    @Option(name: hostSetting.name, help: hostSetting.argumentHelp)
    var host: String?

    @Option(name: portSetting.name, help: portSetting.argumentHelp)
    var port: Int?

    @Option(name: exchangeSetting.name, help: exchangeSetting.argumentHelp)
    var exchange: String?

    func run() async throws {
        let settings = Settings()
        let logger: Logger
        let app: Application<RouterResponder<BasicRequestContext>>
        let store: OrderStore
        do {
            logger = Runtime.bootstrap(label: "order-service", level: try settings.logLevel(mongo.logLevel))
            let host = try settings.string(host, Self.hostSetting)
            let port = try settings.int(port, Self.portSetting)
            let exchange = try settings.string(exchange, Self.exchangeSetting)
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
