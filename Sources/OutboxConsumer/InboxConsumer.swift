import Foundation
import Logging
import Metrics
import Outbox
import OutboxAMQP
import OutboxMongo
import ServiceLifecycle
import Synchronization

/// Applies a message's effect. Runs inside the MongoDB transaction that also records the
/// message id in the consumer's inbox, so the effect and the record commit together or not at all.
public protocol InboxHandler: Sendable {
    func handle(_ message: IncomingMessage, connection: MongoConnection) throws
}

/// A handler failure that retrying cannot fix (e.g. a body that does not parse): dead-lettered at once.
public struct PermanentFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public struct ConsumerConfiguration: Sendable {
    /// The consumer's name: inbox entries and log lines carry it.
    public var name: String
    public var topology: ConsumerTopology
    /// Tries of a failing handler before the message is dead-lettered.
    public var maxAttempts: Int
    /// Pause between tries of a failing handler.
    public var retryDelay: Duration
    /// The inbox collection (shared by consumers; entries carry the consumer's name).
    public var inboxCollection: String
    /// How long processed message ids are kept; nil keeps them for ever.
    public var inboxRetention: Duration?

    public init(
        name: String, topology: ConsumerTopology, maxAttempts: Int = 5, retryDelay: Duration = .milliseconds(100),
        inboxCollection: String = "inbox", inboxRetention: Duration? = .seconds(7 * 24 * 3600)
    ) {
        self.name = name
        self.topology = topology
        self.maxAttempts = maxAttempts
        self.retryDelay = retryDelay
        self.inboxCollection = inboxCollection
        self.inboxRetention = inboxRetention
    }
}

/// Counters a consumer keeps (also exported as metrics).
public struct ConsumerStats: Sendable, Equatable {
    public var processed = 0
    public var duplicates = 0
    public var deadLettered = 0
    public var handlerFailures = 0
}

/// Consumes with manual acks, applies each message's effect exactly once (I4) and acks only after
/// the transaction committed. A message seen before (its id is in the inbox) is acked and skipped.
/// A failing handler is retried `maxAttempts` times, then the message goes to the consumer's
/// dead-letter queue with the reason, and the following messages keep flowing.
public final class InboxConsumer: Service {
    public let configuration: ConsumerConfiguration
    private let pool: MongoClientPool
    private let channel: AMQPConsumerChannel
    private let deadLetters: ConfirmPublisher
    private let handler: any InboxHandler
    private let logger: Logger
    private let counters = Mutex(ConsumerStats())
    private let metrics: ConsumerMetrics

    public init(
        configuration: ConsumerConfiguration, pool: MongoClientPool, amqp: AMQPConfiguration, handler: any InboxHandler,
        logger: Logger
    ) {
        self.configuration = configuration
        self.pool = pool
        self.handler = handler
        var logger = logger
        logger[metadataKey: "consumer"] = "\(configuration.name)"
        self.logger = logger
        metrics = ConsumerMetrics(consumer: configuration.name)
        channel = AMQPConsumerChannel(configuration: amqp, topology: configuration.topology, logger: logger)
        deadLetters = ConfirmPublisher(
            configuration: amqp,
            options: .init(appId: configuration.name, exchangeType: "fanout"),
            logger: logger)
    }

    public var stats: ConsumerStats { counters.withLock { $0 } }

    public var isConnected: Bool { get async { await channel.isConnected } }

    /// Broker connection open right now (for readiness).
    public var isConnectedNow: Bool { channel.isConnectedNow }

    /// Creates the inbox indexes (including the retention TTL); idempotent.
    public func ensureIndexes() async throws {
        var indexes: [Document] = [["key": ["consumer": 1, "processedAt": 1], "name": "consumer_processed"]]
        if let retention = configuration.inboxRetention {
            indexes.append([
                "key": ["processedAt": 1], "name": "retention",
                "expireAfterSeconds": .int64(max(retention.milliseconds / 1000, 1)),
            ])
        }
        let collection = configuration.inboxCollection
        let all = indexes
        try await pool.withConnection { try $0.collection(collection).createIndexes(all) }
    }

    public func run() async throws {
        try await ensureIndexes()
        logger.info("consumer started", metadata: ["amqp.queue": "\(configuration.topology.queue)"])
        var failures = 0
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                guard let delivery = try await channel.next(timeout: .milliseconds(250)) else { continue }
                failures = 0
                await process(delivery)
            } catch {
                failures += 1
                let delay = Duration.milliseconds(min(100 << min(failures, 6), 5000))
                logger.warning("broker connection failed; reconnecting", metadata: ["error": "\(error)", "retry.in": "\(delay)"])
                try? await Task.sleep(for: delay)
            }
        }
        await channel.close()
        await deadLetters.close()
        logger.info("consumer stopped", metadata: ["consumer.processed": "\(stats.processed)"])
    }

    /// Handles one delivery to the end: applied and acked, skipped and acked, dead-lettered, or
    /// (when the database is unreachable) requeued for later.
    func process(_ delivery: AMQPDelivery) async {
        guard let messageId = delivery.messageId, !messageId.isEmpty else {
            await deadLetter(delivery, reason: "message has no message_id", attempts: 0)
            return
        }
        let message = IncomingMessage(
            messageId: messageId, type: delivery.type, routingKey: delivery.routingKey, headers: delivery.headers,
            contentType: delivery.contentType, correlationId: delivery.correlationId, body: delivery.body,
            redelivered: delivery.redelivered)
        var attempts = 0
        while true {
            attempts += 1
            let started = ContinuousClock.now
            let result = await apply(message)
            metrics.handlerDuration.recordNanoseconds((ContinuousClock.now - started).nanoseconds)
            switch result {
            case .applied:
                counters.withLock { $0.processed += 1 }
                metrics.processed.increment()
                await ack(delivery)
                return
            case .duplicate:
                counters.withLock { $0.duplicates += 1 }
                metrics.duplicates.increment()
                logger.debug("duplicate skipped", metadata: ["message.id": "\(messageId)"])
                await recordDuplicate()
                await ack(delivery)
                return
            case .unavailable(let error):
                // The database is down: not the message's fault. Give it back and wait.
                logger.warning("database unavailable; message requeued", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
                try? await channel.reject(delivery, requeue: true)
                return
            case .failed(let error, let permanent):
                counters.withLock { $0.handlerFailures += 1 }
                metrics.failures.increment()
                if permanent || attempts >= configuration.maxAttempts {
                    await deadLetter(delivery, reason: "\(error)", attempts: attempts)
                    return
                }
                logger.info("handler failed; retrying", metadata: ["message.id": "\(messageId)", "attempt": "\(attempts)", "error": "\(error)"])
                try? await Task.sleep(for: configuration.retryDelay)
            }
        }
    }

    enum ApplyResult {
        case applied
        case duplicate
        case unavailable(Error)
        case failed(Error, permanent: Bool)
    }

    private func apply(_ message: IncomingMessage) async -> ApplyResult {
        let inbox = configuration.inboxCollection
        let name = configuration.name
        let handler = self.handler
        let inboxId = "\(name):\(message.messageId)"
        do {
            // A redelivery is usually known already: skip it without opening a transaction. The
            // unique inbox id below still decides when two deliveries race.
            if try await pool.withConnection({ try $0.collection(inbox).findOne(["_id": .string(inboxId)]) != nil }) {
                return .duplicate
            }
            try await pool.withTransaction { connection in
                // The inbox entry goes first: a duplicate fails here, before any effect.
                try connection.collection(inbox).insertOne([
                    "_id": .string(inboxId), "consumer": .string(name),
                    "messageId": .string(message.messageId), "processedAt": .date(Date()),
                ])
                try handler.handle(message, connection: connection)
            }
            return .applied
        } catch let error as MongoError where error.isDuplicateKey {
            return .duplicate
        } catch let error as MongoError where error.isConnectionFailure {
            return .unavailable(error)
        } catch let error as PermanentFailure {
            return .failed(error, permanent: true)
        } catch {
            return .failed(error, permanent: false)
        }
    }

    /// Collection where consumers count what they skipped, so operators (and the demo) can see it.
    public static let statsCollection = "consumer_stats"

    private func recordDuplicate() async {
        let name = configuration.name
        _ = try? await pool.withConnection { connection in
            try connection.collection(Self.statsCollection).updateOne(
                ["_id": .string(name)], ["$inc": ["duplicatesSkipped": 1], "$currentDate": ["updatedAt": true]], upsert: true)
        }
    }

    private func ack(_ delivery: AMQPDelivery) async {
        do {
            try await channel.ack(delivery)
        } catch {
            // The effect is committed; the redelivery this causes is skipped as a duplicate.
            logger.warning("ack failed; message will be redelivered and skipped", metadata: ["error": "\(error)"])
        }
    }

    /// Publishes the message to the consumer's dead-letter exchange with the reason (confirmed),
    /// then acks it. If the dead-letter publish is not confirmed the message is requeued instead:
    /// nothing is dropped.
    private func deadLetter(_ delivery: AMQPDelivery, reason: String, attempts: Int) async {
        var headers = delivery.headers
        headers["x-error"] = .string(String(reason.prefix(1000)))
        headers["x-attempts"] = .int(Int64(attempts))
        headers["x-original-routing-key"] = .string(delivery.routingKey)
        headers["x-consumer"] = .string(configuration.name)
        headers["x-dead-lettered-at"] = .int(Int64(Date().timeIntervalSince1970 * 1000))
        // The original content type, properties and headers go along, so the dead letter reads
        // like the message did (whatever its body format); the aggregate and time are taken from
        // its headers so that the publisher's own headers repeat them unchanged.
        func header(_ name: String) -> HeaderValue? { delivery.headers[name] }
        var aggregateVersion: Int?
        if case .int(let version)? = header("x-aggregate-version") { aggregateVersion = Int(version) }
        var occurredAt = Int64(Date().timeIntervalSince1970 * 1000)
        if case .int(let ms)? = header("x-occurred-at") { occurredAt = ms }
        var aggregateType = "", aggregateId = ""
        if case .string(let s)? = header("x-aggregate-type") { aggregateType = s }
        if case .string(let s)? = header("x-aggregate-id") { aggregateId = s }
        let message = OutboxMessage(
            id: delivery.messageId ?? "", type: delivery.type ?? "", aggregateType: aggregateType, aggregateId: aggregateId,
            aggregateVersion: aggregateVersion, exchange: configuration.topology.deadLetterExchange, routingKey: delivery.routingKey,
            occurredAt: occurredAt, correlationId: delivery.correlationId, headers: headers,
            contentType: delivery.contentType ?? WireFormat.jsonContentType, body: delivery.body)
        let outcome = await deadLetters.publish([message]).first
        if outcome == .acked {
            counters.withLock { $0.deadLettered += 1 }
            metrics.deadLettered.increment()
            logger.error(
                "message dead-lettered",
                metadata: ["message.id": "\(delivery.messageId ?? "-")", "attempts": "\(attempts)", "reason": "\(reason)"])
            await ack(delivery)
        } else {
            logger.error("dead-letter publish not confirmed; message requeued", metadata: ["outcome": "\(String(describing: outcome))"])
            // Pause so a broker that refuses dead letters does not turn into a redelivery storm.
            try? await Task.sleep(for: .seconds(1))
            try? await channel.reject(delivery, requeue: true)
        }
    }
}

/// A consumer's metrics, labelled by consumer name.
struct ConsumerMetrics {
    let processed: Counter
    let duplicates: Counter
    let deadLettered: Counter
    let failures: Counter
    let handlerDuration: Timer

    init(consumer: String) {
        let dimensions = [("consumer", consumer)]
        processed = Counter(label: "outbox_consumer_processed_total", dimensions: dimensions)
        duplicates = Counter(label: "outbox_consumer_duplicates_skipped_total", dimensions: dimensions)
        deadLettered = Counter(label: "outbox_consumer_dead_lettered_total", dimensions: dimensions)
        failures = Counter(label: "outbox_consumer_handler_failures_total", dimensions: dimensions)
        handlerDuration = Timer(label: "outbox_consumer_handler_duration_seconds", dimensions: dimensions)
    }
}
