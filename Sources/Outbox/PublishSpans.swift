import Tracing

/// A PRODUCER span per publish, by the OpenTelemetry messaging conventions: the child of the
/// writer's span (the message's `traceparent`), from the publish to the broker's confirm, and the
/// message's trace headers then point at it, so consumers become its children. With no tracer
/// bootstrapped (tracing off) the spans are no-ops and the headers stay as the writer gave them.
struct PublishSpans: ~Copyable {
    private var spans: [any Span] = []

    /// Starts a span for each message of `batch` and puts its context into the message's headers.
    /// `now` (milliseconds since the epoch) gives the time the event waited in the outbox.
    init(_ batch: inout [OutboxMessage], now: Int64?) {
        let tracer = InstrumentationSystem.tracer
        // Tracing off: not even a no-op span per message.
        guard !(tracer is NoOpTracer) else { return }
        spans.reserveCapacity(batch.count)
        for index in batch.indices {
            var parent = InstrumentationContext.topLevel
            tracer.extract(batch[index].headers, into: &parent, using: HeaderCarrier())
            let message = batch[index]
            let span = tracer.startSpan("publish \(message.exchange)", context: parent, ofKind: .producer)
            if span.isRecording {
                // In one update: each assignment of its own copies the span's attributes twice.
                span.updateAttributes { attributes in
                    attributes.setMessaging(
                        operation: "send", name: "publish", exchange: message.exchange, routingKey: message.routingKey, messageId: message.id,
                        bodySize: message.body.count)
                    attributes["outbox.event.type"] = message.type
                    attributes["outbox.event.attempt"] = message.attempts + 1
                    if let now { attributes["outbox.event.wait_ms"] = Int(max(now - message.occurredAt, 0)) }
                }
                tracer.inject(span.context, into: &batch[index].headers, using: HeaderCarrier())
            }
            spans.append(span)
        }
    }

    /// Ends each span with its message's outcome.
    consuming func end(_ outcomes: [PublishOutcome]) {
        for (span, outcome) in zip(spans, outcomes) {
            if !outcome.isDelivered {
                span.attributes["outbox.publish.result"] = outcome.label
                span.setStatus(SpanStatus(code: .error, message: outcome.reason))
            }
            span.end()
        }
    }
}

extension SpanAttributes {
    /// What the OpenTelemetry messaging conventions give every span of a RabbitMQ message.
    public mutating func setMessaging(operation: String, name: String, exchange: String, routingKey: String, messageId: String, bodySize: Int) {
        self["messaging.system"] = "rabbitmq"
        self["messaging.operation.type"] = operation
        self["messaging.operation.name"] = name
        self["messaging.destination.name"] = exchange
        self["messaging.rabbitmq.destination.routing_key"] = routingKey
        self["messaging.message.id"] = messageId
        self["messaging.message.body.size"] = bodySize
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
