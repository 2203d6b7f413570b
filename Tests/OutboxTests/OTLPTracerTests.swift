import Outbox
import Testing
import Tracing

@testable import OutboxTracing

@Suite("OpenTelemetry tracer: settings, sampling, context, queue and OTLP encoding")
struct OTLPTracerTests {
    static let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    static func settings(_ environment: [String: String]) throws -> TracingSettings? {
        try TracingSettings.read(serviceName: "outbox-relay", environment: ["OTEL_TRACES_EXPORTER": "otlp"].merging(environment) { $1 })
    }

    static func refusal(_ environment: [String: String]) -> ConfigurationError? {
        do {
            _ = try settings(environment)
            return nil
        } catch {
            return error as? ConfigurationError
        }
    }

    @Test("tracing is off unless OTEL_TRACES_EXPORTER is otlp, and off with OTEL_SDK_DISABLED")
    func offSwitches() throws {
        #expect(try TracingSettings.read(serviceName: "x", environment: [:]) == nil)
        #expect(try Self.settings(["OTEL_TRACES_EXPORTER": "none"]) == nil)
        #expect(try Self.settings(["OTEL_SDK_DISABLED": "true"]) == nil)
        #expect(Self.refusal(["OTEL_TRACES_EXPORTER": "zipkin"])?.setting == "OTEL_TRACES_EXPORTER")
    }

    @Test("the specification's defaults")
    func defaults() throws {
        let settings = try #require(try Self.settings([:]))
        #expect(settings.transport == .httpProtobuf)
        #expect(settings.endpoint == .init(secure: false, host: "localhost", port: 4318, path: "/v1/traces"))
        #expect(settings.serviceName == "outbox-relay")
        #expect(settings.sampler == .parentBased(root: .alwaysOn))
        #expect(settings.scheduleDelay == .seconds(5) && settings.timeout == .seconds(10))
        #expect(settings.maxQueueSize == 2048 && settings.maxExportBatchSize == 512)
        let grpc = try #require(try Self.settings(["OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"]))
        #expect(grpc.endpoint == .init(secure: false, host: "localhost", port: 4317, path: "/"))
    }

    @Test("endpoints: the general one gets /v1/traces for OTLP/HTTP, the traces one is used as it is")
    func endpoints() throws {
        #expect(try Self.settings(["OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"])?.endpoint.path == "/v1/traces")
        #expect(
            try Self.settings(["OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example/otlp"])?.endpoint
                == .init(secure: true, host: "c.example", port: 443, path: "/otlp/v1/traces"))
        #expect(
            try Self.settings(["OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://[::1]:9000/traces"])?
                .endpoint
                == .init(secure: false, host: "::1", port: 9000, path: "/traces"))
        // gRPC: a bare host:port is TLS unless OTEL_EXPORTER_OTLP_INSECURE says otherwise.
        #expect(try Self.settings(["OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"])?.endpoint.secure == true)
        #expect(
            try Self.settings([
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true",
            ])?
            .endpoint.secure == false)
        #expect(Self.refusal(["OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"])?.setting == "OTEL_EXPORTER_OTLP_ENDPOINT")
        #expect(Self.refusal(["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:99999"])?.setting == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    }

    @Test("each value that cannot be used fails the start naming its variable, never showing a header's value")
    func refusals() {
        #expect(Self.refusal(["OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"])?.setting == "OTEL_EXPORTER_OTLP_PROTOCOL")
        #expect(Self.refusal(["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "thrift"])?.setting == "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        #expect(Self.refusal(["OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"])?.setting == "OTEL_EXPORTER_OTLP_COMPRESSION")
        #expect(Self.refusal(["OTEL_BSP_SCHEDULE_DELAY": "5s"])?.setting == "OTEL_BSP_SCHEDULE_DELAY")
        #expect(Self.refusal(["OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4096"])?.setting == "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
        #expect(Self.refusal(["OTEL_TRACES_SAMPLER": "sometimes"])?.setting == "OTEL_TRACES_SAMPLER")
        #expect(Self.refusal(["OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"])?.setting == "OTEL_TRACES_SAMPLER_ARG")
        let header = Self.refusal(["OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20tok,broken-secret-value"])
        #expect(header?.setting == "OTEL_EXPORTER_OTLP_HEADERS")
        #expect(header.map { !$0.description.contains("broken-secret-value") } == true)
    }

    @Test("headers and resource attributes: key=value lists, percent-decoded; OTEL_SERVICE_NAME before service.name")
    func lists() throws {
        let settings = try #require(
            try Self.settings([
                "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20tok-123456, x-tenant = a",
                "OTEL_RESOURCE_ATTRIBUTES": "service.name=ignored,deployment.environment=prod",
            ]))
        #expect(settings.headers.map { "\($0.0)=\($0.1)" } == ["authorization=Bearer tok-123456", "x-tenant=a"])
        #expect(settings.serviceName == "ignored")
        #expect(settings.resourceAttributes.map(\.0) == ["deployment.environment"])
        #expect(Secrets.redact("Bearer tok-123456") == Secrets.mask, "a header's value is a secret")
        #expect(try Self.settings(["OTEL_SERVICE_NAME": "orders", "OTEL_RESOURCE_ATTRIBUTES": "service.name=x"])?.serviceName == "orders")
    }

    @Test("samplers: ratios by the trace id, parent-based ones follow the parent's flag")
    func samplers() {
        let ids = SpanIds()
        let traceIds = (0..<10_000).map { _ in ids.traceId() }
        #expect(traceIds.allSatisfy { Sampler.ratio(1).isSampled(traceId: $0, parent: nil) })
        #expect(!traceIds.contains { Sampler.ratio(0).isSampled(traceId: $0, parent: nil) })
        let half = traceIds.filter { Sampler.ratio(0.5).isSampled(traceId: $0, parent: nil) }.count
        #expect((4500...5500).contains(half), "\(half)")
        let sampled = SpanContext(traceparent: Self.parent, tracestate: nil)
        let unsampled = SpanContext(traceparent: String(Self.parent.dropLast(2)) + "00", tracestate: nil)
        let follow = Sampler.parentBased(root: .alwaysOff)
        #expect(follow.isSampled(traceId: traceIds[0], parent: sampled))
        #expect(!follow.isSampled(traceId: traceIds[0], parent: unsampled))
        #expect(!follow.isSampled(traceId: traceIds[0], parent: nil))
        #expect(Sampler.parentBased(root: .alwaysOn).isSampled(traceId: traceIds[0], parent: nil))
    }

    @Test("a traceparent reads and writes back; what the specification refuses is no context")
    func context() throws {
        let context = try #require(SpanContext(traceparent: Self.parent, tracestate: "congo=t61rcWkgMzE"))
        #expect(context.traceId == TraceId(high: 0x4bf9_2f35_77b3_4da6, low: 0xa3ce_929d_0e0e_4736))
        #expect(context.spanId == 0x00f0_67aa_0ba9_02b7 && context.isSampled)
        #expect(context.traceparent == Self.parent)
        #expect(context.traceState == "congo=t61rcWkgMzE")
        #expect(SpanContext(traceparent: "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", tracestate: nil) == nil)
        #expect(SpanContext(traceparent: "garbage", tracestate: nil) == nil)
    }

    @Test("a span continues the extracted context, is what inject writes, and reaches the queue once, as it ended")
    func spans() throws {
        let queue = SpanQueue(capacity: 10, batchSize: 5)
        let tracer = OTLPTracer(sampler: .parentBased(root: .alwaysOn), queue: queue)
        var parent = InstrumentationContext.topLevel
        tracer.extract(["traceparent": Self.parent, "tracestate": "congo=1"], into: &parent, using: DictionaryCarrier())
        let span = tracer.startSpan("publish orders", context: parent, ofKind: .producer)
        #expect(span.isRecording)
        span.updateAttributes { $0["messaging.system"] = "rabbitmq" }
        var headers: [String: String] = [:]
        tracer.inject(span.context, into: &headers, using: DictionaryCarrier())
        let own = try #require(span.context.spanContext)
        #expect(headers["traceparent"] == own.traceparent)
        #expect(headers["tracestate"] == "congo=1")
        #expect(own.traceId == SpanContext(traceparent: Self.parent, tracestate: nil)?.traceId)
        span.setStatus(SpanStatus(code: .error, message: "nack"))
        span.end()
        span.attributes["late"] = "ignored"
        span.end()
        let (taken, dropped) = queue.take()
        #expect(dropped == 0)
        let finished = try #require(taken.only)
        #expect(finished.parentSpanId == 0x00f0_67aa_0ba9_02b7)
        #expect(finished.kind == .producer && finished.name == "publish orders")
        #expect(finished.attributes["messaging.system"]?.toSpanAttribute() == .string("rabbitmq"))
        #expect(finished.attributes["late"] == nil)
        #expect(finished.status?.code == .error && finished.end >= finished.start)
        // Without a parent: a new trace.
        let root = tracer.startSpan("publish orders", context: .topLevel, ofKind: .producer)
        #expect(root.context.spanContext?.traceId != own.traceId)
    }

    @Test("a writer that did not sample: no span recorded, and the flag travels on")
    func unsampled() throws {
        let queue = SpanQueue(capacity: 10, batchSize: 5)
        let tracer = OTLPTracer(sampler: .parentBased(root: .alwaysOn), queue: queue)
        var parent = InstrumentationContext.topLevel
        tracer.extract(["traceparent": String(Self.parent.dropLast(2)) + "00"], into: &parent, using: DictionaryCarrier())
        let span = tracer.startSpan("publish orders", context: parent, ofKind: .producer)
        #expect(!span.isRecording)
        var headers: [String: String] = [:]
        tracer.inject(span.context, into: &headers, using: DictionaryCarrier())
        #expect(headers["traceparent"]?.hasSuffix("-00") == true)
        span.end()
        #expect(queue.take().spans.isEmpty)
    }

    @Test("a full queue drops the span that ends and counts it; take gives batches, oldest first")
    func queue() {
        let queue = SpanQueue(capacity: 3, batchSize: 2)
        let tracer = OTLPTracer(sampler: .alwaysOn, queue: queue)
        for index in 0..<5 { tracer.startSpan("s\(index)", context: .topLevel, ofKind: .internal).end() }
        let first = queue.take()
        #expect(first.spans.map(\.name) == ["s0", "s1"] && first.dropped == 2)
        #expect(queue.take().spans.map(\.name) == ["s2"])
        #expect(queue.take().spans.isEmpty)
    }

    @Test("the OTLP request is well-formed protobuf: every length matches, a long attribute included")
    func encoding() throws {
        let queue = SpanQueue(capacity: 10, batchSize: 10)
        let tracer = OTLPTracer(sampler: .alwaysOn, queue: queue)
        var parent = InstrumentationContext.topLevel
        tracer.extract(["traceparent": Self.parent], into: &parent, using: DictionaryCarrier())
        let span = tracer.startSpan("publish orders", context: parent, ofKind: .producer)
        span.updateAttributes { attributes in
            attributes["long"] = String(repeating: "x", count: 300)
            attributes["count"] = 7
            attributes["flag"] = true
            attributes["ratio"] = 0.5
            attributes["list"] = ["a", "b"]
        }
        span.end()
        let request = OTLPEncoding(serviceName: "outbox-relay", resourceAttributes: [("k", "v")]).request(queue.take().spans)
        // ExportTraceServiceRequest.resource_spans → ResourceSpans.scope_spans → ScopeSpans.spans → Span.
        let resourceSpans = try #require(try ProtobufFields(request).messages(1).only)
        let scopeSpans = try #require(try resourceSpans.messages(2).only)
        let encoded = try #require(try scopeSpans.messages(2).only)
        #expect(try encoded.bytes(1) == [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36])
        #expect(try encoded.bytes(4) == [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        #expect(try encoded.bytes(5) == Array("publish orders".utf8))
        #expect(try encoded.varints(6) == [4], "PRODUCER")
        let attributes = try encoded.messages(9)
        #expect(attributes.count == 5)
        let long = try #require(try attributes.first { try $0.bytes(1) == Array("long".utf8) })
        #expect(try long.messages(2).only?.bytes(1) == Array(String(repeating: "x", count: 300).utf8))
        let resource = try #require(try resourceSpans.messages(1).only)
        #expect(try resource.messages(1).count == 4, "service.name, telemetry.sdk.name and .language, k")
    }
}

/// A carrier of string headers for the tracer's extract and inject.
private struct DictionaryCarrier: Extractor, Injector {
    func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
}

/// Reads protobuf's wire format back, failing on any length that does not match.
private struct ProtobufFields {
    var fields: [(number: UInt64, varint: UInt64?, bytes: [UInt8]?)] = []

    struct Malformed: Error {}

    init(_ data: [UInt8]) throws {
        var index = 0
        func varint() throws -> UInt64 {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while true {
                guard index < data.count, shift < 64 else { throw Malformed() }
                let byte = data[index]
                index += 1
                value |= UInt64(byte & 0x7f) << shift
                if byte < 0x80 { return value }
                shift += 7
            }
        }
        while index < data.count {
            let tag = try varint()
            switch tag & 7 {
            case 0: fields.append((tag >> 3, try varint(), nil))
            case 1, 5:
                let size = tag & 7 == 1 ? 8 : 4
                guard index + size <= data.count else { throw Malformed() }
                fields.append((tag >> 3, nil, Array(data[index..<index + size])))
                index += size
            case 2:
                let length = Int(try varint())
                guard index + length <= data.count else { throw Malformed() }
                fields.append((tag >> 3, nil, Array(data[index..<index + length])))
                index += length
            default: throw Malformed()
            }
        }
    }

    func messages(_ number: UInt64) throws -> [ProtobufFields] {
        try fields.filter { $0.number == number }.compactMap(\.bytes).map(ProtobufFields.init)
    }

    func bytes(_ number: UInt64) throws -> [UInt8]? { fields.first { $0.number == number }?.bytes }

    func varints(_ number: UInt64) throws -> [UInt64] { fields.filter { $0.number == number }.compactMap(\.varint) }
}

extension Array {
    fileprivate var only: Element? { count == 1 ? first : nil }
}

@Suite("A message's span in one call")
struct MessageSpanTests {
    @Test("the parent comes from the headers, the span's context goes back into them, the attributes are one value")
    func messageSpan() throws {
        let queue = SpanQueue(capacity: 10, batchSize: 10)
        let tracer = OTLPTracer(sampler: .parentBased(root: .alwaysOn), queue: queue)
        var headers: [String: HeaderValue] = ["traceparent": .string(OTLPTracerTests.parent), "tracestate": .string("congo=1"), "x": .int(1)]
        let attributes = MessagingAttributes(
            operation: "send", name: "publish", exchange: "orders", routingKey: "order.created", messageId: "m-1", bodySize: 42,
            eventType: "OrderCreated", attempt: 1, waitMs: 5)
        let span = tracer.startMessageSpan("publish orders", kind: .producer, attributes: attributes, headers: &headers)
        let own = try #require(span.context.spanContext)
        #expect(headers["traceparent"] == .string(own.traceparent) && headers["tracestate"] == .string("congo=1") && headers["x"] == .int(1))
        #expect(own.traceId == SpanContext(traceparent: OTLPTracerTests.parent, tracestate: nil)?.traceId)
        #expect(span.attributes["messaging.destination.name"]?.toSpanAttribute() == .string("orders"))
        span.attributes["outbox.publish.result"] = "nack"
        span.end()
        let finished = try #require(queue.take().spans.first)
        #expect(finished.parentSpanId == 0x00f0_67aa_0ba9_02b7)
        #expect(finished.attributes.count == 1, "only what was set after the start; the messaging attributes stay one value")
        var names: [String] = []
        finished.messaging?.forEach { key, _ in names.append(key) }
        #expect(names.contains("messaging.rabbitmq.destination.routing_key") && names.contains("outbox.event.wait_ms"))
        // Without trace headers: a new trace, written into the headers.
        var none: [String: HeaderValue] = [:]
        let root = tracer.startMessageSpan("publish orders", kind: .producer, attributes: attributes, headers: &none)
        #expect(none["traceparent"] == .string(try #require(root.context.spanContext).traceparent))
    }
}
