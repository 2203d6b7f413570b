import Logging
import OTel
import Outbox
import OutboxRuntime
import ServiceLifecycle
import Tracing

/// Spans by the OpenTelemetry SDK for Swift (swift-otel), configured by the standard variables:
/// `OTEL_TRACES_EXPORTER` (`otlp` turns tracing on; unset or `none` leaves it off),
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`; swift-otel's gRPC
/// exporter is left out of the build, as it would add about 9 MB to the relay and its image),
/// `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*` and the rest of the specification's.
/// Only traces: metrics stay Prometheus's and logs swift-log's. A target of its own, so that a
/// program without spans (outboxctl) does not carry the exporters; the relay and the consumers
/// pass `TracingBootstrap.start` to their program's `run`.
public enum TracingBootstrap {
    /// Bootstraps the process's tracer when `OTEL_TRACES_EXPORTER` names an exporter; returns the
    /// service that exports the spans (run it first in the service group, so it stops last and
    /// flushes what the others ended), or nil with tracing off.
    public static func start(serviceName: String, environment: [String: String], logger: Logger) throws -> (any Service)? {
        let exporter = environment[SettingDeclaration.otelTracesExporter.env] ?? ""
        guard !exporter.isEmpty, exporter != "none" else { return nil }
        let protocolName = environment["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] ?? environment["OTEL_EXPORTER_OTLP_PROTOCOL"] ?? "http/protobuf"
        guard protocolName == "http/protobuf" else {
            throw ConfigurationError(
                setting: environment["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] != nil
                    ? "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" : "OTEL_EXPORTER_OTLP_PROTOCOL",
                reason: "'\(protocolName)' is not built in; use http/protobuf (a collector's port 4318)")
        }
        var configuration = OTel.Configuration.default
        configuration.serviceName = serviceName
        configuration.logs.enabled = false
        configuration.metrics.enabled = false
        // swift-otel's own log lines (one per variable read, at info) only when something is wrong,
        // in the program's log, with the spans it reports lost counted on the way.
        configuration.diagnosticLogLevel = .warning
        configuration.diagnosticLogger = .custom(Logger(label: "swift-otel") { _ in SpanLossCounter(logger.handler) })
        let backend: (factory: any Tracer, service: any Service)
        do {
            backend = try OTel.makeTracingBackend(configuration: configuration)
        } catch {
            throw ConfigurationError(setting: SettingDeclaration.otelTracesExporter.env, reason: "tracing cannot start: \(error)")
        }
        InstrumentationSystem.bootstrap(backend.factory)
        // Not the endpoint: a collector's URL may hold a token.
        logger.info("tracing on", metadata: [LogKey.tracesExporter: "\(exporter)", LogKey.tracesProtocol: "\(protocolName)"])
        return backend.service
    }
}
