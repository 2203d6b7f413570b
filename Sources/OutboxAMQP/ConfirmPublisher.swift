import Foundation
import Logging
import Outbox

/// Publishes outbox messages on a confirm channel: pipelined, `mandatory`, persistent, with at
/// most `maxInFlight` unconfirmed messages, acks and nacks correlated by delivery tag (honouring
/// `multiple`), and a `basic.return` counted as a failure even though an ack follows it.
///
/// A connection the broker blocked (`connection.blocked`, a memory or disk alarm) publishes
/// nothing new: its messages come back `.blocked`, which the relay leaves pending without counting
/// an attempt. Confirms still outstanding are waited for; once it unblocks, each gets a fresh
/// confirm timeout, and what is still unconfirmed when blocked at the deadline is `.blocked` too
/// (the connection stays open, so late confirms cannot be mistaken for those of a later batch).
public final class ConfirmPublisher: ConfirmingPublisher {
    public struct Options: Sendable {
        /// Unconfirmed publishes allowed at once.
        public var maxInFlight: Int
        /// How long to wait for outstanding confirms after the last publish of a batch.
        public var confirmTimeout: Duration
        /// The AMQP `app_id` property.
        public var appId: String
        /// Exchanges declared whenever a connection opens; any other exchange a message names is
        /// declared before its first publish on a connection.
        public var declareExchanges: [String]
        /// Type of the exchanges this publisher declares (durable).
        public var exchangeType: String

        public init(
            maxInFlight: Int = 1000, confirmTimeout: Duration = .seconds(10), appId: String = "outbox-relay",
            declareExchanges: [String] = [], exchangeType: String = "topic"
        ) {
            self.maxInFlight = maxInFlight
            self.confirmTimeout = confirmTimeout
            self.appId = appId
            self.declareExchanges = declareExchanges
            self.exchangeType = exchangeType
        }
    }

    private let owner: AMQPConnectionOwner
    private let options: Options
    private let logger: Logger

    public init(configuration: AMQPConfiguration, options: Options = Options(), logger: Logger) {
        self.options = options
        self.logger = logger
        RelayMetrics.brokerBlocked.record(0)
        owner = AMQPConnectionOwner(
            configuration: configuration, logger: logger,
            onBlockedChange: { RelayMetrics.brokerBlocked.record($0 ? 1 : 0) }
        ) { connection in
            try connection.confirmSelect()
            for exchange in options.declareExchanges {
                try connection.declareExchange(exchange, type: options.exchangeType)
            }
        }
    }

    public var isConnected: Bool { get async { await owner.isConnected } }

    /// Whether the broker connection is open right now (no waiting; for readiness checks).
    public var isConnectedNow: Bool { owner.isConnectedNow }

    /// Whether the broker has blocked publishing on the connection (a resource alarm); no waiting.
    public var isBlockedNow: Bool { owner.isBlockedNow }

    public func close() async { await owner.close() }

    /// Opens the connection now (instead of on the first publish); throws when it cannot.
    public func connect() async throws {
        try await owner.run { _ in }
    }

    /// Answers heartbeats while idle; a failure closes the connection so the next publish reconnects.
    public func keepAlive() async {
        _ = try? await owner.run { try $0.keepAlive() }
    }

    public func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome] {
        guard !messages.isEmpty else { return [] }
        // An exchange that cannot be declared (e.g. it exists with another type) closes the
        // channel; finding that out first, one exchange at a time, keeps it from failing the
        // messages bound elsewhere. Its messages count as unroutable.
        let broken = await declareExchanges(Set(messages.map(\.exchange)))
        guard broken.isEmpty else {
            let routable = messages.filter { broken[$0.exchange] == nil }
            var outcomes = await publish(routable).makeIterator()
            return messages.map { message in
                broken[message.exchange].map { .returned("exchange cannot be declared: \($0)") } ?? outcomes.next()!
            }
        }
        do {
            return try await owner.run { [options] connection in
                var batch = ConfirmBatch(count: messages.count, messageIds: messages.map(\.id))
                defer { connection.releaseBuffers() }
                do {
                    // Blocked: publish nothing new (the broker would only buffer it unconfirmed);
                    // give it a moment to unblock, else hand the batch back untouched.
                    try connection.waitWhileBlocked(timeout: min(options.confirmTimeout, .seconds(1)))
                    // Publishes of an earlier batch handed back unconfirmed while blocked: the broker
                    // may still route them, so they are waited for and never sent a second time.
                    if connection.heldBack.isWaiting && !connection.isBlocked { try awaitHeldBack(connection, options.confirmTimeout) }
                    for (index, message) in messages.enumerated() {
                        switch connection.heldBack.take(message.id) {
                        case .acked?: batch.settled(index: index, .acked)
                        case .returned(let text)?: batch.settled(index: index, .returned(text))
                        default: if let reason = connection.heldBack.holds(message.id) { batch.settled(index: index, .blocked(reason)) }
                        }
                    }
                    if let reason = connection.blockedReason { return batch.outcomes(orElse: .blocked(reason)) }
                    for (index, message) in messages.enumerated() where !batch.isSettled(index) {
                        while batch.outstanding >= options.maxInFlight {
                            guard let event = try connection.nextConfirmEvent(timeout: options.confirmTimeout) else {
                                if let reason = connection.blockedReason {
                                    connection.heldBack.hold(batch.unconfirmed, reason: reason)
                                    batch.settleOutstanding(.blocked(reason))
                                    return batch.outcomes(orElse: .blocked(reason))
                                }
                                batch.settleOutstanding(.timedOut)
                                connection.abandon()
                                return batch.outcomes(orElse: .timedOut)
                            }
                            batch.apply(event)
                        }
                        if let reason = connection.blockedReason {
                            // Blocked mid-batch: wait for the confirms of what was sent, send no more.
                            try awaitConfirms(&batch, connection, options.confirmTimeout)
                            return batch.outcomes(orElse: .blocked(reason))
                        }
                        let tag = try connection.publish(
                            exchange: message.exchange, routingKey: message.routingKey, body: message.body,
                            contentType: message.contentType, mandatory: true, messageId: message.id, type: message.type,
                            correlationId: message.correlationId, priority: message.priority,
                            expiration: message.expiresAt.map { String(max($0 - Int64(Date().timeIntervalSince1970 * 1000), 0)) },
                            timestampSeconds: UInt64(max(message.occurredAt, 0) / 1000),
                            headers: message.wireHeaders, appId: options.appId, contentEncoding: message.contentEncoding,
                            replyTo: message.replyTo)
                        batch.published(index: index, tag: tag)
                    }
                    try awaitConfirms(&batch, connection, options.confirmTimeout)
                } catch {
                    batch.settleOutstanding(.connectionLost("\(error)"))
                    return batch.outcomes(orElse: .connectionLost("\(error)"))
                }
                return batch.outcomes(orElse: .timedOut)
            }
        } catch {
            logger.warning("publish failed", metadata: [LogKey.error: "\(error)", LogKey.outboxBatchSize: "\(messages.count)"])
            return Array(repeating: .connectionLost("\(error)"), count: messages.count)
        }
    }
}

/// Waits for the outstanding confirms of `batch`, up to `timeout` after the last publish, or after
/// the connection was unblocked if the broker blocked it meanwhile.
private func awaitConfirms(_ batch: inout ConfirmBatch, _ connection: AMQPConnection, _ timeout: Duration) throws {
    var deadline = ContinuousClock.now + timeout
    while batch.outstanding > 0 {
        let left = deadline - ContinuousClock.now
        guard left > .zero, let event = try connection.nextConfirmEvent(timeout: left) else {
            if let reason = connection.blockedReason {
                // Still blocked: these may yet be confirmed, but not in time for this batch. They
                // stay pending; the connection stays, so its tag sequence stays trustworthy, and
                // they are held back: the next batch waits for their confirms instead of sending
                // them again.
                connection.heldBack.hold(batch.unconfirmed, reason: reason)
                batch.settleOutstanding(.blocked(reason))
                return
            }
            // Confirms that never came: nothing outstanding counts as delivered, and
            // the channel's tag sequence can no longer be trusted, so start afresh.
            batch.settleOutstanding(.timedOut)
            connection.abandon()
            return
        }
        if case .unblocked = event { deadline = ContinuousClock.now + timeout }
        batch.apply(event)
    }
}

/// Waits for the confirms of publishes held back while blocked, up to `timeout` (counted afresh
/// after an unblock). Returns early if the broker blocks again; confirms that never come make the
/// tag sequence untrustworthy: the connection is dropped (what was held back is then published
/// again on the next one, at least once).
private func awaitHeldBack(_ connection: AMQPConnection, _ timeout: Duration) throws {
    var deadline = ContinuousClock.now + timeout
    while connection.heldBack.isWaiting {
        let left = deadline - ContinuousClock.now
        guard left > .zero, let event = try connection.nextConfirmEvent(timeout: left) else {
            if connection.isBlocked { return }
            connection.abandon()
            throw AMQPError(operation: "confirm", message: "no confirm for publishes sent before the broker blocked the connection")
        }
        if case .unblocked = event { deadline = ContinuousClock.now + timeout }
    }
}

/// Publishes handed back `.blocked` while unconfirmed. A blocked connection's publishes sit in
/// the broker's buffers and are routed once it unblocks, so sending them again would publish
/// them twice: they are held here, by delivery tag, until their confirms settle them.
struct HeldBackPublishes {
    private var waiting: [UInt64: String] = [:]
    private var waitingIds: [String: String] = [:]  // message id → the block's reason
    private var returned: [String: String] = [:]
    private var settledOutcomes: [String: PublishOutcome] = [:]

    var isWaiting: Bool { !waiting.isEmpty }

    mutating func hold(_ publishes: [(tag: UInt64, messageId: String)], reason: String) {
        for publish in publishes {
            waiting[publish.tag] = publish.messageId
            waitingIds[publish.messageId] = reason
        }
    }

    /// The block's reason while `messageId` is held and unconfirmed.
    func holds(_ messageId: String) -> String? { waitingIds[messageId] }

    /// The outcome of a held publish whose confirm came, once.
    mutating func take(_ messageId: String) -> PublishOutcome? { settledOutcomes.removeValue(forKey: messageId) }

    mutating func apply(_ event: AMQPConnection.ConfirmEvent) {
        guard !waiting.isEmpty else { return }
        switch event {
        case .ack(let tag, let multiple): settle(tag: tag, multiple: multiple, nacked: false)
        case .nack(let tag, let multiple): settle(tag: tag, multiple: multiple, nacked: true)
        case .returned(let messageId?, let text) where waitingIds[messageId] != nil: returned[messageId] = text
        default: break
        }
    }

    private mutating func settle(tag: UInt64, multiple: Bool, nacked: Bool) {
        let tags = multiple ? waiting.keys.filter { $0 <= tag } : (waiting[tag] == nil ? [] : [tag])
        for tag in tags {
            guard let id = waiting.removeValue(forKey: tag) else { continue }
            waitingIds[id] = nil
            // A nacked one is simply published again.
            if !nacked { settledOutcomes[id] = returned.removeValue(forKey: id).map { .returned($0) } ?? .acked }
            returned[id] = nil
        }
    }
}

extension ConfirmPublisher {
    /// Declares the exchanges this connection has not declared yet; returns those that failed, with the error.
    private func declareExchanges(_ exchanges: Set<String>) async -> [String: String] {
        var broken: [String: String] = [:]
        let type = options.exchangeType
        for exchange in exchanges.sorted() where !exchange.isEmpty {
            do {
                try await owner.run { connection in
                    if !connection.declaredExchanges.contains(exchange) { try connection.declareExchange(exchange, type: type) }
                }
            } catch let error as AMQPError where error.operation.hasPrefix("exchange.declare") {
                logger.error("cannot declare exchange", metadata: [LogKey.amqpExchange: "\(exchange)", LogKey.error: "\(error)"])
                broken[exchange] = error.message
            } catch {
                // Not this exchange's fault (broker unreachable): the publish will report it.
                break
            }
        }
        return broken
    }
}

/// Bookkeeping for one pipelined batch on a confirm channel.
struct ConfirmBatch {
    private var results: [PublishOutcome?]
    private var tags: [UInt64] = []  // tags[i] is the delivery tag of the i-th publish (in order)
    private var positions: [Int] = []  // positions[i] is the message index of the i-th publish
    private var firstTag: UInt64 = 0
    private var lowestUnsettled = 0  // every publish before this one is settled
    private var returned: [Int: String] = [:]
    private let messageIds: [String]
    private let indexById: [String: Int]
    private(set) var outstanding = 0

    init(count: Int, messageIds: [String]) {
        results = Array(repeating: nil, count: count)
        self.messageIds = messageIds
        var index: [String: Int] = [:]
        for (i, id) in messageIds.enumerated() { index[id] = i }
        indexById = index
    }

    mutating func published(index: Int, tag: UInt64) {
        if tags.isEmpty { firstTag = tag }
        tags.append(tag)
        positions.append(index)
        outstanding += 1
    }

    /// Settles message `index` without publishing it (its outcome is already known).
    mutating func settled(index: Int, _ outcome: PublishOutcome) {
        results[index] = outcome
    }

    func isSettled(_ index: Int) -> Bool { results[index] != nil }

    /// Published and not confirmed yet: delivery tag and message id.
    var unconfirmed: [(tag: UInt64, messageId: String)] {
        tags.indices.filter { results[positions[$0]] == nil }.map { (tags[$0], messageIds[positions[$0]]) }
    }

    mutating func apply(_ event: AMQPConnection.ConfirmEvent) {
        switch event {
        case .ack(let tag, let multiple): settle(tag: tag, multiple: multiple, nacked: false)
        case .nack(let tag, let multiple): settle(tag: tag, multiple: multiple, nacked: true)
        case .returned(let messageId, let text):
            if let messageId, let index = indexById[messageId] { returned[index] = text }
        case .blocked, .unblocked: break
        }
    }

    private mutating func settle(tag: UInt64, multiple: Bool, nacked: Bool) {
        guard tag >= firstTag, !tags.isEmpty else { return }  // a confirm from an earlier batch
        let index = Int(tag - firstTag)
        guard index < tags.count else { return }
        let range = multiple ? lowestUnsettled...index : index...index
        for i in range where results[positions[i]] == nil {
            let position = positions[i]
            if nacked {
                results[position] = .nacked
            } else if let text = returned[position] {
                results[position] = .returned(text)
            } else {
                results[position] = .acked
            }
            outstanding -= 1
        }
        while lowestUnsettled < tags.count, results[positions[lowestUnsettled]] != nil { lowestUnsettled += 1 }
    }

    /// Gives every published, unconfirmed message `outcome`.
    mutating func settleOutstanding(_ outcome: PublishOutcome) {
        for i in 0..<tags.count where results[positions[i]] == nil {
            results[positions[i]] = outcome
        }
        outstanding = 0
    }

    /// Outcomes in message order; messages never published get `fallback`.
    func outcomes(orElse fallback: PublishOutcome) -> [PublishOutcome] {
        results.map { $0 ?? fallback }
    }
}
