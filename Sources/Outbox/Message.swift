/// A header value carried on an AMQP message: one of the field-table types a writer's document
/// can say (and a consumer reads back as the writer wrote it).
public indirect enum HeaderValue: Sendable, Hashable {
    case string(String)
    case int(Int64)
    case bool(Bool)
    case double(Double)
    /// `value` × 10^-`scale`: AMQP's decimal, at most nine digits (a Decimal128 that fits).
    case decimal(scale: UInt8, value: Int32)
    /// Seconds since the epoch: AMQP timestamps carry whole seconds.
    case timestamp(Int64)
    case array([HeaderValue])
    case table([String: HeaderValue])
}

/// An outbox event ready to publish: where it goes, its AMQP properties and its JSON body.
public struct OutboxMessage: Sendable, Hashable {
    /// Event id; also the AMQP `message_id`, stable across retries.
    public var id: String
    /// Event type, e.g. `OrderCreated`; the AMQP `type` property.
    public var type: String
    /// Empty when the writer gave none.
    public var aggregateType: String
    public var aggregateId: String
    /// The writer's version of the aggregate, when it gave one; order within an aggregate then
    /// follows it. Without it, order follows the time the events were written.
    public var aggregateVersion: Int?
    public var exchange: String
    public var routingKey: String
    /// Milliseconds since the epoch when the event occurred.
    public var occurredAt: Int64
    public var correlationId: String?
    /// The AMQP `priority` (0–255), when the writer gave one; a queue orders by it only when
    /// declared with `x-max-priority`.
    public var priority: UInt8?
    /// Milliseconds since the epoch after which the event is not worth delivering: published with
    /// the AMQP `expiration` set to the time left, and not published at all once past it.
    public var expiresAt: Int64?
    /// Milliseconds since the epoch before which the event is not published (the writer's
    /// `deliverAt`); nil: as soon as it is seen.
    public var deliverAt: Int64?
    public var headers: [String: HeaderValue]
    /// The AMQP `content_type` of `body`.
    public var contentType: String
    /// The AMQP `content_encoding` and `reply_to`: none for outbox events; a consumer's dead
    /// letter keeps those of the message that failed.
    public var contentEncoding: String? = nil
    public var replyTo: String? = nil
    /// The message body, in the wire format chosen for the event.
    public var body: [UInt8]
    /// The store's own key of the event (e.g. a MongoDB `_id` of any type, encoded); opaque to
    /// the core and handed back to the store when the event is marked.
    public var storeKey: [UInt8]
    /// The store has no delivery state for this event yet: a writer put it there as its contract
    /// allows and the relay sees it for the first time.
    public var isFirstSight: Bool
    /// Delivery attempts made before this one.
    public var attempts: Int
    /// The outbox partition (stable hash of the aggregate id); leases are per partition.
    public var partition: Int

    public init(
        id: String, type: String, aggregateType: String, aggregateId: String, aggregateVersion: Int?,
        exchange: String, routingKey: String, occurredAt: Int64, correlationId: String? = nil, priority: UInt8? = nil,
        expiresAt: Int64? = nil, deliverAt: Int64? = nil, headers: [String: HeaderValue] = [:], contentType: String = "application/json",
        body: [UInt8], attempts: Int = 0,
        partition: Int = 0, storeKey: [UInt8] = [], isFirstSight: Bool = false
    ) {
        self.id = id
        self.type = type
        self.aggregateType = aggregateType
        self.aggregateId = aggregateId
        self.aggregateVersion = aggregateVersion
        self.exchange = exchange
        self.routingKey = routingKey
        self.occurredAt = occurredAt
        self.correlationId = correlationId
        self.priority = priority
        self.expiresAt = expiresAt
        self.deliverAt = deliverAt
        self.headers = headers
        self.contentType = contentType
        self.body = body
        self.attempts = attempts
        self.partition = partition
        self.storeKey = storeKey
        self.isFirstSight = isFirstSight
    }

    /// When the event became due (ms): its `deliverAt` when it has one later than it occurred,
    /// else when it occurred. Delivery lag counts from here.
    public var dueSince: Int64 { max(deliverAt ?? occurredAt, occurredAt) }

    /// Headers on the wire: the caller's plus the aggregate's type, id and version (those the
    /// writer gave) and the occurred-at time.
    public var wireHeaders: [String: HeaderValue] {
        var all = headers
        if !aggregateType.isEmpty { all["x-aggregate-type"] = .string(aggregateType) }
        all["x-aggregate-id"] = .string(aggregateId)
        if let aggregateVersion { all["x-aggregate-version"] = .int(Int64(aggregateVersion)) }
        all["x-occurred-at"] = .int(occurredAt)
        return all
    }
}

/// What the broker said about one published message.
public enum PublishOutcome: Sendable, Hashable {
    /// `basic.ack`: the broker has taken responsibility for the message.
    case acked
    /// `basic.nack`: the broker refused it (e.g. a full queue that rejects publishes).
    case nacked
    /// `basic.return` of a mandatory publish: no queue is bound for its routing key.
    case returned(String)
    /// No confirm within the confirm timeout.
    case timedOut
    /// The channel or connection closed (or could not be opened) before the confirm arrived.
    case connectionLost(String)
    /// The broker blocked publishing (`connection.blocked`: a memory or disk alarm); not sent, or
    /// sent and not confirmed before the confirm timeout while blocked.
    case blocked(String)

    public var isDelivered: Bool { self == .acked }

    /// Time will fix it: the broker was unreachable, blocked, slow to confirm, or refused the
    /// message for now (a nack: a full queue that rejects publishes). Transient failures are
    /// retried with capped backoff and never parked unless the relay is told to
    /// (`RetryPolicy.parkTransientAfter`). A return (unroutable) is permanent: it needs a binding.
    public var isTransient: Bool {
        switch self {
        case .acked, .returned: false
        case .nacked, .timedOut, .connectionLost, .blocked: true
        }
    }

    /// Not the event's doing and no attempt made on it: it stays pending exactly as it was.
    public var leavesEventUntouched: Bool {
        switch self {
        case .connectionLost, .blocked: true
        case .acked, .nacked, .returned, .timedOut: false
        }
    }

    /// Short stable label for metrics and logs.
    public var label: String {
        switch self {
        case .acked: "acked"
        case .nacked: "nacked"
        case .returned: "returned"
        case .timedOut: "timed_out"
        case .connectionLost: "connection_lost"
        case .blocked: "blocked"
        }
    }

    public var reason: String {
        switch self {
        case .acked: "acked"
        case .nacked: "broker nacked the publish"
        case .returned(let text): "unroutable (basic.return: \(text))"
        case .timedOut: "no confirm within the confirm timeout"
        case .connectionLost(let text): "connection lost before confirm: \(text)"
        case .blocked(let text): "broker blocked publishing: \(text)"
        }
    }
}

/// Publishes messages with publisher confirms. Returns one outcome per message, in order.
/// Only `.acked` means delivered; anything else leaves the message to be retried.
public protocol ConfirmingPublisher: Sendable {
    func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome]
}
