import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo

/// A message in a consumer's dead-letter queue, read from its properties and headers.
///
/// An `InboxConsumer` dead-letters a message by publishing it to `<queue>.dlx` with the reason
/// (`x-error`), its tries (`x-attempts`), the routing key it came with (`x-original-routing-key`),
/// its own name (`x-consumer`) and the time (`x-dead-lettered-at`, ms since the epoch). The broker
/// dead-letters into the same exchange (a rejected, expired or overflowing message) with `x-death`.
public struct DeadLetter: Sendable {
    /// Where `deadLetteredAt` comes from.
    public enum TimeSource: String, Sendable {
        /// `x-dead-lettered-at`, set by the consumer.
        case consumer = "x-dead-lettered-at"
        /// The newest `x-death` entry's time, set by the broker.
        case broker = "x-death"
        /// `x-occurred-at`: when the event happened, the best there is for older dead letters.
        case event = "x-occurred-at"
    }

    public var messageId: String?
    public var type: String?
    /// The consumer that gave up on it (`x-consumer`).
    public var consumer: String?
    /// Tries of the consumer's handler (`x-attempts`).
    public var attempts: Int?
    /// Why: `x-error`; for a message the broker dead-lettered, `x-death`'s reason (e.g. `rejected`).
    public var reason: String?
    public var deadLetteredAt: Date?
    public var timeSource: TimeSource?
    /// The routing key it was published with (`x-original-routing-key`, or `x-death`'s).
    public var originalRoutingKey: String?
    /// Whether the broker dead-lettered it (an `x-death` header and no `x-error`).
    public var byBroker: Bool
    /// Whether it was handed out before (e.g. listed by an earlier command).
    public var redelivered: Bool
    public var properties: AMQPProperties
    public var body: [UInt8]

    public init(_ message: AMQPMessage) {
        let headers = message.properties.headers
        properties = message.properties
        body = message.body
        redelivered = message.redelivered
        messageId = message.properties.messageId
        type = message.properties.type
        consumer = headers["x-consumer"]?.stringValue
        attempts = headers["x-attempts"]?.intValue.map { Int($0) }
        // The newest death comes first.
        let death = headers["x-death"]?.arrayValue?.first?.tableValue
        let error = headers["x-error"]?.stringValue
        byBroker = error == nil && death != nil
        reason = error ?? death?["reason"]?.stringValue
        originalRoutingKey =
            headers["x-original-routing-key"]?.stringValue ?? death?["routing-keys"]?.arrayValue?.first?.stringValue
        if let ms = headers["x-dead-lettered-at"]?.intValue {
            deadLetteredAt = Date(timeIntervalSince1970: Double(ms) / 1000)
            timeSource = .consumer
        } else if case .timestamp(let seconds)? = death?["time"] {
            deadLetteredAt = Date(timeIntervalSince1970: Double(seconds))
            timeSource = .broker
        } else if let ms = headers["x-occurred-at"]?.intValue {
            deadLetteredAt = Date(timeIntervalSince1970: Double(ms) / 1000)
            timeSource = .event
        }
    }

    /// Headers that dead-lettering added, by the consumer or the broker (and the quorum queue's
    /// delivery count); a requeued message goes without them, as it was first published.
    public static let deadLetteringHeaders: Set<String> = [
        "x-error", "x-attempts", "x-consumer", "x-original-routing-key", "x-dead-lettered-at", "x-death",
        "x-first-death-queue", "x-first-death-reason", "x-first-death-exchange",
        "x-last-death-queue", "x-last-death-reason", "x-last-death-exchange", "x-delivery-count",
    ]

    /// The message as it goes back to the consumer's queue: the original message id, type, content
    /// type and encoding, correlation id, reply-to, priority, timestamp and headers (without
    /// `deadLetteringHeaders`), persistent, `app_id` outboxctl. No expiration (it would expire in the
    /// queue) and no user id (the broker refuses one that is not the publishing user).
    public var requeueProperties: AMQPProperties {
        let original = properties
        return AMQPProperties(
            contentType: original.contentType, contentEncoding: original.contentEncoding,
            headers: original.headers.filter { !Self.deadLetteringHeaders.contains($0.key) }, deliveryMode: 2,
            priority: original.priority, correlationId: original.correlationId, replyTo: original.replyTo,
            messageId: original.messageId, timestamp: original.timestamp, type: original.type, appId: "outboxctl")
    }
}

/// Which dead letters a command applies to. Empty criteria match every one.
public struct DeadLetterFilter: Sendable, Equatable {
    /// Message ids (any of them).
    public var ids: [String]
    /// Text the reason contains, ignoring case.
    public var reason: String?
    /// The whole reason, exactly: one group of dead letters (an empty one: those without a reason).
    public var exactReason: String?
    /// Dead-lettered before now minus this; a dead letter of unknown time never matches.
    public var olderThan: Duration?
    /// At most this many dead letters (the first ones in the queue).
    public var limit: Int?

    public init(ids: [String] = [], reason: String? = nil, exactReason: String? = nil, olderThan: Duration? = nil, limit: Int? = nil) {
        self.ids = ids
        self.reason = reason
        self.exactReason = exactReason
        self.olderThan = olderThan
        self.limit = limit
    }

    /// Whether a criterion narrows the selection (a limit alone does not).
    public var hasCriteria: Bool { !ids.isEmpty || reason != nil || exactReason != nil || olderThan != nil }

    public func matches(_ letter: DeadLetter, now: Date = Date()) -> Bool {
        if !ids.isEmpty {
            guard let id = letter.messageId, ids.contains(id) else { return false }
        }
        if let reason, !reason.isEmpty {
            guard let text = letter.reason, text.range(of: reason, options: .caseInsensitive) != nil else { return false }
        }
        if let exactReason, (letter.reason ?? "") != exactReason { return false }
        if let olderThan {
            let cutoff = now.addingTimeInterval(-Double(olderThan.milliseconds) / 1000)
            guard let at = letter.deadLetteredAt, at < cutoff else { return false }
        }
        return true
    }
}

/// What `requeue` or `purge` did (or, in a dry run, would do).
public struct DeadLetterResult: Sendable {
    public struct Failure: Sendable {
        public var messageId: String?
        public var reason: String
    }

    /// Dead letters read.
    public var scanned = 0
    /// Of those, the selected ones, in queue order (without their bodies).
    public var selected: [DeadLetter] = []
    /// Selected ones moved (requeued and confirmed) or removed.
    public var changed = 0
    /// Selected ones left in the dead-letter queue, with the reason.
    public var failures: [Failure] = []
    /// Why the command stopped before reading every dead letter, if it did; the rest are untouched.
    public var interrupted: String?
    public var dryRun: Bool

    /// Every selected dead letter was handled (always true for a dry run).
    public var isComplete: Bool { dryRun || (changed == selected.count && interrupted == nil) }
}

/// A dead-letter queue does not exist (the consumer never ran, or another name was meant).
public struct DeadLetterQueueMissing: Error, CustomStringConvertible {
    public var queue: String
    public var description: String { "no queue '\(queue)' on the broker" }
}

/// Reads, requeues and purges one consumer's dead letters.
///
/// Every command reads the dead-letter queue with `basic.get` without ack, at most as many messages
/// as it held at the start (so nothing is read twice, and dead letters arriving meanwhile wait for
/// the next run), and holds what it read until the end: then every message it did not move or
/// remove goes back to the queue (`basic.nack` with requeue). If the connection fails, the broker
/// puts back everything still held. A message leaves the dead-letter queue only after the broker
/// confirmed its copy on the consumer's queue, so none is lost; one moved twice (confirm seen, ack
/// lost) is a duplicate, which the consumer's inbox skips.
public struct DeadLetters: Sendable {
    /// The consumer's queue, where `requeue` puts messages back.
    public var queue: String
    public var deadLetterQueue: String
    public var amqp: AMQPConfiguration
    /// How long `requeue` waits for the broker to confirm each message.
    public var confirmTimeout: Duration
    private let logger: Logger

    public init(queue: String, deadLetterQueue: String? = nil, amqp: AMQPConfiguration, confirmTimeout: Duration = .seconds(10), logger: Logger) {
        self.queue = queue
        self.deadLetterQueue = deadLetterQueue ?? ConsumerTopology(exchange: "", queue: queue, bindings: []).deadLetterQueue
        self.amqp = amqp
        self.confirmTimeout = confirmTimeout
        self.logger = logger
    }

    /// The selected dead letters, in queue order; the queue is left as it was.
    public func list(_ filter: DeadLetterFilter, now: Date = Date()) async throws -> (letters: [DeadLetter], scanned: Int) {
        let result = try await sweep(filter, dryRun: true, now: now, checking: [], keepBodies: true) { _, _, _ in nil }
        if let interrupted = result.interrupted { throw AMQPError(operation: "read \(deadLetterQueue)", message: interrupted) }
        return (result.selected, result.scanned)
    }

    /// Publishes each selected dead letter to the consumer's queue through the default exchange
    /// (routing key = the queue), as `DeadLetter.requeueProperties` says, with a publisher confirm,
    /// and removes it from the dead-letter queue only after the confirm. One not confirmed stays.
    public func requeue(_ filter: DeadLetterFilter, dryRun: Bool, now: Date = Date()) async throws -> DeadLetterResult {
        let target = queue
        let timeout = confirmTimeout
        return try await sweep(filter, dryRun: dryRun, now: now, checking: [queue]) { admin, message, letter in
            let outcome = await admin.publishConfirmed(
                exchange: "", routingKey: target, properties: letter.requeueProperties, body: letter.body, mandatory: true,
                timeout: timeout)
            switch outcome {
            case .acked:
                return try await admin.ack(message)
                    ? .done
                    : .failed(
                        "copy confirmed on \(target), but the connection closed before the dead letter was removed: it is in both queues (the inbox skips the duplicate)"
                    )
            case .nacked: return .failed("the broker refused the copy (basic.nack)")
            case .returned(let text): return .failed("no queue took the copy: \(text)")
            case .timedOut: return .stop("no confirm within \(timeout)")
            case .blocked(let reason): return .stop("the broker blocks publishing: \(reason)")
            case .connectionLost(let text): return .stop("connection lost: \(text)")
            }
        }
    }

    /// Removes the selected dead letters (every one when the filter has no criteria).
    public func purge(_ filter: DeadLetterFilter, dryRun: Bool, now: Date = Date()) async throws -> DeadLetterResult {
        try await sweep(filter, dryRun: dryRun, now: now, checking: []) { admin, message, _ in
            try await admin.ack(message) ? .done : .failed("the connection closed before it was removed")
        }
    }

    /// What happened to one selected dead letter.
    enum Step {
        case done
        /// Left in the dead-letter queue; the next ones are tried.
        case failed(String)
        /// Left in the dead-letter queue; nothing more is tried.
        case stop(String)
    }

    /// Reads the dead letters that were in the queue at the start and hands each selected one to
    /// `act` (unless `dryRun`); gives back every one not taken. Throws `DeadLetterQueueMissing` or
    /// an `AMQPError` before anything changed; later failures end the sweep as `interrupted`.
    private func sweep(
        _ filter: DeadLetterFilter, dryRun: Bool, now: Date, checking queues: [String], keepBodies: Bool = false,
        _ act: (AMQPAdmin, AMQPMessage, DeadLetter) async throws -> Step?
    ) async throws -> DeadLetterResult {
        let admin = AMQPAdmin(configuration: amqp, logger: logger)
        // The queues are counted before any message is held: a missing one closes the channel.
        var available = 0
        do {
            guard let count = try await admin.messageCount(deadLetterQueue) else { throw DeadLetterQueueMissing(queue: deadLetterQueue) }
            available = count
            for queue in queues {
                if try await admin.messageCount(queue) == nil { throw DeadLetterQueueMissing(queue: queue) }
            }
        } catch {
            await admin.close()
            throw error
        }
        var result = DeadLetterResult(dryRun: dryRun)
        var held: [AMQPMessage] = []
        do {
            while result.scanned < available {
                if let limit = filter.limit, result.selected.count >= limit { break }
                guard var message = try await admin.getUnacked(deadLetterQueue) else { break }
                result.scanned += 1
                var letter = DeadLetter(message)
                message.body = []  // held for its tag only
                guard filter.matches(letter, now: now) else {
                    held.append(message)
                    continue
                }
                let body = letter.body
                if !keepBodies { letter.body = [] }
                result.selected.append(letter)
                letter.body = body
                guard !dryRun, let step = try await act(admin, message, letter) else {
                    held.append(message)
                    continue
                }
                switch step {
                case .done:
                    result.changed += 1
                case .failed(let reason):
                    result.failures.append(.init(messageId: letter.messageId, reason: reason))
                    held.append(message)
                case .stop(let reason):
                    result.failures.append(.init(messageId: letter.messageId, reason: reason))
                    result.interrupted = reason
                    held.append(message)
                }
                if result.interrupted != nil { break }
            }
        } catch {
            // The connection is gone, and with it every message held: the broker requeued them.
            result.interrupted = "\(error)"
            held = []
        }
        do {
            try await admin.nack(held, requeue: true)
        } catch {
            // Closing the connection gives them back just as well.
            logger.warning("dead letters not given back one by one; closing the connection returns them", metadata: [LogKey.error: "\(error)"])
        }
        await admin.close()
        if result.interrupted != nil {
            logger.warning(
                "dead-letter command stopped early", metadata: [LogKey.amqpQueue: "\(deadLetterQueue)", LogKey.reason: "\(result.interrupted ?? "")"])
        }
        return result
    }
}

// MARK: - Records

extension DeadLetter {
    /// The dead letter as `outboxctl dlq list --json` and `show --json` print it: the fields above,
    /// every header (timestamps as ISO 8601 times, byte strings in base64) and the body, as text
    /// when it is UTF-8 (`bodyEncoding` utf8) or else in base64.
    public var record: Document {
        func text(_ value: String?) -> BSON { value.map { .string($0) } ?? .null }
        let utf8 = String(validating: body, as: UTF8.self)
        return [
            "messageId": text(messageId), "type": text(type), "consumer": text(consumer),
            "attempts": attempts.map { .int64(Int64($0)) } ?? .null, "reason": text(reason),
            "deadLetteredAt": deadLetteredAt.map { .datetime(Int64(($0.timeIntervalSince1970 * 1000).rounded())) } ?? .null,
            "deadLetteredAtFrom": text(timeSource?.rawValue), "deadLetteredBy": .string(byBroker ? "broker" : "consumer"),
            "originalRoutingKey": text(originalRoutingKey), "correlationId": text(properties.correlationId),
            "contentType": text(properties.contentType), "redelivered": .bool(redelivered),
            "headers": .document(Self.document(properties.headers)), "bodyBytes": .int64(Int64(body.count)),
            "bodyEncoding": .string(utf8 == nil ? "base64" : "utf8"), "body": .string(utf8 ?? Data(body).base64EncodedString()),
        ]
    }

    static func document(_ table: [String: AMQPFieldValue]) -> Document {
        Document(table.sorted { $0.key < $1.key }.map { ($0.key, bson($0.value)) })
    }

    /// A header value as BSON, for output.
    public static func bson(_ value: AMQPFieldValue) -> BSON {
        switch value {
        case .bool(let b): .bool(b)
        case .int(let i): .int64(i)
        case .float(let f): .double(Double(f))
        case .double(let d): .double(d)
        case .decimal(let scale, let digits): .string(decimalText(scale: scale, digits: digits))
        case .string(let s): .string(s)
        case .bytes(let b): .binary(subtype: 0, bytes: b)
        case .timestamp(let seconds): .datetime(Int64(clamping: seconds) &* 1000)
        case .array(let values): .array(values.map(bson))
        case .table(let table): .document(document(table))
        case .void: .null
        }
    }

    static func decimalText(scale: UInt8, digits: UInt32) -> String {
        guard scale > 0 else { return String(digits) }
        var text = String(digits)
        let scale = Int(scale)
        if text.count <= scale { text = String(repeating: "0", count: scale - text.count + 1) + text }
        text.insert(".", at: text.index(text.endIndex, offsetBy: -scale))
        return text
    }
}
