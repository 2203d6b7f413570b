/// The shape of a published message body. Whatever the shape, the AMQP properties (`message_id`
/// = event id, `type`, `timestamp`, `correlation_id`) and the `x-aggregate-*` and `x-occurred-at`
/// headers are the same, so a consumer's de-duplication never depends on it.
public enum BodyFormat: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// This project's envelope: `{"id", "type", "aggregateType", "aggregateId", "aggregateVersion",
    /// "timestamp", "data"}`.
    case envelope
    /// The event's `data` alone; the metadata travels only in properties and headers.
    case payload
    /// CloudEvents 1.0, structured mode: the whole event as `application/cloudevents+json`.
    case cloudEvents = "cloudevents"
    /// CloudEvents 1.0, binary mode of the RabbitMQ protocol binding: body = `data`, attributes as
    /// `ce-` headers, `datacontenttype` as the AMQP `content_type`.
    case cloudEventsBinary = "cloudevents-binary"
    /// `{"pattern": <routing key>, "data": <data>}`, what `@nestjs/microservices` event handlers read.
    case nestJS = "nestjs"

    /// Today's body, so that upgrading the relay changes nothing on the wire for running consumers.
    public static let `default`: BodyFormat = .envelope

    public var description: String { rawValue }

    /// `envelope, payload, cloudevents, cloudevents-binary, nestjs`
    public static let names = allCases.map(\.rawValue).joined(separator: ", ")

    /// Parses a format name for the setting named `setting`.
    public init(parsing value: String, setting: String) throws(ConfigurationError) {
        guard let format = BodyFormat(rawValue: value.trimmingSpaces().lowercased()) else {
            throw ConfigurationError(setting: setting, reason: "'\(value)' is not one of \(BodyFormat.names)")
        }
        self = format
    }
}

/// How Decimal128 values (money) are written in JSON bodies. Neither goes through a binary float.
public enum DecimalFormat: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// `"44.99"`: exact in every JSON parser.
    case string
    /// `44.99`: a JSON number literal with the decimal's exact digits. NaN and infinities, which no
    /// JSON number can spell, stay strings.
    case number

    /// Strings: exact whatever parser the consumer uses (JavaScript's `JSON.parse` and Python's
    /// `json` turn number literals into binary floats), and what the relay always sent.
    public static let `default`: DecimalFormat = .string

    public var description: String { rawValue }

    public init(parsing value: String, setting: String) throws(ConfigurationError) {
        guard let format = DecimalFormat(rawValue: value.trimmingSpaces().lowercased()) else {
            throw ConfigurationError(setting: setting, reason: "'\(value)' is not one of string, number")
        }
        self = format
    }
}

/// Names shared by the relay that writes the formats and the consumers that read them.
public enum WireFormat {
    public static let jsonContentType = "application/json"
    public static let cloudEventsContentType = "application/cloudevents+json"
    /// Header naming the body format of a message the relay published.
    public static let bodyFormatHeader = "x-body-format"
    /// Prefix of CloudEvents attributes in binary mode (RabbitMQ protocol binding).
    public static let cloudEventsHeaderPrefix = "ce-"
    public static let cloudEventsSpecVersion = "1.0"
    /// The CloudEvents `source` when none is configured.
    public static let defaultCloudEventsSource = "/outbox-relay"
    /// Outbox document field with which a writer chooses the format of one event.
    public static let bodyFormatField = "bodyFormat"

    /// Parses `exchange=format` pairs separated by commas, e.g. `orders=payload,inventory=cloudevents`.
    /// Empty text is no mapping.
    public static func parseFormatByExchange(_ text: String, setting: String) throws(ConfigurationError) -> [String: BodyFormat] {
        var mapping: [String: BodyFormat] = [:]
        for entry in text.split(separator: ",") {
            let pair = String(entry).trimmingSpaces()
            if pair.isEmpty { continue }
            guard let equals = pair.firstIndex(of: "=") else {
                throw ConfigurationError(setting: setting, reason: "'\(pair)' is not exchange=format")
            }
            let exchange = String(pair[..<equals]).trimmingSpaces()
            let name = String(pair[pair.index(after: equals)...])
            guard !exchange.isEmpty, exchange.utf8.count <= 255 else {
                throw ConfigurationError(setting: setting, reason: "'\(pair)' needs an exchange name of 1 to 255 bytes")
            }
            guard mapping[exchange] == nil else {
                throw ConfigurationError(setting: setting, reason: "exchange '\(exchange)' is given twice")
            }
            mapping[exchange] = try BodyFormat(parsing: name, setting: setting)
        }
        return mapping
    }

    /// A CloudEvents `source`: a non-empty URI-reference; spaces and control characters are refused.
    public static func parseCloudEventsSource(_ text: String, setting: String) throws(ConfigurationError) -> String {
        guard !text.isEmpty else { throw ConfigurationError(setting: setting, reason: "must not be empty") }
        guard !text.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7F }) else {
            throw ConfigurationError(setting: setting, reason: "must be a URI reference without spaces or control characters")
        }
        return text
    }
}

extension String {
    fileprivate func trimmingSpaces() -> String {
        var scalars = Substring(self)
        while scalars.first?.isWhitespace == true { scalars.removeFirst() }
        while scalars.last?.isWhitespace == true { scalars.removeLast() }
        return String(scalars)
    }
}
