import Logging
import Testing

@testable import OutboxTracing

/// The two diagnostic lines of swift-otel's batch span processor that report lost spans; the
/// tracing integration tests prove the count against the real SDK and a stopped collector.
@Suite("Span loss read from the OpenTelemetry SDK's diagnostics")
struct SpanLossCounterTests {
    @Test("a full queue and a failed export are counted by their span counts; other lines are not")
    func readsLoss() {
        #expect(
            SpanLossCounter.loss(
                message: "Spans were dropped this iteration because queue was full",
                metadata: ["queue_size": "2048", "dropped_count": "17"]) == .queueFull(17))
        #expect(
            SpanLossCounter.loss(message: "Failed to export batch.", metadata: ["batch_id": "3", "batch_size": "512"])
                == .exportFailed(512))
        #expect(SpanLossCounter.loss(message: "Failed to export batch.", metadata: [:]) == nil)
        #expect(SpanLossCounter.loss(message: "Force flush failed.", metadata: ["batch_size": "5"]) == nil)
    }
}
