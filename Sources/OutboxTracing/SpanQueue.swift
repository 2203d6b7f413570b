import Metrics
import Outbox
import Synchronization

/// Ended spans waiting for the exporter: at most `OTEL_BSP_MAX_QUEUE_SIZE`. A span that ends while
/// the queue is full is dropped and counted (`outbox_spans_dropped_total{reason="queue_full"}`),
/// so a collector that is down or slow never holds delivery up; a full batch
/// (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`) wakes the exporter before its schedule.
final class SpanQueue: Sendable {
    private struct State {
        var spans: [FinishedSpan] = []
        /// Dropped since the exporter last asked (for its log line).
        var dropped = 0
    }

    let capacity: Int
    let batchSize: Int
    let wake = WakeSignal()
    private let state = Mutex(State())
    /// `outbox_spans_dropped_total`, both reasons: made as tracing starts, so the series exist
    /// (at zero) from then on.
    let queueFull = Counter(label: "outbox_spans_dropped_total", dimensions: [("reason", "queue_full")])
    let exportFailed = Counter(label: "outbox_spans_dropped_total", dimensions: [("reason", "export_failed")])

    init(capacity: Int, batchSize: Int) {
        self.capacity = capacity
        self.batchSize = batchSize
        queueFull.increment(by: 0)
        exportFailed.increment(by: 0)
    }

    func append(_ span: FinishedSpan) {
        let (accepted, batchFull) = state.withLock { state -> (Bool, Bool) in
            guard state.spans.count < capacity else {
                state.dropped += 1
                return (false, false)
            }
            state.spans.append(span)
            return (true, state.spans.count == batchSize)
        }
        if !accepted { queueFull.increment() }
        if batchFull { wake.signal() }
    }

    /// Wakes the exporter now (a flush).
    func exportSoon() { wake.signal() }

    /// Takes the oldest spans, at most a batch, and the count dropped since the last take.
    func take() -> (spans: [FinishedSpan], dropped: Int) {
        state.withLock { state in
            let dropped = state.dropped
            state.dropped = 0
            guard state.spans.count > batchSize else {
                defer { state.spans = [] }
                return (state.spans, dropped)
            }
            let batch = Array(state.spans.prefix(batchSize))
            state.spans.removeFirst(batchSize)
            return (batch, dropped)
        }
    }
}
