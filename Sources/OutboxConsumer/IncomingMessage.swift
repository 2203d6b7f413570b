import Foundation
import Outbox

/// A message as a handler sees it.
public struct IncomingMessage: Sendable {
    public var messageId: String
    public var type: String?
    public var routingKey: String
    public var headers: [String: HeaderValue]
    /// The AMQP `content_type`, when the publisher set one.
    public var contentType: String?
    public var correlationId: String?
    /// The AMQP `priority`, when the publisher set one (an event's `priority`).
    public var priority: UInt8?
    public var body: [UInt8]
    public var redelivered: Bool

    public init(
        messageId: String, type: String? = nil, routingKey: String, headers: [String: HeaderValue] = [:],
        contentType: String? = nil, correlationId: String? = nil, priority: UInt8? = nil, body: [UInt8], redelivered: Bool = false
    ) {
        self.messageId = messageId
        self.type = type
        self.routingKey = routingKey
        self.headers = headers
        self.contentType = contentType
        self.correlationId = correlationId
        self.priority = priority
        self.body = body
        self.redelivered = redelivered
    }

    /// The trace the event belongs to (the relay's `traceparent` and `tracestate` headers), if it
    /// carries a valid one. Give it to the events a handler writes (`NewEvent.traceContext`) and
    /// the trace goes on through them.
    public var traceContext: TraceContext? { TraceContext(headers: headers) }

    /// The body parsed as JSON (numbers kept as exact text).
    public func json() throws -> JSONValue { try JSONValue.parse(body) }

    /// The event the message carries, the same whatever body format the relay chose: its `data`
    /// and metadata. Throws `PermanentFailure` when the body is not JSON.
    public func event() throws -> IncomingEvent {
        let json: JSONValue
        do { json = try self.json() } catch { throw PermanentFailure("body is not JSON: \(error)") }
        return IncomingEvent(self, body: json)
    }
}

/// An event as the relay published it, read back from any body format.
///
/// The format is told by the `x-body-format` header the relay sets; without it (a message
/// published by someone else), by the content type `application/cloudevents+json`, then `ce-`
/// headers, then the `{"pattern", "data"}` shape, then the envelope's shape; anything else is a
/// bare payload. Metadata comes from the AMQP properties and headers, which are the same in every
/// format, and else from the body.
public struct IncomingEvent: Sendable {
    public var format: BodyFormat
    /// The message id (the event id): what de-duplication keys on.
    public var id: String
    public var type: String?
    public var aggregateType: String?
    public var aggregateId: String?
    public var aggregateVersion: Int?
    /// Milliseconds since the epoch when the event occurred.
    public var occurredAt: Int64?
    public var correlationId: String?
    /// The event's own data: the writer's `data` document.
    public var data: JSONValue

    init(_ message: IncomingMessage, body: JSONValue) {
        let format = Self.detectFormat(message, body: body)
        self.format = format
        id = message.messageId
        correlationId = message.correlationId
        let headers = message.headers
        func header(_ name: String) -> String? {
            if case .string(let s)? = headers[name] { return s }
            return nil
        }
        func string(_ value: JSONValue?) -> String? {
            if case .string(let s)? = value { return s }
            return nil
        }
        aggregateType = header("x-aggregate-type")
        aggregateId = header("x-aggregate-id")
        switch headers["x-aggregate-version"] {
        case .int(let v)?: aggregateVersion = Int(v)
        case .string(let s)?: aggregateVersion = Int(s)
        default: aggregateVersion = nil
        }
        if case .int(let ms)? = headers["x-occurred-at"] { occurredAt = ms }
        type = message.type
        var time: String?
        switch format {
        case .envelope:
            data = body["data"] ?? .null
            type = type ?? string(body["type"])
            aggregateType = aggregateType ?? string(body["aggregateType"])
            aggregateId = aggregateId ?? string(body["aggregateId"])
            if aggregateVersion == nil, case .number(let n)? = body["aggregateVersion"] { aggregateVersion = Int(n) }
            time = string(body["timestamp"])
        case .cloudEvents:
            data = body["data"] ?? .null
            type = type ?? string(body["type"])
            aggregateId = aggregateId ?? string(body["subject"])
            time = string(body["time"])
        case .cloudEventsBinary:
            data = body
            type = type ?? Self.cloudEventsHeader("type", headers)
            aggregateId = aggregateId ?? Self.cloudEventsHeader("subject", headers)
            time = Self.cloudEventsHeader("time", headers)
        case .nestJS:
            data = body["data"] ?? .null
        case .payload:
            data = body
        }
        if occurredAt == nil, let time { occurredAt = Self.milliseconds(iso8601: time) }
    }

    static func detectFormat(_ message: IncomingMessage, body: JSONValue) -> BodyFormat {
        if case .string(let name)? = message.headers[WireFormat.bodyFormatHeader], let format = BodyFormat(rawValue: name) {
            return format
        }
        if let contentType = message.contentType?.lowercased(), contentType.hasPrefix("application/cloudevents") {
            return .cloudEvents
        }
        if cloudEventsHeader("specversion", message.headers) != nil { return .cloudEventsBinary }
        guard case .object(let fields) = body else { return .payload }
        let keys = Set(fields.map(\.0))
        if keys.contains("pattern"), keys.contains("data"), keys.isSubset(of: ["pattern", "data", "id"]),
            case .string? = body["pattern"]
        {
            return .nestJS
        }
        if keys.contains("data"), keys.isSubset(of: envelopeKeys), case .string? = body["type"], case .string? = body["id"] {
            return .envelope
        }
        return .payload
    }

    static let envelopeKeys: Set<String> = ["id", "type", "aggregateType", "aggregateId", "aggregateVersion", "timestamp", "data"]

    /// A `ce-` header; header names are case-insensitive in the binding.
    static func cloudEventsHeader(_ attribute: String, _ headers: [String: HeaderValue]) -> String? {
        let name = WireFormat.cloudEventsHeaderPrefix + attribute
        for (key, value) in headers where key.lowercased() == name {
            if case .string(let s) = value { return s }
        }
        return nil
    }

    static func milliseconds(iso8601 text: String) -> Int64? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return Int64((date.timeIntervalSince1970 * 1000).rounded()) }
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text).map { Int64($0.timeIntervalSince1970 * 1000) }
    }
}
