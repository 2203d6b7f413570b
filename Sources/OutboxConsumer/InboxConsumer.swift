import Foundation
import Logging
import Metrics
import Outbox
import OutboxAMQP
import OutboxMongo
import ServiceLifecycle
import Synchronization

/// Applies messages' effects. Runs inside the MongoDB transaction that also records the message
/// ids in the consumer's inbox, so the effects and the records commit together or not at all.
public protocol InboxHandler: Sendable {
    /// Applies one message's effect.
    func handle(_ message: IncomingMessage, connection: MongoConnection) throws
    /// Applies a batch of messages, in delivery order, in one transaction. The default applies
    /// them one by one with `handle(_:connection:)`; a handler can do better (one query for the
    /// whole batch, bulk writes). Throw `MessageFailure` to name the message that failed, so
    /// that the rest of the batch commits without a search for it.
    func handle(batch messages: [IncomingMessage], connection: MongoConnection) throws
}

extension InboxHandler {
    public func handle(batch messages: [IncomingMessage], connection: MongoConnection) throws {
        for (index, message) in messages.enumerated() {
            do {
                try handle(message, connection: connection)
            } catch let error as MongoError where error.isConnectionFailure {
                throw error
            } catch {
                throw MessageFailure(index: index, error: error)
            }
        }
    }
}

/// A handler failure that retrying cannot fix (e.g. a body that does not parse): dead-lettered at once.
public struct PermanentFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The message at `index` of a batch failed with `error`: the messages before it are applied
/// again without it, and it is tried (and perhaps dead-lettered) on its own.
public struct MessageFailure: Error, CustomStringConvertible {
    public let index: Int
    public let error: any Error
    public init(index: Int, error: any Error) {
        self.index = index
        self.error = error
    }
    public var description: String { "\(error)" }
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
    /// Most deliveries applied in one transaction and acked with one frame (1: one by one).
    /// Keep the topology's prefetch at least this large, better twice, so the next batch is
    /// already on its way while one commits.
    public var batchSize: Int
    /// How long a batch waits for more deliveries once it has one: bounds the latency a batch
    /// adds under light load.
    public var batchWait: Duration

    public init(
        name: String, topology: ConsumerTopology, maxAttempts: Int = 5, retryDelay: Duration = .milliseconds(100),
        inboxCollection: String = "inbox", inboxRetention: Duration? = .seconds(7 * 24 * 3600),
        batchSize: Int = 32, batchWait: Duration = .milliseconds(100)
    ) {
        self.batchSize = max(batchSize, 1)
        self.batchWait = batchWait
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
    /// Transactions committed: fewer than `processed` when batches hold several messages.
    public var commits = 0
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
    private let spans: ConsumeSpans

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
        spans = ConsumeSpans(consumer: configuration.name, queue: configuration.topology.queue)
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
        logger.info(
            "consumer started",
            metadata: [LogKey.amqpQueue: "\(configuration.topology.queue)", LogKey.consumerBatchSize: "\(configuration.batchSize)"])
        var failures = 0
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                guard let first = try await channel.next(timeout: .milliseconds(250)) else { continue }
                failures = 0
                await process(try await fillBatch(startingWith: first))
            } catch {
                failures += 1
                let delay = Duration.milliseconds(min(100 << min(failures, 6), 5000))
                logger.warning("broker connection failed; reconnecting", metadata: [LogKey.error: "\(error)", LogKey.retryIn: "\(delay)"])
                try? await Task.sleep(for: delay)
            }
        }
        await channel.close()
        await deadLetters.close()
        logger.info("consumer stopped", metadata: [LogKey.consumerProcessed: "\(stats.processed)"])
    }

    /// Takes what has arrived, up to the batch size, waiting at most `batchWait` for more (after
    /// it, what has already arrived is still taken). A connection that fails meanwhile ends the
    /// batch: what was received is processed (its acks will not reach the broker, which
    /// redelivers it) and the next read reconnects.
    private func fillBatch(startingWith first: AMQPDelivery) async throws -> [AMQPDelivery] {
        var batch = [first]
        let deadline = ContinuousClock.now + configuration.batchWait
        while batch.count < configuration.batchSize {
            let left = max(deadline - ContinuousClock.now, .zero)
            guard let delivery = try? await channel.next(timeout: left),
                delivery.connectionGeneration == first.connectionGeneration
            else { break }
            batch.append(delivery)
        }
        return batch
    }

    /// What becomes of a delivery once its batch is done.
    enum Settlement {
        /// Applied, known already, or dead-lettered: acked.
        case ack
        /// Given back to the queue (the database was unreachable, or a dead letter was not confirmed).
        case requeue
    }

    /// A delivery and the message it carries.
    struct Item {
        let delivery: AMQPDelivery
        let message: IncomingMessage
        var inboxId: String
    }

    /// Handles a batch to the end: every delivery applied, skipped as a duplicate, dead-lettered,
    /// or (when the database is unreachable) requeued; then settled, the acks in one frame.
    func process(_ deliveries: [AMQPDelivery]) async {
        metrics.batchSize.record(deliveries.count)
        var settlements: [UInt64: Settlement] = [:]
        var fresh: [Item] = []
        var seen: Set<String> = []
        var duplicates = 0
        for delivery in deliveries {
            guard let messageId = delivery.messageId, !messageId.isEmpty else {
                settlements[delivery.deliveryTag] = await deadLetter(delivery, reason: "message has no message_id", attempts: 0)
                continue
            }
            // The same message twice in one batch (a publisher's retry): the first one counts.
            guard seen.insert(messageId).inserted else {
                duplicates += 1
                settlements[delivery.deliveryTag] = .ack
                continue
            }
            let message = IncomingMessage(
                messageId: messageId, type: delivery.type, routingKey: delivery.routingKey,
                headers: spans.start(delivery, messageId: messageId),
                contentType: delivery.contentType, correlationId: delivery.correlationId, priority: delivery.priority,
                body: delivery.body,
                redelivered: delivery.redelivered)
            fresh.append(Item(delivery: delivery, message: message, inboxId: "\(configuration.name):\(messageId)"))
        }
        // Redeliveries are usually known already: one query finds them, no transaction opened.
        // The unique inbox ids still decide when two consumers race.
        if !fresh.isEmpty {
            let inbox = configuration.inboxCollection
            let ids = fresh.map { BSON.string($0.inboxId) }
            do {
                let known = try await pool.withConnection { connection in
                    Set(
                        try connection.collection(inbox).find(["_id": ["$in": .array(ids)]], options: ["projection": ["_id": 1]])
                            .compactMap { $0["_id"]?.stringValue })
                }
                fresh.removeAll { item in
                    guard known.contains(item.inboxId) else { return false }
                    duplicates += 1
                    settlements[item.delivery.deliveryTag] = .ack
                    return true
                }
            } catch {
                // The transaction below finds out whether the database is there.
            }
        }
        await apply(fresh, into: &settlements)
        if duplicates > 0 {
            counters.withLock { $0.duplicates += duplicates }
            metrics.duplicates.increment(by: duplicates)
            logger.debug("duplicates skipped", metadata: [LogKey.count: "\(duplicates)"])
            await recordDuplicates(duplicates)
        }
        await settle(deliveries, settlements)
    }

    /// Applies `items` in one transaction. A failure that names its message commits the others
    /// around it and tries that one alone; one that does not is narrowed down by halving the
    /// batch. A single message is tried `maxAttempts` times before it is dead-lettered.
    private func apply(_ items: [Item], into settlements: inout [UInt64: Settlement]) async {
        guard !items.isEmpty else { return }
        if items.count == 1 {
            settlements[items[0].delivery.deliveryTag] = await applyAlone(items[0])
            return
        }
        let started = ContinuousClock.now
        let result = await commit(items)
        metrics.handlerDuration.recordNanoseconds((ContinuousClock.now - started).nanoseconds)
        switch result {
        case .applied:
            counters.withLock { $0.processed += items.count }
            metrics.applied(items.map(\.message))
            for item in items { settlements[item.delivery.deliveryTag] = .ack }
        case .unavailable(let error):
            // The database is down: not the messages' fault. Give them back and wait.
            logger.warning("database unavailable; batch requeued", metadata: [LogKey.error: "\(error)", LogKey.consumerBatchSize: "\(items.count)"])
            try? await Task.sleep(for: .seconds(1))
            for item in items { settlements[item.delivery.deliveryTag] = .requeue }
        case .duplicate:
            // Another consumer applied one of them meanwhile: each on its own finds out which.
            for item in items { settlements[item.delivery.deliveryTag] = await applyAlone(item) }
        case .failed(let error, _, let index?) where index < items.count:
            logger.info(
                "message failed in a batch; applying the others without it",
                metadata: [LogKey.messageID: "\(items[index].message.messageId)", LogKey.error: "\(error)"])
            await apply(Array(items[..<index]), into: &settlements)
            settlements[items[index].delivery.deliveryTag] = await applyAlone(items[index])
            await apply(Array(items[(index + 1)...]), into: &settlements)
        case .failed(let error, _, _):
            logger.info("batch failed; splitting it", metadata: [LogKey.consumerBatchSize: "\(items.count)", LogKey.error: "\(error)"])
            let middle = items.count / 2
            await apply(Array(items[..<middle]), into: &settlements)
            await apply(Array(items[middle...]), into: &settlements)
        }
    }

    /// Applies one message: tried up to `maxAttempts` times, then dead-lettered.
    private func applyAlone(_ item: Item) async -> Settlement {
        var attempts = 0
        while true {
            attempts += 1
            let started = ContinuousClock.now
            let result = await commit([item])
            metrics.handlerDuration.recordNanoseconds((ContinuousClock.now - started).nanoseconds)
            switch result {
            case .applied:
                counters.withLock { $0.processed += 1 }
                metrics.applied([item.message])
                return .ack
            case .duplicate:
                counters.withLock { $0.duplicates += 1 }
                metrics.duplicates.increment()
                logger.debug("duplicate skipped", metadata: [LogKey.messageID: "\(item.message.messageId)"])
                await recordDuplicates(1)
                return .ack
            case .unavailable(let error):
                logger.warning("database unavailable; message requeued", metadata: [LogKey.error: "\(error)"])
                try? await Task.sleep(for: .seconds(1))
                return .requeue
            case .failed(let error, let permanent, _):
                counters.withLock { $0.handlerFailures += 1 }
                metrics.failures.increment()
                if permanent || attempts >= configuration.maxAttempts {
                    return await deadLetter(item.delivery, reason: "\(error)", attempts: attempts)
                }
                logger.info(
                    "handler failed; retrying",
                    metadata: [LogKey.messageID: "\(item.message.messageId)", LogKey.attempts: "\(attempts)", LogKey.error: "\(error)"])
                try? await Task.sleep(for: configuration.retryDelay)
            }
        }
    }

    /// The inbox already holds a message of the batch.
    struct AlreadyProcessed: Error {}

    enum CommitResult {
        case applied
        case duplicate
        case unavailable(Error)
        /// The handler failed; `index` is the failing message's place in the batch when known.
        case failed(Error, permanent: Bool, index: Int?)
    }

    /// One transaction: the inbox entries first (a duplicate fails there, before any effect), then
    /// the handler's effects, then the commit.
    private func commit(_ items: [Item]) async -> CommitResult {
        let inbox = configuration.inboxCollection
        let name = configuration.name
        let handler = self.handler
        let entries: [Document] = items.map { item in
            [
                "_id": .string(item.inboxId), "consumer": .string(name),
                "messageId": .string(item.message.messageId), "processedAt": .date(Date()),
            ]
        }
        let messages = items.map(\.message)
        do {
            try await pool.withTransaction { connection in
                do {
                    try connection.collection(inbox).insertMany(entries)
                } catch let error as MongoError where error.isDuplicateKey {
                    // Only the inbox's own key says "processed before"; a duplicate key the
                    // handler runs into is a failure of the handler like any other.
                    throw AlreadyProcessed()
                }
                if messages.count == 1 {
                    try handler.handle(messages[0], connection: connection)
                } else {
                    try handler.handle(batch: messages, connection: connection)
                }
            }
            counters.withLock { $0.commits += 1 }
            return .applied
        } catch is AlreadyProcessed {
            return .duplicate
        } catch let failure as MessageFailure {
            return Self.classify(failure.error, index: failure.index)
        } catch {
            return Self.classify(error, index: nil)
        }
    }

    private static func classify(_ error: any Error, index: Int?) -> CommitResult {
        switch error {
        case let error as MongoError where error.isConnectionFailure: .unavailable(error)
        case let error as PermanentFailure: .failed(error, permanent: true, index: index)
        default: .failed(error, permanent: false, index: index)
        }
    }

    /// Requeues what must be requeued, then acks the rest with one frame per connection (a
    /// multiple ack up to the newest of them: every older delivery is settled by then).
    private func settle(_ deliveries: [AMQPDelivery], _ settlements: [UInt64: Settlement]) async {
        var newestAcked: AMQPDelivery?
        for delivery in deliveries {
            switch settlements[delivery.deliveryTag] ?? .requeue {
            case .requeue:
                spans.failed(delivery.deliveryTag, outcome: "requeued", reason: "given back to the queue")
                try? await channel.reject(delivery, requeue: true)
            case .ack:
                if delivery.deliveryTag > newestAcked?.deliveryTag ?? 0 { newestAcked = delivery }
            }
        }
        spans.end(deliveries.map(\.deliveryTag))
        guard let newestAcked else { return }
        do {
            try await channel.ack(upTo: newestAcked)
        } catch {
            // The effects are committed; the redeliveries this causes are skipped as duplicates.
            logger.warning("ack failed; messages will be redelivered and skipped", metadata: [LogKey.error: "\(error)"])
        }
    }

    /// Collection where consumers count what they skipped, so operators (and the demo) can see it.
    public static let statsCollection = "consumer_stats"

    private func recordDuplicates(_ count: Int) async {
        let name = configuration.name
        _ = try? await pool.withConnection { connection in
            try connection.collection(Self.statsCollection).updateOne(
                ["_id": .string(name)], ["$inc": ["duplicatesSkipped": .int64(Int64(count))], "$currentDate": ["updatedAt": true]],
                upsert: true)
        }
    }

    /// Publishes the message to the consumer's dead-letter exchange with the reason (confirmed):
    /// then it can be acked. If the dead-letter publish is not confirmed it is requeued instead:
    /// nothing is dropped.
    private func deadLetter(_ delivery: AMQPDelivery, reason: String, attempts: Int) async -> Settlement {
        spans.failed(delivery.deliveryTag, outcome: "dead_lettered", reason: reason)
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
        var message = OutboxMessage(
            id: delivery.messageId ?? "", type: delivery.type ?? "", aggregateType: aggregateType, aggregateId: aggregateId,
            aggregateVersion: aggregateVersion, exchange: configuration.topology.deadLetterExchange, routingKey: delivery.routingKey,
            occurredAt: occurredAt, correlationId: delivery.correlationId, priority: delivery.priority, headers: headers,
            contentType: delivery.contentType ?? WireFormat.jsonContentType, body: delivery.body)
        message.contentEncoding = delivery.contentEncoding
        message.replyTo = delivery.replyTo
        let outcome = await deadLetters.publish([message]).first
        if outcome == .acked {
            counters.withLock { $0.deadLettered += 1 }
            metrics.deadLettered.increment()
            logger.error(
                "message dead-lettered",
                metadata: [LogKey.messageID: "\(delivery.messageId ?? "-")", LogKey.attempts: "\(attempts)", LogKey.reason: "\(reason)"])
            return .ack
        }
        logger.error("dead-letter publish not confirmed; message requeued", metadata: [LogKey.outcome: "\(String(describing: outcome))"])
        // Pause so a broker that refuses dead letters does not turn into a redelivery storm.
        try? await Task.sleep(for: .seconds(1))
        return .requeue
    }
}
