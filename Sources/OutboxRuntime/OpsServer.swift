import Foundation
import Hummingbird
import Logging
import Metrics
import Outbox
import Prometheus
import ServiceLifecycle

/// `/metrics` (Prometheus text), `/health/live` and `/health/ready` for a long-running process.
public enum OpsServer {
    /// Installs the Prometheus backend for swift-metrics; call once, before any metric is created.
    /// `eventTypes` bounds the `type` label of the lag histograms (`EventTypeLabels`).
    public static func bootstrapMetrics(eventTypes: Int = EventTypeLabels.defaultLimit) -> PrometheusCollectorRegistry {
        EventTypeLabels.shared.configure(limit: eventTypes)
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        for name in ["outbox_delivery_lag_seconds", "outbox_consumer_lag_seconds"] { factory.durationHistogramBuckets[name] = EventLag.buckets }
        factory.defaultDurationHistogramBuckets = [
            .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
            .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10),
        ]
        factory.defaultValueHistogramBuckets = [1, 10, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
        MetricsSystem.bootstrap(factory)
        return registry
    }

    /// Parses `host:port` (port 0 picks a free one); errors name `setting`.
    public static func address(_ text: String, setting: String) throws -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port),
            colon != text.startIndex
        else {
            throw ConfigurationError(setting: setting, reason: "'\(text)' is not host:port, e.g. 127.0.0.1:9400")
        }
        return (String(text[..<colon]), port)
    }

    /// The state of one readiness check, as `/health/ready` names it.
    public enum Check: String, Sendable {
        case up, down
        /// Connected, but the broker blocks publishing (`connection.blocked`: a resource alarm).
        case blocked
        /// One of several parts fails while the others work (a relay's source): named, still ready.
        case degraded

        public init(up: Bool) { self = up ? .up : .down }
    }

    /// The HTTP service. `ready` reports named checks; ready means all are up or degraded. `live` says whether
    /// the process still makes progress (e.g. a `LivenessWatchdog` over its main loop); without
    /// one, live means the process answers.
    public static func make(
        host: String, port: Int, registry: PrometheusCollectorRegistry, logger: Logger,
        live: @escaping @Sendable () -> LivenessWatchdog.Status = { .live },
        ready: @escaping @Sendable () async -> [String: Check]
    ) -> some Service {
        let router = Router()
        router.get("/metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
        }
        router.get("/health/live") { _, _ in
            switch live() {
            case .live: return json(.ok, #"{"status":"live"}"#)
            case .stalled(let since):
                return json(.serviceUnavailable, #"{"status":"stalled","secondsSinceLastIteration":\#(since.components.seconds)}"#)
            }
        }
        router.get("/health/ready") { _, _ in
            let checks = await ready()
            let ok = checks.values.allSatisfy { $0 == .up || $0 == .degraded }
            let fields = checks.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\"\($0.value.rawValue)\"" }.joined(separator: ",")
            return json(ok ? .ok : .serviceUnavailable, #"{"status":"\#(ok ? "ready" : "not ready")",\#(fields)}"#)
        }
        return Application(router: router, configuration: .init(address: .hostname(host, port: port), serverName: "outbox-ops"), logger: logger)
    }

    static func json(_ status: HTTPResponse.Status, _ body: String) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}

/// Records `outbox_connection_up{target=...}` every `interval` from the given probes.
public final class ConnectionGauges: Service {
    private let probes: [(String, @Sendable () -> Bool)]
    private let interval: Duration

    public init(probes: [(String, @Sendable () -> Bool)], interval: Duration = .seconds(2)) {
        self.probes = probes
        self.interval = interval
    }

    public func run() async throws {
        let gauges = probes.map { (Gauge(label: "outbox_connection_up", dimensions: [("target", $0.0)]), $0.1) }
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            for (gauge, probe) in gauges { gauge.record(probe() ? 1 : 0) }
            // Woken by a graceful shutdown: the service stops at once, not an interval later.
            try? await cancelWhenGracefulShutdown { [interval] in try await Task.sleep(for: interval) }
        }
    }
}
