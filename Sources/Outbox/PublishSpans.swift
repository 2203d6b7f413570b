import Tracing

/// A PRODUCER span per publish, by the OpenTelemetry messaging conventions: the child of the
/// writer's span (the message's `traceparent`), from the publish to the broker's confirm, and the
/// message's trace headers then point at it, so consumers become its children. With no tracer
/// bootstrapped (tracing off) no span is made and the headers stay as the writer gave them.
struct PublishSpans: ~Copyable {
    private var spans: [any Span] = []

    /// Starts a span for each message of `batch` and puts its context into the message's headers.
    /// `now` (milliseconds since the epoch) gives the time the event waited in the outbox.
    init(_ batch: inout [OutboxMessage], now: Int64?) {
        guard let starter = MessageSpans() else { return }
        spans.reserveCapacity(batch.count)
        var name = ("", "")  // exchange, span name: a batch mostly goes to one exchange
        for index in batch.indices {
            if name.0 != batch[index].exchange { name = (batch[index].exchange, "publish \(batch[index].exchange)") }
            let attributes = MessagingAttributes(
                operation: "send", name: "publish", exchange: batch[index].exchange, routingKey: batch[index].routingKey,
                messageId: batch[index].id, bodySize: batch[index].body.count, eventType: batch[index].type,
                attempt: batch[index].attempts + 1, waitMs: now.map { Int(max($0 - batch[index].occurredAt, 0)) })
            spans.append(starter.start(name.1, kind: .producer, attributes: attributes, headers: &batch[index].headers))
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
