import Outbox
import Synchronization
import Tracing

/// A trace's 16-byte id, as two big-endian halves.
struct TraceId: Sendable, Hashable {
    var high: UInt64
    var low: UInt64
}

/// What identifies a span across processes: the W3C trace context's trace id, span id, sampled
/// flag and trace state. A span's context holds its own; an extracted one (a writer's, a
/// publisher's) is the parent of the next span.
struct SpanContext: Sendable, Hashable {
    var traceId: TraceId
    var spanId: UInt64
    var isSampled: Bool
    var traceState: String?

    /// The `traceparent` header: `00-<trace id>-<span id>-<flags>`.
    var traceparent: String {
        String(unsafeUninitializedCapacity: 55) { buffer in
            var index = 0
            func put(_ byte: UInt8) {
                buffer[index] = byte
                index += 1
            }
            func hex(_ value: UInt64) {
                for shift in stride(from: 60, through: 0, by: -4) { put(Self.digits[Int((value >> UInt64(shift)) & 0xf)]) }
            }
            for byte in "00-".utf8 { put(byte) }
            hex(traceId.high)
            hex(traceId.low)
            put(UInt8(ascii: "-"))
            hex(spanId)
            for byte in (isSampled ? "-01" : "-00").utf8 { put(byte) }
            return index
        }
    }

    /// The context a `traceparent` (and `tracestate`) carries; nil when it is not valid. The
    /// common case (version 00, the only one written today) is read in place; any other goes
    /// through `TraceContext`'s validation first.
    init?(traceparent: String, tracestate: String?) {
        var traceparent = traceparent
        let parsed = traceparent.withUTF8 { bytes -> (UInt64, UInt64, UInt64, UInt64)? in
            guard bytes.count >= 55, bytes[2] == UInt8(ascii: "-"), bytes[35] == UInt8(ascii: "-"), bytes[52] == UInt8(ascii: "-"),
                let version = Self.parseHex(bytes, 0..<2), let high = Self.parseHex(bytes, 3..<19), let low = Self.parseHex(bytes, 19..<35),
                let span = Self.parseHex(bytes, 36..<52), let flags = Self.parseHex(bytes, 53..<55)
            else { return nil }
            return version == 0 && bytes.count == 55 ? (high, low, span, flags) : nil
        }
        if let (high, low, span, flags) = parsed, high | low != 0, span != 0 {
            let state = tracestate.flatMap { TraceContext(traceparent: traceparent, tracestate: $0)?.tracestate }
            self.init(traceId: TraceId(high: high, low: low), spanId: span, isSampled: flags & 1 == 1, traceState: state)
            return
        }
        // Later versions (fields after the flags), or nothing valid.
        guard let context = TraceContext(traceparent: traceparent, tracestate: tracestate) else { return nil }
        var valid = context.traceparent
        guard
            let (high, low, span, flags) = valid.withUTF8({ bytes -> (UInt64, UInt64, UInt64, UInt64)? in
                guard let high = Self.parseHex(bytes, 3..<19), let low = Self.parseHex(bytes, 19..<35), let span = Self.parseHex(bytes, 36..<52),
                    let flags = Self.parseHex(bytes, 53..<55)
                else { return nil }
                return (high, low, span, flags)
            })
        else { return nil }
        self.init(traceId: TraceId(high: high, low: low), spanId: span, isSampled: flags & 1 == 1, traceState: context.tracestate)
    }

    init(traceId: TraceId, spanId: UInt64, isSampled: Bool, traceState: String?) {
        self.traceId = traceId
        self.spanId = spanId
        self.isSampled = isSampled
        self.traceState = traceState
    }

    private static let digits: [UInt8] = Array("0123456789abcdef".utf8)

    /// Lowercase hex only, as the specification writes it.
    private static func parseHex(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> UInt64? {
        var value: UInt64 = 0
        for byte in bytes[range] {
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            default: return nil
            }
            value = value << 4 | UInt64(digit)
        }
        return value
    }
}
/// Where a span context lives in an `InstrumentationContext`.
enum SpanContextKey: InstrumentationContextKey {
    typealias Value = SpanContext
    static var nameOverride: String? { "otel-span-context" }
}

extension InstrumentationContext {
    var spanContext: SpanContext? {
        get { self[SpanContextKey.self] }
        set { self[SpanContextKey.self] = newValue }
    }
}

/// Random trace and span ids: xoshiro256** seeded from the system's generator, under a lock. Far
/// cheaper than the system's generator per id (a system call each on Linux), and ids need to be
/// unique, not secret.
final class SpanIds: Sendable {
    private let state: Mutex<(UInt64, UInt64, UInt64, UInt64)>

    init() {
        var system = SystemRandomNumberGenerator()
        state = Mutex((system.next(), system.next(), system.next(), system.next() | 1))
    }

    func next() -> UInt64 {
        state.withLock { s in
            let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
            let t = s.1 << 17
            s.2 ^= s.0
            s.3 ^= s.1
            s.1 ^= s.2
            s.0 ^= s.3
            s.2 ^= t
            s.3 = s.3 << 45 | s.3 >> 19
            return result
        }
    }

    /// A span id: never zero.
    func spanId() -> UInt64 {
        while true {
            let id = next()
            if id != 0 { return id }
        }
    }

    func traceId() -> TraceId { TraceId(high: next(), low: spanId()) }
}
