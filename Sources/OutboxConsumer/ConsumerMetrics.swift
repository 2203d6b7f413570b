import Foundation
import Metrics
import Outbox

/// A consumer's metrics, labelled by consumer name.
struct ConsumerMetrics {
    let processed: Counter
    let duplicates: Counter
    let deadLettered: Counter
    let failures: Counter
    let handlerDuration: Timer
    let batchSize: Recorder
    /// From an event's occurrence (the relay's `x-occurred-at` header) to its effect's commit.
    let lag: EventLag

    init(consumer: String) {
        let dimensions = [("consumer", consumer)]
        processed = Counter(label: "outbox_consumer_processed_total", dimensions: dimensions)
        duplicates = Counter(label: "outbox_consumer_duplicates_skipped_total", dimensions: dimensions)
        deadLettered = Counter(label: "outbox_consumer_dead_lettered_total", dimensions: dimensions)
        failures = Counter(label: "outbox_consumer_handler_failures_total", dimensions: dimensions)
        handlerDuration = Timer(label: "outbox_consumer_handler_duration_seconds", dimensions: dimensions)
        batchSize = Recorder(label: "outbox_consumer_batch_size", dimensions: dimensions, aggregate: true)
        lag = EventLag(name: "outbox_consumer_lag_seconds", dimensions: dimensions)
    }

    /// Counts `messages` whose effects just committed and records their lag; a message without
    /// `x-occurred-at` (not published by the relay) has none.
    func applied(_ messages: [IncomingMessage]) {
        processed.increment(by: messages.count)
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        for message in messages {
            guard case .int(let occurredAt)? = message.headers["x-occurred-at"] else { continue }
            lag.record(type: message.type, occurredAt: occurredAt, now: now)
        }
    }
}
