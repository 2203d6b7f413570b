import CRabbitMQ
import Outbox

/// A value in an AMQP field table (message headers) as the broker holds it, of any AMQP 0-9-1
/// type RabbitMQ uses, so that a message read from a queue and published again keeps its headers
/// (the broker's `x-death`, an array of tables, included).
public indirect enum AMQPFieldValue: Sendable, Hashable {
    case bool(Bool)
    /// Any integer (`b`, `B`, `s`, `u`, `I`, `i`, `l`, `L`); published as a signed 64-bit one.
    case int(Int64)
    case float(Float)
    case double(Double)
    /// `value` × 10^-`scale`.
    case decimal(scale: UInt8, value: UInt32)
    case string(String)
    case bytes([UInt8])
    /// Seconds since the epoch.
    case timestamp(UInt64)
    case array([AMQPFieldValue])
    case table([String: AMQPFieldValue])
    case void

    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    public var intValue: Int64? { if case .int(let i) = self { i } else { nil } }
    public var arrayValue: [AMQPFieldValue]? { if case .array(let a) = self { a } else { nil } }
    public var tableValue: [String: AMQPFieldValue]? { if case .table(let t) = self { t } else { nil } }
}

/// The properties of a message (`basic.properties`); nil where the publisher set none.
public struct AMQPProperties: Sendable, Hashable {
    public var contentType: String?
    public var contentEncoding: String?
    public var headers: [String: AMQPFieldValue]
    /// 2 persistent, 1 transient.
    public var deliveryMode: UInt8?
    public var priority: UInt8?
    public var correlationId: String?
    public var replyTo: String?
    /// Per-message TTL in milliseconds, as text.
    public var expiration: String?
    public var messageId: String?
    /// Seconds since the epoch.
    public var timestamp: UInt64?
    public var type: String?
    /// Checked by the broker against the connection's user when published.
    public var userId: String?
    public var appId: String?

    public init(
        contentType: String? = nil, contentEncoding: String? = nil, headers: [String: AMQPFieldValue] = [:],
        deliveryMode: UInt8? = nil, priority: UInt8? = nil, correlationId: String? = nil, replyTo: String? = nil,
        expiration: String? = nil, messageId: String? = nil, timestamp: UInt64? = nil, type: String? = nil,
        userId: String? = nil, appId: String? = nil
    ) {
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.headers = headers
        self.deliveryMode = deliveryMode
        self.priority = priority
        self.correlationId = correlationId
        self.replyTo = replyTo
        self.expiration = expiration
        self.messageId = messageId
        self.timestamp = timestamp
        self.type = type
        self.userId = userId
        self.appId = appId
    }
}

/// A message taken from a queue with `basic.get` and not acknowledged: no other consumer sees it
/// until it is acked (removed), given back, or its connection closes (then the broker requeues it).
public struct AMQPMessage: Sendable {
    public var deliveryTag: UInt64
    public var redelivered: Bool
    public var exchange: String
    public var routingKey: String
    /// Messages the queue still held when the broker handed this one out.
    public var messagesLeft: Int
    public var properties: AMQPProperties
    public var body: [UInt8]
    /// The owner's connection generation that holds it: only that connection can ack or return it.
    public var connectionGeneration: Int

    public init(
        deliveryTag: UInt64 = 0, redelivered: Bool = false, exchange: String = "", routingKey: String = "", messagesLeft: Int = 0,
        properties: AMQPProperties, body: [UInt8], connectionGeneration: Int = 0
    ) {
        self.deliveryTag = deliveryTag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routingKey = routingKey
        self.messagesLeft = messagesLeft
        self.properties = properties
        self.body = body
        self.connectionGeneration = connectionGeneration
    }
}

// MARK: - Converting to and from rabbitmq-c

extension AMQPProperties {
    init(_ props: amqp_basic_properties_t) {
        func has(_ flag: Int32) -> Bool { props._flags & amqp_flags_t(flag) != 0 }
        func string(_ flag: Int32, _ bytes: amqp_bytes_t) -> String? { has(flag) ? String(amqpBytes: bytes) : nil }
        self.init(
            contentType: string(AMQP_BASIC_CONTENT_TYPE_FLAG, props.content_type),
            contentEncoding: string(AMQP_BASIC_CONTENT_ENCODING_FLAG, props.content_encoding),
            headers: has(AMQP_BASIC_HEADERS_FLAG) ? decodeFieldTable(props.headers) : [:],
            deliveryMode: has(AMQP_BASIC_DELIVERY_MODE_FLAG) ? props.delivery_mode : nil,
            priority: has(AMQP_BASIC_PRIORITY_FLAG) ? props.priority : nil,
            correlationId: string(AMQP_BASIC_CORRELATION_ID_FLAG, props.correlation_id),
            replyTo: string(AMQP_BASIC_REPLY_TO_FLAG, props.reply_to),
            expiration: string(AMQP_BASIC_EXPIRATION_FLAG, props.expiration),
            messageId: string(AMQP_BASIC_MESSAGE_ID_FLAG, props.message_id),
            timestamp: has(AMQP_BASIC_TIMESTAMP_FLAG) ? props.timestamp : nil,
            type: string(AMQP_BASIC_TYPE_FLAG, props.type),
            userId: string(AMQP_BASIC_USER_ID_FLAG, props.user_id),
            appId: string(AMQP_BASIC_APP_ID_FLAG, props.app_id))
    }

    /// The C properties, their memory held by `arena`.
    func encoded(in arena: CArena) -> amqp_basic_properties_t {
        var props = amqp_basic_properties_t()
        var flags: Int32 = 0
        func set(_ value: String?, _ flag: Int32, _ field: WritableKeyPath<amqp_basic_properties_t, amqp_bytes_t>) {
            guard let value else { return }
            flags |= flag
            props[keyPath: field] = arena.bytes(value)
        }
        set(contentType, AMQP_BASIC_CONTENT_TYPE_FLAG, \.content_type)
        set(contentEncoding, AMQP_BASIC_CONTENT_ENCODING_FLAG, \.content_encoding)
        set(correlationId, AMQP_BASIC_CORRELATION_ID_FLAG, \.correlation_id)
        set(replyTo, AMQP_BASIC_REPLY_TO_FLAG, \.reply_to)
        set(expiration, AMQP_BASIC_EXPIRATION_FLAG, \.expiration)
        set(messageId, AMQP_BASIC_MESSAGE_ID_FLAG, \.message_id)
        set(type, AMQP_BASIC_TYPE_FLAG, \.type)
        set(userId, AMQP_BASIC_USER_ID_FLAG, \.user_id)
        set(appId, AMQP_BASIC_APP_ID_FLAG, \.app_id)
        if !headers.isEmpty {
            flags |= AMQP_BASIC_HEADERS_FLAG
            props.headers = arena.fieldTable(headers)
        }
        if let deliveryMode {
            flags |= AMQP_BASIC_DELIVERY_MODE_FLAG
            props.delivery_mode = deliveryMode
        }
        if let priority {
            flags |= AMQP_BASIC_PRIORITY_FLAG
            props.priority = priority
        }
        if let timestamp {
            flags |= AMQP_BASIC_TIMESTAMP_FLAG
            props.timestamp = timestamp
        }
        props._flags = amqp_flags_t(flags)
        return props
    }
}

func decodeFieldTable(_ table: amqp_table_t) -> [String: AMQPFieldValue] {
    var result: [String: AMQPFieldValue] = [:]
    guard let entries = table.entries else { return result }
    for i in 0..<Int(table.num_entries) {
        if let value = decodeField(entries[i].value) { result[String(amqpBytes: entries[i].key)] = value }
    }
    return result
}

/// nil for a kind rabbitmq-c does not know (it refuses such a frame before this point).
func decodeField(_ field: amqp_field_value_t) -> AMQPFieldValue? {
    let value = field.value
    switch Character(UnicodeScalar(field.kind)) {
    case "t": return .bool(value.boolean != 0)
    case "b": return .int(Int64(value.i8))
    case "B": return .int(Int64(value.u8))
    case "s": return .int(Int64(value.i16))
    case "u": return .int(Int64(value.u16))
    case "I": return .int(Int64(value.i32))
    case "i": return .int(Int64(value.u32))
    case "l": return .int(value.i64)
    case "L": return .int(Int64(bitPattern: value.u64))
    case "f": return .float(value.f32)
    case "d": return .double(value.f64)
    case "D": return .decimal(scale: value.decimal.decimals, value: value.decimal.value)
    case "S": return .string(String(amqpBytes: value.bytes))
    case "x": return .bytes([UInt8](amqpBytes: value.bytes))
    case "T": return .timestamp(value.u64)
    case "V": return .void
    case "F": return .table(decodeFieldTable(value.table))
    case "A":
        guard let entries = value.array.entries else { return .array([]) }
        return .array((0..<Int(value.array.num_entries)).compactMap { decodeField(entries[$0]) })
    default: return nil
    }
}

extension CArena {
    func fieldTable(_ fields: [String: AMQPFieldValue]) -> amqp_table_t {
        guard !fields.isEmpty else { return amqp_empty_table }
        let entries = allocate(MemoryLayout<amqp_table_entry_t>.stride * fields.count)
            .bindMemory(to: amqp_table_entry_t.self, capacity: fields.count)
        for (i, (key, value)) in fields.sorted(by: { $0.key < $1.key }).enumerated() {
            (entries + i).initialize(to: amqp_table_entry_t(key: bytes(key), value: field(value)))
        }
        return amqp_table_t(num_entries: Int32(fields.count), entries: entries)
    }

    func field(_ value: AMQPFieldValue) -> amqp_field_value_t {
        var field = amqp_field_value_t()
        func kind(_ c: Unicode.Scalar) { field.kind = UInt8(ascii: c) }
        switch value {
        case .bool(let b):
            kind("t")
            field.value.boolean = b ? 1 : 0
        case .int(let n):
            kind("l")
            field.value.i64 = n
        case .float(let f):
            kind("f")
            field.value.f32 = f
        case .double(let d):
            kind("d")
            field.value.f64 = d
        case .decimal(let scale, let digits):
            kind("D")
            field.value.decimal = amqp_decimal_t(decimals: scale, value: digits)
        case .string(let s):
            kind("S")
            field.value.bytes = bytes(s)
        case .bytes(let b):
            kind("x")
            field.value.bytes = bytes(b)
        case .timestamp(let t):
            kind("T")
            field.value.u64 = t
        case .array(let values):
            kind("A")
            let entries = allocate(MemoryLayout<amqp_field_value_t>.stride * max(values.count, 1))
                .bindMemory(to: amqp_field_value_t.self, capacity: max(values.count, 1))
            for (i, element) in values.enumerated() { (entries + i).initialize(to: self.field(element)) }
            field.value.array = amqp_array_t(num_entries: Int32(values.count), entries: entries)
        case .table(let fields):
            kind("F")
            field.value.table = fieldTable(fields)
        case .void:
            kind("V")
        }
        return field
    }
}

// MARK: - Taking messages off a queue and putting them back

extension AMQPAdmin {
    /// The ready messages in `queue`, or nil when there is no such queue (`queue.declare`
    /// passive: never creates one). Ask before getting messages without ack: a missing queue
    /// closes the channel, which gives back every message it holds. Like the other admin reads,
    /// tried once more on a fresh connection when the one it had went stale (a broker node gone).
    public func messageCount(_ queue: String) async throws -> Int? {
        try await run { try $0.inspectQueue(queue)?.messages }
    }

    /// Takes the next message off `queue` without acknowledging it; nil when the queue is empty.
    /// It stays this admin's until `ack`ed, given back with `nack`, or the connection closes (then
    /// the broker requeues it). Not retried on a fresh connection: a failure means every message
    /// held so far is back in its queue.
    public func getUnacked(_ queue: String) async throws -> AMQPMessage? {
        try await owner.run { try $0.get(queue: queue, autoAck: false) }
    }

    /// Acks (removes) a message got with `getUnacked`. False when the connection that got it is
    /// gone: the broker has put it back in its queue.
    public func ack(_ message: AMQPMessage) async throws -> Bool {
        try await owner.run { connection in
            guard connection.generation == message.connectionGeneration else { return false }
            try connection.ack(message.deliveryTag)
            return true
        }
    }

    /// Gives messages got with `getUnacked` back to their queue (`basic.nack` with requeue), or
    /// without `requeue` lets the broker dead-letter or drop them. Those of a connection that is
    /// gone are back in their queue already.
    public func nack(_ messages: [AMQPMessage], requeue: Bool) async throws {
        guard !messages.isEmpty else { return }
        try await owner.run { connection in
            for message in messages where message.connectionGeneration == connection.generation {
                try connection.nack(message.deliveryTag, multiple: false, requeue: requeue)
            }
        }
    }

    /// Publishes one message with exactly `properties` and waits up to `timeout` for the broker's
    /// confirm (the channel is put in confirm mode on first use). `mandatory`: a message no queue
    /// takes comes back `.returned`. Never throws: a failure is the outcome.
    public func publishConfirmed(
        exchange: String, routingKey: String, properties: AMQPProperties, body: [UInt8], mandatory: Bool = true,
        timeout: Duration = .seconds(10)
    ) async -> PublishOutcome {
        do {
            return try await owner.run { connection in
                if !connection.confirmMode { try connection.confirmSelect() }
                try connection.waitWhileBlocked(timeout: min(timeout, .seconds(1)))
                if let reason = connection.blockedReason { return .blocked(reason) }
                let tag = try connection.publish(
                    exchange: exchange, routingKey: routingKey, mandatory: mandatory, properties: properties, body: body)
                defer { connection.releaseBuffers() }
                return try connection.awaitConfirm(of: tag, messageId: properties.messageId, timeout: timeout)
            }
        } catch {
            return .connectionLost("\(error)")
        }
    }
}
