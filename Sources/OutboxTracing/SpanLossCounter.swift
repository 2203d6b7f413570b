import Logging
import Metrics

/// Counts the spans the OpenTelemetry SDK loses, as `outbox_spans_dropped_total{reason}`:
/// `queue_full` when its batch queue (`OTEL_BSP_MAX_QUEUE_SIZE`) was full at a span's end, and
/// `export_failed` for every span of a batch the collector did not take (down, refusing, too slow
/// for `OTEL_EXPORTER_OTLP_TIMEOUT`). swift-otel keeps both figures to itself and reports them only
/// in its diagnostic log, so this handler stands as its diagnostic logger: it reads the two
/// warnings (their text and metadata, as swift-otel 1.x writes them), counts, and passes every
/// line on to the program's log. The tracing tests stop a real collector to prove the count.
struct SpanLossCounter: LogHandler {
    static let queueFull = Counter(label: "outbox_spans_dropped_total", dimensions: [("reason", "queue_full")])
    static let exportFailed = Counter(label: "outbox_spans_dropped_total", dimensions: [("reason", "export_failed")])

    /// What a diagnostic line says was lost, if anything.
    enum Loss: Equatable {
        case queueFull(Int)
        case exportFailed(Int)
    }

    private var inner: any LogHandler

    init(_ inner: any LogHandler) { self.inner = inner }

    var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    func log(event: LogEvent) {
        switch Self.loss(message: event.message.description, metadata: metadata.merging(event.metadata ?? [:]) { $1 }) {
        case .queueFull(let spans): Self.queueFull.increment(by: spans)
        case .exportFailed(let spans): Self.exportFailed.increment(by: spans)
        case nil: break
        }
        inner.log(event: event)
    }

    /// The spans a diagnostic line of swift-otel's batch span processor reports lost.
    static func loss(message: String, metadata: Logger.Metadata) -> Loss? {
        func count(_ key: String) -> Int? {
            switch metadata[key] {
            case .string(let text): Int(text)
            case .stringConvertible(let value): Int(value.description)
            default: nil
            }
        }
        if message.hasPrefix("Spans were dropped"), let spans = count("dropped_count") { return .queueFull(spans) }
        if message.hasPrefix("Failed to export batch"), let spans = count("batch_size") { return .exportFailed(spans) }
        return nil
    }
}
