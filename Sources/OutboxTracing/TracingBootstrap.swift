import Logging
import OTel
import Outbox
import ServiceLifecycle
import Tracing

/// Spans by the OpenTelemetry SDK for Swift (swift-otel), configured by the standard variables:
/// `OTEL_TRACES_EXPORTER` (`otlp` turns tracing on; unset or `none` leaves it off),
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf` or `grpc`),
/// `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*` and the rest of the specification's.
/// Only traces: metrics stay Prometheus's and logs swift-log's.
public enum TracingBootstrap {
    /// Bootstraps the process's tracer when `OTEL_TRACES_EXPORTER` names an exporter; returns the
    /// service that exports the spans (run it first in the service group, so it stops last and
    /// flushes what the others ended), or nil with tracing off.
    public static func start(serviceName: String, environment: [String: String], logger: Logger) throws -> (any Service)? {
        let exporter = environment[SettingDeclaration.otelTracesExporter.env] ?? ""
        guard !exporter.isEmpty, exporter != "none" else { return nil }
        var configuration = OTel.Configuration.default
        configuration.serviceName = serviceName
        configuration.logs.enabled = false
        configuration.metrics.enabled = false
        // swift-otel's own log lines (one per variable read, at info) only when something is wrong.
        configuration.diagnosticLogLevel = .warning
        let backend: (factory: any Tracer, service: any Service)
        do {
            backend = try OTel.makeTracingBackend(configuration: configuration)
        } catch {
            throw ConfigurationError(setting: SettingDeclaration.otelTracesExporter.env, reason: "tracing cannot start: \(error)")
        }
        InstrumentationSystem.bootstrap(backend.factory)
        // Not the endpoint: a collector's URL may hold a token.
        let protocolName = environment["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] ?? environment["OTEL_EXPORTER_OTLP_PROTOCOL"] ?? "http/protobuf"
        logger.info("tracing on", metadata: [LogKey.tracesExporter: "\(exporter)", LogKey.tracesProtocol: "\(protocolName)"])
        return backend.service
    }
}
