import Outbox
import OutboxAMQP
import Synchronization
import Tracing

/// A CONSUMER span per message a consumer handles ("process <queue>", by the OpenTelemetry
/// messaging conventions): the child of the publisher's span (the message's `traceparent`), open
/// from the delivery to its settlement. The handler sees the span's context as the message's
/// trace headers, so the events it writes (`NewEvent(traceContext: message.traceContext)`) are
/// its children and the trace goes on. With tracing off nothing is recorded and the headers stay.
final class ConsumeSpans: Sendable {
    private let open = Mutex<[UInt64: any Span]>([:])
    private let consumer: String
    private let queue: String

    init(consumer: String, queue: String) {
        self.consumer = consumer
        self.queue = queue
    }

    /// Starts the span of `delivery`; returns the headers its handler sees.
    func start(_ delivery: AMQPDelivery, messageId: String) -> [String: HeaderValue] {
        guard let starter = MessageSpans() else { return delivery.headers }
        var headers = delivery.headers
        let span = starter.start(
            "process \(queue)", kind: .consumer,
            attributes: MessagingAttributes(
                operation: "process", name: "process", exchange: delivery.exchange, routingKey: delivery.routingKey, messageId: messageId,
                bodySize: delivery.body.count, consumerGroup: consumer, redelivered: delivery.redelivered),
            headers: &headers)
        guard span.isRecording else { return delivery.headers }
        open.withLock { $0[delivery.deliveryTag] = span }
        return headers
    }

    /// Marks the span of a delivery that was not applied (dead-lettered, or given back).
    func failed(_ deliveryTag: UInt64, outcome: String, reason: String) {
        guard let span = open.withLock({ $0[deliveryTag] }) else { return }
        span.attributes["outbox.consumer.result"] = outcome
        span.setStatus(SpanStatus(code: .error, message: reason))
    }

    /// Ends the spans of `deliveryTags` (their deliveries are settled).
    func end(_ deliveryTags: some Sequence<UInt64>) {
        let spans = open.withLock { open in deliveryTags.compactMap { open.removeValue(forKey: $0) } }
        for span in spans { span.end() }
    }
}
