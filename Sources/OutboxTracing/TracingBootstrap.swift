import Logging
import Outbox
import OutboxRuntime
import ServiceLifecycle
import Tracing

/// OpenTelemetry spans, configured by the specification's variables (`TracingSettings`):
/// `OTEL_TRACES_EXPORTER` (`otlp` turns tracing on; unset or `none` leaves it off),
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf` or `grpc`),
/// `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*` and the rest of the exporter's. Only
/// traces: metrics stay Prometheus's and logs swift-log's. The tracer, its queue and the OTLP
/// encoding are this target's own (`OTLPTracer`, `SpanQueue`, `OTLPEncoding`): a span costs the
/// publishing task a few locks and no task switch, and the two transports are SwiftNIO's HTTP/1.1
/// and HTTP/2, which the relay links anyway. A target of its own, so that a program without spans
/// (outboxctl) does not carry them; the relay and the consumers pass `TracingBootstrap.start` to
/// their program's `run`.
public enum TracingBootstrap {
    /// Bootstraps the process's tracer when `OTEL_TRACES_EXPORTER` names an exporter; returns the
    /// service that exports the spans (run it first in the service group, so it stops last and
    /// flushes what the others ended), or nil with tracing off.
    public static func start(serviceName: String, environment: [String: String], logger: Logger) throws -> (any Service)? {
        guard let settings = try TracingSettings.read(serviceName: serviceName, environment: environment) else { return nil }
        let connection = try CollectorConnection(settings: settings)
        let transport: any SpanTransport =
            switch settings.transport {
            case .httpProtobuf: OTLPHTTPTransport(connection: connection, headers: settings.headers)
            case .grpc: OTLPGRPCTransport(connection: connection, headers: settings.headers)
            }
        let queue = SpanQueue(capacity: settings.maxQueueSize, batchSize: settings.maxExportBatchSize)
        InstrumentationSystem.bootstrap(OTLPTracer(sampler: settings.sampler, queue: queue))
        let endpoint = settings.endpoint
        // The endpoint without its path; the headers (a collector's token) are never logged.
        logger.info(
            "tracing on",
            metadata: [
                LogKey.tracesProtocol: "\(settings.transport.rawValue)",
                LogKey.tracesEndpoint: "\(endpoint.secure ? "https" : "http")://\(endpoint.authority)",
            ])
        return SpanExport(
            queue: queue, encoding: OTLPEncoding(serviceName: settings.serviceName, resourceAttributes: settings.resourceAttributes),
            transport: transport, scheduleDelay: settings.scheduleDelay, logger: logger)
    }
}
