import ArgumentParser
import Foundation
import Outbox

#if canImport(Glibc)
    import Glibc
#endif

/// Issue 24's cost figure: the relay's CPU time per event with tracing off and on, for the same
/// backlog of events that each carry a writer's trace context. With tracing on the relay exports
/// its spans over OTLP/HTTP to a real receiver (Tests/clients/otlp_receiver.py, decoding with the
/// OpenTelemetry protocol's Python classes), which counts what arrived.
extension Bench {
    struct TracingCost {
        var off: Double
        var on: Double
        var spansMade: Int
        var spansReceived: Int
    }

    /// A W3C traceparent of its own for event `index`: trace and parent ids from the index.
    static func traceparent(_ index: Int) -> String {
        let id = String(index + 1, radix: 16)
        let trace = String(repeating: "0", count: 32 - id.count) + id
        let span = String(repeating: "0", count: 16 - id.count) + id
        return "00-\(trace)-\(span)-01"
    }

    /// Drains the backlog off, then on, `rounds` times; the lowest CPU time of each.
    func tracingCost(events count: Int, rounds: Int, python: String, receiver script: String) async throws -> TracingCost {
        let spans = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-bench-spans-\(getpid()).jsonl").path
        let portFile = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-bench-receiver-\(getpid()).port").path
        defer { for file in [spans, portFile] { try? FileManager.default.removeItem(atPath: file) } }
        let receiver = try spawnChild([python, script, spans], environment: ProcessInfo.processInfo.environment, stdout: portFile)
        defer {
            kill(receiver, SIGKILL)
            waitChild(receiver)
        }
        var port: Int?
        for _ in 0..<100 where port == nil {
            try await Task.sleep(for: .milliseconds(100))
            port = (try? String(contentsOfFile: portFile, encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        guard let port else { throw ValidationError("the span receiver did not start (\(python) \(script))") }
        // The SDK's defaults but for the endpoint and the export interval: by default the SDK
        // exports 512 spans every 5 s and drops what overflows its queue in between, far below a
        // draining relay's rate; at 200 ms every span is exported (docs/operations.md#tracing).
        let tracing = [
            "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:\(port)",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "200",
        ]
        var off: [Double] = []
        var on: [Double] = []
        var received = 0
        for _ in 0..<rounds {
            try await freshStore()
            off.append(try await drain(events: count, shape: .traced).cpuMicrosPerEvent)
            try await freshStore()
            let before = spanCount(spans)
            on.append(try await drain(events: count, shape: .traced, environment: tracing).cpuMicrosPerEvent)
            // The relay exported its spans before it exited; the receiver may still be writing them.
            var now = spanCount(spans)
            for _ in 0..<50 where now - before < count {
                try await Task.sleep(for: .milliseconds(100))
                now = spanCount(spans)
            }
            received += now - before
        }
        return TracingCost(off: off.min() ?? 0, on: on.min() ?? 0, spansMade: count * rounds, spansReceived: received)
    }

    /// The spans the receiver wrote so far (a line each).
    private func spanCount(_ file: String) -> Int {
        ((try? Data(contentsOf: URL(fileURLWithPath: file))) ?? Data()).reduce(0) { $1 == UInt8(ascii: "\n") ? $0 + 1 : $0 }
    }
}
