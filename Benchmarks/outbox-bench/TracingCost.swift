import ArgumentParser
import Foundation
import Outbox

#if canImport(Glibc)
    import Glibc
#endif

/// Issue 24's cost figure: the relay's CPU time per event with tracing off and on, for the same
/// backlog of events that each carry a writer's trace context. With tracing on the relay exports
/// its spans over OTLP/HTTP, and then over OTLP/gRPC, to real receivers
/// (Tests/clients/otlp_receiver.py, decoding with the OpenTelemetry protocol's Python classes;
/// grpcio serving gRPC), which count what arrived.
extension Bench {
    struct TracingCost {
        var off: Double
        var on: [String: Double]
        var spansMade: Int
        var spansReceived: [String: Int]
    }

    /// The OTLP transports measured, in the order they are printed.
    static let tracingTransports = ["http/protobuf", "grpc"]

    /// A W3C traceparent of its own for event `index`: trace and parent ids from the index.
    static func traceparent(_ index: Int) -> String {
        let id = String(index + 1, radix: 16)
        let trace = String(repeating: "0", count: 32 - id.count) + id
        let span = String(repeating: "0", count: 16 - id.count) + id
        return "00-\(trace)-\(span)-01"
    }

    /// Drains the backlog off, then on, `rounds` times; the lowest CPU time of each.
    func tracingCost(events count: Int, rounds: Int, python: String, receiver script: String) async throws -> TracingCost {
        var receivers: [(transport: String, spans: String, pid: pid_t, port: Int)] = []
        defer {
            for receiver in receivers {
                kill(receiver.pid, SIGKILL)
                waitChild(receiver.pid)
                try? FileManager.default.removeItem(atPath: receiver.spans)
            }
        }
        for transport in Self.tracingTransports {
            let name = "outbox-bench-\(transport == "grpc" ? "grpc" : "http")-\(getpid())"
            let spans = FileManager.default.temporaryDirectory.appendingPathComponent("\(name).jsonl").path
            let portFile = FileManager.default.temporaryDirectory.appendingPathComponent("\(name).port").path
            defer { try? FileManager.default.removeItem(atPath: portFile) }
            let pid = try spawnChild(
                [python, script, spans] + (transport == "grpc" ? ["--grpc"] : []), environment: ProcessInfo.processInfo.environment,
                stdout: portFile)
            var port: Int?
            for _ in 0..<100 where port == nil {
                try await Task.sleep(for: .milliseconds(100))
                port = (try? String(contentsOfFile: portFile, encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            }
            guard let port else {
                kill(pid, SIGKILL)
                waitChild(pid)
                throw ValidationError("the span receiver did not start (\(python) \(script), \(transport))")
            }
            receivers.append((transport, spans, pid, port))
        }
        var off: [Double] = []
        var on: [String: [Double]] = [:]
        var received: [String: Int] = [:]
        for _ in 0..<rounds {
            try await freshStore()
            off.append(try await drain(events: count, shape: .traced).cpuMicrosPerEvent)
            for receiver in receivers {
                // The specification's defaults but for the endpoint and the export interval: by
                // default 512 spans go every 5 s and what overflows the queue in between is
                // dropped, far below a draining relay's rate; at 200 ms every span is exported
                // (docs/operations.md#tracing).
                let tracing = [
                    "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:\(receiver.port)",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": receiver.transport, "OTEL_BSP_SCHEDULE_DELAY": "200",
                ]
                try await freshStore()
                let before = spanCount(receiver.spans)
                on[receiver.transport, default: []].append(
                    try await drain(events: count, shape: .traced, environment: tracing).cpuMicrosPerEvent)
                // The relay exported its spans before it exited; the receiver may still be writing them.
                var now = spanCount(receiver.spans)
                for _ in 0..<50 where now - before < count {
                    try await Task.sleep(for: .milliseconds(100))
                    now = spanCount(receiver.spans)
                }
                received[receiver.transport, default: 0] += now - before
            }
        }
        return TracingCost(off: off.min() ?? 0, on: on.mapValues { $0.min() ?? 0 }, spansMade: count * rounds, spansReceived: received)
    }

    /// The spans the receiver wrote so far (a line each).
    private func spanCount(_ file: String) -> Int {
        ((try? Data(contentsOf: URL(fileURLWithPath: file))) ?? Data()).reduce(0) { $1 == UInt8(ascii: "\n") ? $0 + 1 : $0 }
    }
}
