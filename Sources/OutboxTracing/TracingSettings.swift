import Outbox
import OutboxRuntime

/// What the OpenTelemetry specification's environment variables ask of the tracer and its OTLP
/// exporter (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/).
/// Each value that cannot be used fails the start with the variable's name; the exporter's
/// headers (which may hold a collector's token) are registered as secrets and never logged.
struct TracingSettings: Sendable {
    enum Transport: String, Sendable {
        case httpProtobuf = "http/protobuf"
        case grpc
    }

    /// Where the spans go: scheme, host, port and, for OTLP/HTTP, the path (`/v1/traces`).
    struct Endpoint: Sendable, Equatable {
        var secure: Bool
        var host: String
        var port: Int
        var path: String

        /// `host:port` as a request's authority (IPv6 hosts in brackets).
        var authority: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    var serviceName: String
    var resourceAttributes: [(String, String)]
    var transport: Transport
    var endpoint: Endpoint
    var headers: [(String, String)]
    var timeout: Duration
    /// TLS for an `https` endpoint: trusted roots, and a client certificate and key (file paths).
    var certificateFile: String?
    var clientCertificateFile: String?
    var clientKeyFile: String?
    var sampler: Sampler
    var scheduleDelay: Duration
    var exportTimeout: Duration
    var maxQueueSize: Int
    var maxExportBatchSize: Int

    /// The settings `environment` gives, or nil when tracing is off (`OTEL_TRACES_EXPORTER` unset
    /// or `none`, or `OTEL_SDK_DISABLED=true`).
    static func read(serviceName defaultName: String, environment: [String: String]) throws -> TracingSettings? {
        func value(_ name: String) -> String? {
            guard let text = environment[name]?.trimmed, !text.isEmpty else { return nil }
            return text
        }
        /// A signal-specific variable (`OTEL_EXPORTER_OTLP_TRACES_…`) before the general one.
        func exporterValue(_ suffix: String) -> (name: String, value: String)? {
            for name in ["OTEL_EXPORTER_OTLP_TRACES_\(suffix)", "OTEL_EXPORTER_OTLP_\(suffix)"] {
                if let text = value(name) { return (name, text) }
            }
            return nil
        }
        func integer(_ name: String, default fallback: Int, range: ClosedRange<Int>) throws -> Int {
            guard let text = value(name) else { return fallback }
            guard let number = Int(text), range.contains(number) else {
                throw ConfigurationError(setting: name, reason: "'\(text)' is not a whole number in \(range.lowerBound)...\(range.upperBound)")
            }
            return number
        }
        func milliseconds(_ name: String, default fallback: Int) throws -> Duration {
            .milliseconds(try integer(name, default: fallback, range: 0...86_400_000))
        }

        if value("OTEL_SDK_DISABLED")?.lowercased() == "true" { return nil }
        let exporterName = SettingDeclaration.otelTracesExporter.env
        switch value(exporterName) {
        case nil, "none": return nil
        case "otlp": break
        case let other?: throw ConfigurationError(setting: exporterName, reason: "'\(other)' is not an exporter here; use otlp, or none")
        }

        let transportSetting = exporterValue("PROTOCOL")
        let transport: Transport
        switch transportSetting?.value ?? Transport.httpProtobuf.rawValue {
        case Transport.httpProtobuf.rawValue: transport = .httpProtobuf
        case Transport.grpc.rawValue: transport = .grpc
        case let other:
            throw ConfigurationError(
                setting: transportSetting?.name ?? "OTEL_EXPORTER_OTLP_PROTOCOL", reason: "'\(other)' is not one of http/protobuf, grpc")
        }
        let endpoint = try Self.endpoint(
            specific: value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), general: value("OTEL_EXPORTER_OTLP_ENDPOINT"), transport: transport,
            insecure: exporterValue("INSECURE")?.value.lowercased() == "true")

        var headers: [(String, String)] = []
        if let (name, text) = exporterValue("HEADERS") {
            headers = try Self.pairs(text, setting: name)
            for (_, secret) in headers { Secrets.register(secret) }
        }
        if let (name, text) = exporterValue("COMPRESSION"), text != "none" {
            throw ConfigurationError(setting: name, reason: "'\(text)' is not built in; use none")
        }
        var resource = try value("OTEL_RESOURCE_ATTRIBUTES").map { try Self.pairs($0, setting: "OTEL_RESOURCE_ATTRIBUTES") } ?? []
        let serviceName = value("OTEL_SERVICE_NAME") ?? resource.first { $0.0 == "service.name" }?.1 ?? defaultName
        resource.removeAll { $0.0 == "service.name" }

        let timeoutSetting = exporterValue("TIMEOUT")
        let timeout = try milliseconds(timeoutSetting?.name ?? "OTEL_EXPORTER_OTLP_TIMEOUT", default: 10_000)
        let maxQueueSize = try integer("OTEL_BSP_MAX_QUEUE_SIZE", default: 2048, range: 1...1_000_000)
        let maxExportBatchSize = try integer("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default: 512, range: 1...1_000_000)
        guard maxExportBatchSize <= maxQueueSize else {
            throw ConfigurationError(
                setting: "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", reason: "\(maxExportBatchSize) is more than OTEL_BSP_MAX_QUEUE_SIZE (\(maxQueueSize))")
        }
        return TracingSettings(
            serviceName: serviceName, resourceAttributes: resource, transport: transport, endpoint: endpoint, headers: headers,
            timeout: timeout, certificateFile: exporterValue("CERTIFICATE")?.value,
            clientCertificateFile: exporterValue("CLIENT_CERTIFICATE")?.value, clientKeyFile: exporterValue("CLIENT_KEY")?.value,
            sampler: try Sampler(name: value("OTEL_TRACES_SAMPLER"), argument: value("OTEL_TRACES_SAMPLER_ARG")),
            scheduleDelay: try milliseconds("OTEL_BSP_SCHEDULE_DELAY", default: 5000),
            exportTimeout: try milliseconds("OTEL_BSP_EXPORT_TIMEOUT", default: 30_000), maxQueueSize: maxQueueSize,
            maxExportBatchSize: maxExportBatchSize)
    }

    /// The collector's address. A signal-specific URL is used as it is; the general one gets
    /// `/v1/traces` appended for OTLP/HTTP. Defaults: `http://localhost:4318` (OTLP/HTTP) and
    /// `http://localhost:4317` (gRPC); a gRPC endpoint without a scheme is TLS unless insecure.
    static func endpoint(specific: String?, general: String?, transport: Transport, insecure: Bool) throws -> Endpoint {
        let setting = specific != nil ? "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" : "OTEL_EXPORTER_OTLP_ENDPOINT"
        let text = specific ?? general ?? (transport == .grpc ? "http://localhost:4317" : "http://localhost:4318")
        var rest = Substring(text)
        let secure: Bool
        if rest.hasPrefix("http://") {
            secure = false
            rest = rest.dropFirst("http://".count)
        } else if rest.hasPrefix("https://") {
            secure = true
            rest = rest.dropFirst("https://".count)
        } else if transport == .grpc, !rest.contains("://") {
            secure = !insecure
        } else {
            throw ConfigurationError(setting: setting, reason: "'\(text)' is not an http:// or https:// URL")
        }
        let authority = rest.prefix { $0 != "/" }
        var path = String(rest.dropFirst(authority.count))
        let host: Substring
        var portText: Substring?
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        let port = portText.map { Int($0) } ?? (secure ? 443 : 80)
        guard !host.isEmpty, let port, (1...65535).contains(port) else {
            throw ConfigurationError(setting: setting, reason: "'\(text)' has no host, or no valid port")
        }
        if transport == .httpProtobuf, specific == nil {
            path = (path.hasSuffix("/") ? String(path.dropLast()) : path) + "/v1/traces"
        }
        if path.isEmpty { path = "/" }
        return Endpoint(secure: secure, host: String(host), port: port, path: path)
    }

    /// `key=value,key=value` with percent-encoded values (the specification's list form).
    static func pairs(_ text: String, setting: String) throws -> [(String, String)] {
        try text.split(separator: ",").compactMap { member in
            let member = member.trimmingSpaces
            guard !member.isEmpty else { return nil }
            guard let equals = member.firstIndex(of: "="), let key = String(percentDecoding: member[..<equals].trimmingSpaces),
                !key.isEmpty, let value = String(percentDecoding: member[member.index(after: equals)...].trimmingSpaces)
            else {
                // Not the member itself: a header's value may be a token.
                throw ConfigurationError(setting: setting, reason: "a member is not key=value (percent-encoded)")
            }
            return (key, value)
        }
    }
}

/// Which spans are recorded and exported (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`). The
/// `parentbased_*` samplers follow the writer's decision (its `traceparent`'s sampled flag) and
/// apply their root sampler only to events without one.
enum Sampler: Sendable, Equatable {
    case alwaysOn
    case alwaysOff
    case ratio(Double)
    indirect case parentBased(root: Sampler)

    init(name: String?, argument: String?) throws {
        func ratio() throws -> Double {
            guard let argument else { return 1 }
            guard let value = Double(argument), (0...1).contains(value) else {
                throw ConfigurationError(setting: "OTEL_TRACES_SAMPLER_ARG", reason: "'\(argument)' is not a ratio in 0...1")
            }
            return value
        }
        switch name ?? "parentbased_always_on" {
        case "always_on": self = .alwaysOn
        case "always_off": self = .alwaysOff
        case "traceidratio": self = .ratio(try ratio())
        case "parentbased_always_on": self = .parentBased(root: .alwaysOn)
        case "parentbased_always_off": self = .parentBased(root: .alwaysOff)
        case "parentbased_traceidratio": self = .parentBased(root: .ratio(try ratio()))
        case let other:
            throw ConfigurationError(
                setting: "OTEL_TRACES_SAMPLER",
                reason: "'\(other)' is not one of always_on, always_off, traceidratio, parentbased_always_on, "
                    + "parentbased_always_off, parentbased_traceidratio")
        }
    }

    /// Whether a span of `traceId` is sampled, given its parent's context (nil for a root span).
    func isSampled(traceId: TraceId, parent: SpanContext?) -> Bool {
        switch self {
        case .alwaysOn: true
        case .alwaysOff: false
        case .ratio(let ratio):
            // The specification's rule: the trace id's low 8 bytes against the ratio's share.
            ratio >= 1 || Double(traceId.low >> 1) < ratio * Double(UInt64.max >> 1)
        case .parentBased(let root):
            if let parent { parent.isSampled } else { root.isSampled(traceId: traceId, parent: nil) }
        }
    }
}

extension StringProtocol {
    fileprivate var trimmed: String { String(trimmingSpaces) }
    fileprivate var trimmingSpaces: SubSequence {
        let start = firstIndex { $0 != " " && $0 != "\t" } ?? endIndex
        let end = lastIndex { $0 != " " && $0 != "\t" }.map { index(after: $0) } ?? start
        return self[start..<Swift.max(start, end)]
    }
}
