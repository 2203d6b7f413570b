/// A W3C trace context (https://www.w3.org/TR/trace-context/): what a writer puts into an outbox
/// document so that its trace goes on through the relay and the consumers, and what the relay
/// puts on the message as the `traceparent` and `tracestate` headers.
public struct TraceContext: Sendable, Hashable {
    /// The document field and message header names.
    public static let traceparentField = "traceparent"
    public static let tracestateField = "tracestate"
    /// The longest `tracestate` carried (the specification's 32 members of at most 256 bytes fit
    /// in far less in practice; 512 is what propagators must at least keep).
    public static let maxTracestateLength = 512

    /// `version-traceid-parentid-flags`, lowercase hex, e.g.
    /// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
    public let traceparent: String
    public let tracestate: String?

    /// A context from a `traceparent` and `tracestate` as received; nil when the traceparent is
    /// not valid (the specification then starts a new trace). A tracestate that is not printable
    /// ASCII, or longer than `maxTracestateLength`, is left out.
    public init?(traceparent: String, tracestate: String? = nil) {
        guard Self.isValid(traceparent: traceparent) else { return nil }
        self.traceparent = traceparent
        if let tracestate, !tracestate.isEmpty, tracestate.utf8.count <= Self.maxTracestateLength,
            tracestate.utf8.allSatisfy({ (0x20...0x7e).contains($0) })
        {
            self.tracestate = tracestate
        } else {
            self.tracestate = nil
        }
    }

    /// The context a message carries in its headers, if a valid one.
    public init?(headers: [String: HeaderValue]) {
        guard case .string(let parent)? = headers[Self.traceparentField] else { return nil }
        var state: String?
        if case .string(let value)? = headers[Self.tracestateField] { state = value }
        self.init(traceparent: parent, tracestate: state)
    }

    /// The 32 hex digits of the trace id.
    public var traceId: Substring { traceparent.dropFirst(3).prefix(32) }
    /// The 16 hex digits of the parent (span) id.
    public var parentId: Substring { traceparent.dropFirst(36).prefix(16) }

    /// As message headers.
    public var headers: [String: HeaderValue] {
        var headers: [String: HeaderValue] = [Self.traceparentField: .string(traceparent)]
        if let tracestate { headers[Self.tracestateField] = .string(tracestate) }
        return headers
    }

    /// Version 00's layout (later versions may append `-` and more fields): lowercase hex, a
    /// version other than ff, and trace and parent ids that are not all zeros.
    static func isValid(traceparent: String) -> Bool {
        let bytes = Array(traceparent.utf8)
        guard bytes.count >= 55 else { return false }
        func hex(_ range: Range<Int>) -> Bool { bytes[range].allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) } }
        func zeros(_ range: Range<Int>) -> Bool { bytes[range].allSatisfy { $0 == 0x30 } }
        guard hex(0..<2), hex(3..<35), hex(36..<52), hex(53..<55), bytes[2] == 0x2d, bytes[35] == 0x2d, bytes[52] == 0x2d else { return false }
        let version = bytes[0..<2]
        guard version != [0x66, 0x66], !zeros(3..<35), !zeros(36..<52) else { return false }
        if version == [0x30, 0x30] { return bytes.count == 55 }
        return bytes.count == 55 || bytes[55] == 0x2d
    }
}
