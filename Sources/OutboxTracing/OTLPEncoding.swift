import Tracing

/// Encodes ended spans as an OTLP `ExportTraceServiceRequest` (opentelemetry-proto's
/// `collector/trace/v1` and `trace/v1`), in protobuf's wire format, written by hand: the few
/// messages the relay sends need no generated code, and a nested message's length is written in
/// place (one byte, moved only for the rare message over 127 bytes), so a span costs no
/// allocation beyond the request's one buffer.
struct OTLPEncoding: Sendable {
    /// `service.name`, `telemetry.sdk.*` and `OTEL_RESOURCE_ATTRIBUTES`.
    let resource: [(String, String)]
    static let scopeName = "outbox"

    init(serviceName: String, resourceAttributes: [(String, String)]) {
        resource =
            [("service.name", serviceName), ("telemetry.sdk.name", "outbox"), ("telemetry.sdk.language", "swift")]
            + resourceAttributes
    }

    func request(_ spans: [FinishedSpan]) -> [UInt8] {
        var writer = ProtobufWriter()
        writer.message(1) { resourceSpans in
            resourceSpans.message(1) { resource in
                for (key, value) in self.resource { resource.keyValue(1, key, .string(value)) }
            }
            resourceSpans.message(2) { scopeSpans in
                scopeSpans.message(1) { scope in scope.string(1, Self.scopeName) }
                for span in spans { scopeSpans.message(2) { $0.span(span) } }
            }
        }
        return writer.bytes
    }
}

/// The OTLP span kinds (`Span.SpanKind`).
extension SpanKind {
    var otlp: UInt64 {
        switch self {
        case .internal: 1
        case .server: 2
        case .client: 3
        case .producer: 4
        case .consumer: 5
        }
    }
}

/// Protobuf's wire format, appended to one buffer.
struct ProtobufWriter {
    private(set) var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(16 * 1024) }

    private enum WireType: UInt64 {
        case varint = 0
        case fixed64 = 1
        case lengthDelimited = 2
        case fixed32 = 5
    }

    private mutating func tag(_ field: UInt64, _ type: WireType) { varint(field << 3 | type.rawValue) }

    private mutating func varint(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    mutating func uint(_ field: UInt64, _ value: UInt64) {
        tag(field, .varint)
        varint(value)
    }

    mutating func fixed64(_ field: UInt64, _ value: UInt64) {
        tag(field, .fixed64)
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func fixed32(_ field: UInt64, _ value: UInt32) {
        tag(field, .fixed32)
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func string(_ field: UInt64, _ value: String) {
        tag(field, .lengthDelimited)
        var value = value
        value.withUTF8 { utf8 in
            varint(UInt64(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }

    /// A trace id's 16 bytes, big-endian, as OTLP's `bytes` fields hold it.
    mutating func id(_ field: UInt64, _ traceId: TraceId) {
        tag(field, .lengthDelimited)
        varint(16)
        withUnsafeBytes(of: traceId.high.bigEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: traceId.low.bigEndian) { bytes.append(contentsOf: $0) }
    }

    /// A span id's 8 bytes, big-endian.
    mutating func id(_ field: UInt64, _ spanId: UInt64) {
        tag(field, .lengthDelimited)
        varint(8)
        withUnsafeBytes(of: spanId.bigEndian) { bytes.append(contentsOf: $0) }
    }

    /// A nested message: its length goes in front of what `body` writes.
    mutating func message(_ field: UInt64, _ body: (inout ProtobufWriter) -> Void) {
        tag(field, .lengthDelimited)
        let lengthAt = bytes.count
        bytes.append(0)
        body(&self)
        let length = bytes.count - lengthAt - 1
        if length < 0x80 {
            bytes[lengthAt] = UInt8(length)
        } else {
            var prefix: [UInt8] = []
            var value = UInt64(length)
            while value >= 0x80 {
                prefix.append(UInt8(truncatingIfNeeded: value) | 0x80)
                value >>= 7
            }
            prefix.append(UInt8(value))
            bytes.replaceSubrange(lengthAt..<lengthAt + 1, with: prefix)
        }
    }

    mutating func keyValue(_ field: UInt64, _ key: String, _ value: SpanAttribute) {
        message(field) { pair in
            pair.string(1, key)
            pair.message(2) { $0.anyValue(value) }
        }
    }

    /// `AnyValue`: string 1, bool 2, int 3, double 4, array 5.
    private mutating func anyValue(_ value: SpanAttribute) {
        switch value {
        case .string(let text): string(1, text)
        case .bool(let flag): uint(2, flag ? 1 : 0)
        case .int32(let number): uint(3, UInt64(bitPattern: Int64(number)))
        case .int64(let number): uint(3, UInt64(bitPattern: number))
        case .double(let number): fixed64(4, number.bitPattern)
        case .stringConvertible(let value): string(1, value.description)
        case .stringArray(let values): array(values.map { .string($0) })
        case .boolArray(let values): array(values.map { .bool($0) })
        case .int32Array(let values): array(values.map { .int32($0) })
        case .int64Array(let values): array(values.map { .int64($0) })
        case .doubleArray(let values): array(values.map { .double($0) })
        case .stringConvertibleArray(let values): array(values.map { .string($0.description) })
        default: string(1, "\(value)")
        }
    }

    private mutating func array(_ values: [SpanAttribute]) {
        message(5) { array in
            for value in values { array.message(1) { $0.anyValue(value) } }
        }
    }

    mutating func span(_ span: FinishedSpan) {
        id(1, span.context.traceId)
        id(2, span.context.spanId)
        if let state = span.context.traceState { string(3, state) }
        if let parent = span.parentSpanId { id(4, parent) }
        string(5, span.name)
        uint(6, span.kind.otlp)
        fixed64(7, span.start)
        fixed64(8, span.end)
        span.messaging?.forEach { key, value in keyValue(9, key, value) }
        span.attributes.forEach { key, value in keyValue(9, key, value) }
        for event in span.events {
            message(11) { writer in
                writer.fixed64(1, event.nanosecondsSinceEpoch)
                writer.string(2, event.name)
                event.attributes.forEach { key, value in writer.keyValue(3, key, value) }
            }
        }
        for link in span.links {
            message(13) { writer in
                writer.id(1, link.traceId)
                writer.id(2, link.spanId)
                if let state = link.traceState { writer.string(3, state) }
            }
        }
        if let status = span.status {
            message(15) { writer in
                if let text = status.message { writer.string(2, text) }
                writer.uint(3, status.code == .ok ? 1 : 2)
            }
        }
        fixed32(16, span.context.isSampled ? 1 : 0)
    }
}
