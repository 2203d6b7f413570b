import Logging
import Outbox
import ServiceLifecycle
import Synchronization

/// The service that empties `SpanQueue` towards the collector: every `OTEL_BSP_SCHEDULE_DELAY`,
/// or at once when a batch is full, it sends batches of at most `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
/// until the queue is empty. A batch the collector does not take is counted
/// (`outbox_spans_dropped_total{reason="export_failed"}`) and not sent again. The log says when
/// exporting starts to fail and when it works again, not at every batch. At a graceful shutdown it
/// exports what the other services ended (it runs first in the service group, so it stops last)
/// and gives up on the rest after the first failure.
final class SpanExport: Service, Sendable {
    let queue: SpanQueue
    let encoding: OTLPEncoding
    let transport: any SpanTransport
    let scheduleDelay: Duration
    let logger: Logger
    private let failing = Atomic(false)

    init(queue: SpanQueue, encoding: OTLPEncoding, transport: any SpanTransport, scheduleDelay: Duration, logger: Logger) {
        self.queue = queue
        self.encoding = encoding
        self.transport = transport
        self.scheduleDelay = scheduleDelay
        self.logger = logger
    }

    func run() async throws {
        let stopping = Atomic(false)
        await withGracefulShutdownHandler {
            while !stopping.load(ordering: .relaxed) && !Task.isCancelled {
                await self.queue.wake.wait(timeout: self.scheduleDelay)
                await self.exportQueued(stopOnFailure: false)
            }
        } onGracefulShutdown: {
            stopping.store(true, ordering: .relaxed)
            self.queue.exportSoon()
        }
        await exportQueued(stopOnFailure: true)
        transport.close()
    }

    /// Sends batches until the queue is empty (or, with `stopOnFailure`, until one fails: the
    /// rest is counted as not exported).
    private func exportQueued(stopOnFailure: Bool) async {
        while true {
            let (spans, dropped) = queue.take()
            if dropped > 0 {
                logger.warning(
                    "spans dropped: the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE; a shorter OTEL_BSP_SCHEDULE_DELAY exports more often)",
                    metadata: [LogKey.tracesSpans: "\(dropped)"])
            }
            guard !spans.isEmpty else { return }
            if await !export(spans), stopOnFailure {
                while case let (rest, _) = queue.take(), !rest.isEmpty { queue.exportFailed.increment(by: rest.count) }
                return
            }
        }
    }

    /// Sends one batch; false when the collector did not take it.
    private func export(_ spans: [FinishedSpan]) async -> Bool {
        do {
            try await transport.send(encoding.request(spans))
            if failing.exchange(false, ordering: .relaxed) {
                logger.info("spans are exported again")
            }
            return true
        } catch {
            queue.exportFailed.increment(by: spans.count)
            if !failing.exchange(true, ordering: .relaxed) {
                logger.warning(
                    "spans not exported: the collector did not take them; counted in outbox_spans_dropped_total, logged again once it works",
                    metadata: [LogKey.tracesSpans: "\(spans.count)", LogKey.error: "\(error)"])
            }
            return false
        }
    }
}
