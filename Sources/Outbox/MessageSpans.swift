import Tracing

/// The attributes of a message's span by the OpenTelemetry messaging conventions (RabbitMQ), as
/// one value: the relay's publish span and a consumer's process span, with the outbox's own.
public struct MessagingAttributes: Sendable {
    /// `messaging.operation.type` (`send`, `process`) and `messaging.operation.name`.
    public var operation: String
    public var name: String
    public var exchange: String
    public var routingKey: String
    public var messageId: String
    public var bodySize: Int
    /// `outbox.event.type`, `outbox.event.attempt`, `outbox.event.wait_ms` (publish).
    public var eventType: String?
    public var attempt: Int?
    public var waitMs: Int?
    /// `messaging.consumer.group.name`, `outbox.consumer.redelivered` (process).
    public var consumerGroup: String?
    public var redelivered = false

    public init(
        operation: String, name: String, exchange: String, routingKey: String, messageId: String, bodySize: Int, eventType: String? = nil,
        attempt: Int? = nil, waitMs: Int? = nil, consumerGroup: String? = nil, redelivered: Bool = false
    ) {
        self.operation = operation
        self.name = name
        self.exchange = exchange
        self.routingKey = routingKey
        self.messageId = messageId
        self.bodySize = bodySize
        self.eventType = eventType
        self.attempt = attempt
        self.waitMs = waitMs
        self.consumerGroup = consumerGroup
        self.redelivered = redelivered
    }

    /// Calls `body` with each attribute's name and value.
    public func forEach(_ body: (String, SpanAttribute) -> Void) {
        body("messaging.system", .string("rabbitmq"))
        body("messaging.operation.type", .string(operation))
        body("messaging.operation.name", .string(name))
        body("messaging.destination.name", .string(exchange))
        body("messaging.rabbitmq.destination.routing_key", .string(routingKey))
        body("messaging.message.id", .string(messageId))
        body("messaging.message.body.size", .int64(Int64(bodySize)))
        if let eventType { body("outbox.event.type", .string(eventType)) }
        if let attempt { body("outbox.event.attempt", .int64(Int64(attempt))) }
        if let waitMs { body("outbox.event.wait_ms", .int64(Int64(waitMs))) }
        if let consumerGroup { body("messaging.consumer.group.name", .string(consumerGroup)) }
        if redelivered { body("outbox.consumer.redelivered", .bool(true)) }
    }

    /// As span attributes, for a tracer that takes them one by one.
    public var spanAttributes: SpanAttributes {
        var attributes = SpanAttributes()
        attributes.reserveCapacity(12)
        forEach { key, value in attributes[key] = value }
        return attributes
    }
}

/// A tracer that starts a message's span in one call: the parent from the message's trace
/// headers, the attributes whole, and the span's context written back into the headers when it
/// records. The project's tracer (OutboxTracing) is one; it spares each message the context
/// dictionaries and the attribute dictionary of the general path.
public protocol MessageSpanTracer: Tracer {
    func startMessageSpan(_ name: String, kind: SpanKind, attributes: MessagingAttributes, headers: inout [String: HeaderValue]) -> any Tracing.Span
}

/// How the relay and the consumers start a message's span with whichever tracer is bootstrapped.
public struct MessageSpans {
    private let tracer: any Tracer
    private let messageTracer: (any MessageSpanTracer)?

    /// Nil with tracing off: not even a no-op span per message.
    public init?() {
        let tracer = InstrumentationSystem.tracer
        guard !(tracer is NoOpTracer) else { return nil }
        self.tracer = tracer
        messageTracer = tracer as? any MessageSpanTracer
    }

    /// A span that continues the context in `headers` (a new trace without one); when it records,
    /// its own context replaces theirs, so whoever receives the message becomes its child.
    public func start(_ name: String, kind: SpanKind, attributes: MessagingAttributes, headers: inout [String: HeaderValue]) -> any Span {
        if let messageTracer { return messageTracer.startMessageSpan(name, kind: kind, attributes: attributes, headers: &headers) }
        var parent = InstrumentationContext.topLevel
        tracer.extract(headers, into: &parent, using: HeaderCarrier())
        let span = tracer.startSpan(name, context: parent, ofKind: kind)
        if span.isRecording {
            span.attributes = attributes.spanAttributes
            tracer.inject(span.context, into: &headers, using: HeaderCarrier())
        }
        return span
    }
}

/// Message headers as a carrier of trace context (`traceparent`, `tracestate`).
public struct HeaderCarrier: Extractor, Injector {
    public init() {}

    public func extract(key: String, from carrier: [String: HeaderValue]) -> String? {
        if case .string(let value)? = carrier[key] { value } else { nil }
    }

    public func inject(_ value: String, forKey key: String, into carrier: inout [String: HeaderValue]) {
        carrier[key] = .string(value)
    }
}
