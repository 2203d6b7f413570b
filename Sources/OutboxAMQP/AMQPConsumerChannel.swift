import Logging
import Outbox

/// Where a consumer's messages come from and where its failures go.
public struct ConsumerTopology: Sendable {
    /// RabbitMQ queue types (`x-queue-type`).
    public enum QueueType: String, Sendable {
        /// Replicated with Raft across the cluster's nodes; survives the loss of a minority of nodes.
        /// RabbitMQ's recommendation for data safety (3.8+; works on a single node too).
        case quorum
        /// Kept on one node; lost with that node's disk.
        case classic
    }

    /// Topic exchange the events are published to.
    public var exchange: String
    /// The consumer's durable queue.
    public var queue: String
    /// Routing keys bound to the queue, e.g. `order.created`.
    public var bindings: [String]
    /// The consumer's own dead-letter exchange (fanout) and queue.
    public var deadLetterExchange: String
    public var deadLetterQueue: String
    /// Type of the queue and of the dead-letter queue.
    public var queueType: QueueType
    /// Unacknowledged deliveries the broker sends ahead.
    public var prefetch: UInt16

    public init(
        exchange: String, queue: String, bindings: [String], deadLetterExchange: String? = nil,
        deadLetterQueue: String? = nil, queueType: QueueType = .quorum, prefetch: UInt16 = 32
    ) {
        self.exchange = exchange
        self.queue = queue
        self.bindings = bindings
        self.deadLetterExchange = deadLetterExchange ?? "\(queue).dlx"
        self.deadLetterQueue = deadLetterQueue ?? "\(queue).dlq"
        self.queueType = queueType
        self.prefetch = prefetch
    }

    /// Declares exchanges, queues and bindings; idempotent. A queue that exists with another type
    /// fails with an `AMQPError` whose cause is `.inequivalent`.
    func declare(on connection: AMQPConnection) throws {
        try connection.declareExchange(exchange)
        try connection.declareExchange(deadLetterExchange, type: "fanout")
        let typed = queueTypeArguments
        try connection.declareQueue(deadLetterQueue, arguments: typed)
        try connection.bindQueue(deadLetterQueue, exchange: deadLetterExchange, routingKey: "")
        try connection.declareQueue(queue, arguments: typed.merging(["x-dead-letter-exchange": .string(deadLetterExchange)]) { $1 })
        for key in bindings {
            try connection.bindQueue(queue, exchange: exchange, routingKey: key)
        }
    }

    /// Arguments that declare a queue of `queueType` (none for classic, so that queues declared
    /// before queue types existed stay equivalent).
    public var queueTypeArguments: [String: AMQPArgument] {
        queueType == .classic ? [:] : ["x-queue-type": .string(queueType.rawValue)]
    }
}

/// A consuming connection: declares the topology idempotently whenever it (re)connects, then
/// delivers with manual acks and bounded prefetch.
public final class AMQPConsumerChannel: Sendable {
    private let owner: AMQPConnectionOwner
    public let topology: ConsumerTopology

    public init(configuration: AMQPConfiguration, topology: ConsumerTopology, logger: Logger) {
        self.topology = topology
        owner = AMQPConnectionOwner(configuration: configuration, logger: logger) { connection in
            try topology.declare(on: connection)
            try connection.qos(prefetch: topology.prefetch)
            try connection.consume(queue: topology.queue)
        }
    }

    /// Connects and declares the topology now; throws when it cannot.
    public func connect() async throws { try await owner.run { _ in } }

    public var isConnected: Bool { get async { await owner.isConnected } }

    /// Whether the connection is open right now (no waiting; for readiness checks).
    public var isConnectedNow: Bool { owner.isConnectedNow }

    /// The next delivery, or nil when none came within `timeout`.
    public func next(timeout: Duration) async throws -> AMQPDelivery? {
        try await owner.run { try $0.nextDelivery(timeout: timeout) }
    }

    /// Acks a delivery. A delivery from an earlier connection cannot be acked (the broker has
    /// already requeued it); that is not an error, it will be redelivered and de-duplicated.
    public func ack(_ delivery: AMQPDelivery) async throws {
        try await owner.run { connection in
            guard connection.generation == delivery.connectionGeneration else { return }
            try connection.ack(delivery.deliveryTag)
        }
    }

    /// Acks `delivery` and every earlier delivery of its connection not yet acked or rejected, in
    /// one frame. Like `ack`, does nothing for a delivery of an earlier connection.
    public func ack(upTo delivery: AMQPDelivery) async throws {
        try await owner.run { connection in
            guard connection.generation == delivery.connectionGeneration else { return }
            try connection.ack(delivery.deliveryTag, multiple: true)
        }
    }

    /// Rejects a delivery; without requeue it goes to the dead-letter exchange.
    public func reject(_ delivery: AMQPDelivery, requeue: Bool) async throws {
        try await owner.run { connection in
            guard connection.generation == delivery.connectionGeneration else { return }
            try connection.reject(delivery.deliveryTag, requeue: requeue)
        }
    }

    public func close() async { await owner.close() }
}

/// Broker administration for tools and tests: declare, bind, purge, inspect queues.
public final class AMQPAdmin: Sendable {
    let owner: AMQPConnectionOwner

    public init(configuration: AMQPConfiguration, logger: Logger) {
        owner = AMQPConnectionOwner(configuration: configuration, logger: logger) { _ in }
    }

    /// Admin operations are idempotent: one that fails on a connection that went stale while idle
    /// (the broker closed it, or restarted) is tried once more on a fresh one.
    func run<R: Sendable>(_ body: @escaping @Sendable (AMQPConnection) throws -> R) async throws -> R {
        do {
            return try await owner.run(body)
        } catch is AMQPError {
            return try await owner.run(body)
        }
    }

    /// Opens the connection (trying every broker address); throws the reason when it cannot.
    public func connect() async throws {
        try await owner.run { _ in }
    }

    /// Declares a consumer's exchanges, queues and bindings, as its channel does on connecting.
    public func declare(_ topology: ConsumerTopology) async throws {
        try await run { try topology.declare(on: $0) }
    }

    public func declareExchange(_ name: String, type: String = "topic") async throws {
        try await run { try $0.declareExchange(name, type: type) }
    }

    /// Declares a durable queue; returns its message count.
    @discardableResult
    public func declareQueue(_ name: String, arguments: [String: AMQPArgument] = [:]) async throws -> Int {
        try await run { try $0.declareQueue(name, arguments: arguments) }
    }

    public func bindQueue(_ queue: String, exchange: String, routingKey: String) async throws {
        try await run { try $0.bindQueue(queue, exchange: exchange, routingKey: routingKey) }
    }

    public func deleteQueue(_ name: String) async throws {
        try await run { try $0.deleteQueue(name) }
    }

    public func deleteExchange(_ name: String) async throws {
        try await run { try $0.deleteExchange(name) }
    }

    @discardableResult
    public func purgeQueue(_ name: String) async throws -> Int {
        try await run { try $0.purgeQueue(name) }
    }

    /// Takes one message off a queue (auto-ack); nil when it is empty.
    public func get(_ queue: String) async throws -> AMQPDelivery? {
        try await run { try $0.get(queue: queue) }
    }

    /// Takes every message off a queue.
    public func drain(_ queue: String) async throws -> [AMQPDelivery] {
        var all: [AMQPDelivery] = []
        while let delivery = try await get(queue) { all.append(delivery) }
        return all
    }

    public func close() async { await owner.close() }
}
