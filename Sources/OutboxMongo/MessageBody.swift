import Outbox

/// How the relay makes message bodies from outbox events.
public struct MessageBodyOptions: Sendable, Equatable {
    /// The format of every event whose exchange and document choose none.
    public var format: BodyFormat
    /// Formats of the events published to these exchanges (unless the event chooses its own).
    public var formatByExchange: [String: BodyFormat]
    /// How Decimal128 values in `data` are written.
    public var decimals: DecimalFormat
    /// The CloudEvents `source` attribute.
    public var cloudEventsSource: String

    public init(
        format: BodyFormat = .default, formatByExchange: [String: BodyFormat] = [:], decimals: DecimalFormat = .default,
        cloudEventsSource: String = WireFormat.defaultCloudEventsSource
    ) {
        self.format = format
        self.formatByExchange = formatByExchange
        self.decimals = decimals
        self.cloudEventsSource = cloudEventsSource
    }

    /// The format of an event published to `exchange` that does not choose one itself.
    public func format(forExchange exchange: String) -> BodyFormat {
        formatByExchange[exchange] ?? format
    }
}

/// Renders an event's message body and content type from its decoded fields and `data`.
enum MessageBody {
    /// Sets `message.body`, `message.contentType` and the headers the format needs. `document` is
    /// the whole outbox document, for settings a writer may give per event (`bodyFormat`); a value
    /// there that names no format makes the document malformed.
    static func render(
        _ message: inout OutboxMessage, data: Document, document: Document, options: MessageBodyOptions
    ) throws(OutboxDocument.Malformed) {
        let format = try chosenFormat(message, document: document, options: options)
        let decimals = options.decimals
        var contentType = WireFormat.jsonContentType
        switch format {
        case .envelope:
            var envelope: Document = ["id": .string(message.id), "type": .string(message.type)]
            if !message.aggregateType.isEmpty { envelope["aggregateType"] = .string(message.aggregateType) }
            envelope["aggregateId"] = .string(message.aggregateId)
            if let version = message.aggregateVersion { envelope["aggregateVersion"] = .int64(Int64(version)) }
            envelope["timestamp"] = .datetime(message.occurredAt)
            envelope["data"] = .document(data)
            message.body = ExtendedJSON.renderBytes(envelope, decimals: decimals)
        case .payload:
            message.body = ExtendedJSON.renderBytes(data, decimals: decimals)
        case .cloudEvents:
            var event: Document = [
                "specversion": .string(WireFormat.cloudEventsSpecVersion), "id": .string(message.id),
                "source": .string(options.cloudEventsSource), "type": .string(message.type),
            ]
            if !message.aggregateId.isEmpty { event["subject"] = .string(message.aggregateId) }
            event["time"] = .datetime(message.occurredAt)
            event["datacontenttype"] = .string(WireFormat.jsonContentType)
            // The distributed-tracing extension.
            if let trace = TraceContext(headers: message.headers) {
                event[TraceContext.traceparentField] = .string(trace.traceparent)
                if let state = trace.tracestate { event[TraceContext.tracestateField] = .string(state) }
            }
            event["data"] = .document(data)
            message.body = ExtendedJSON.renderBytes(event, decimals: decimals)
            contentType = WireFormat.cloudEventsContentType
        case .cloudEventsBinary:
            // RabbitMQ protocol binding: every attribute but datacontenttype (the content_type) as a
            // `ce-` header with a string value.
            let prefix = WireFormat.cloudEventsHeaderPrefix
            message.headers["\(prefix)specversion"] = .string(WireFormat.cloudEventsSpecVersion)
            message.headers["\(prefix)id"] = .string(message.id)
            message.headers["\(prefix)source"] = .string(options.cloudEventsSource)
            message.headers["\(prefix)type"] = .string(message.type)
            if !message.aggregateId.isEmpty { message.headers["\(prefix)subject"] = .string(message.aggregateId) }
            message.headers["\(prefix)time"] = .string(ExtendedJSON.iso8601(milliseconds: message.occurredAt))
            if let trace = TraceContext(headers: message.headers) {
                for (name, value) in trace.headers { message.headers["\(prefix)\(name)"] = value }
            }
            message.body = ExtendedJSON.renderBytes(data, decimals: decimals)
        case .nestJS:
            // No `id`: @nestjs/microservices treats a packet with one as a request awaiting a reply.
            let packet: Document = ["pattern": .string(message.routingKey), "data": .document(data)]
            message.body = ExtendedJSON.renderBytes(packet, decimals: decimals)
        }
        message.headers[WireFormat.bodyFormatHeader] = .string(format.rawValue)
        message.contentType = contentType
    }

    /// The event's own choice, else its exchange's, else the relay's.
    static func chosenFormat(
        _ message: OutboxMessage, document: Document, options: MessageBodyOptions
    ) throws(OutboxDocument.Malformed) -> BodyFormat {
        guard let raw = document[WireFormat.bodyFormatField], raw != .null else {
            return options.format(forExchange: message.exchange)
        }
        guard let name = raw.stringValue, let format = BodyFormat(rawValue: name) else {
            throw OutboxDocument.Malformed(
                reason: "\(WireFormat.bodyFormatField) must be one of \(BodyFormat.names), got \(ExtendedJSON.render(raw))")
        }
        return format
    }
}
