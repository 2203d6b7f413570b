/// Headers and routing keys the relay derives from an event's document, for writers that cannot
/// be changed: `RELAY_HEADER_FIELDS` (`data.tenant=x-tenant`: the field's value as a header) and
/// `RELAY_ROUTING_KEY_TEMPLATE` (`order.{data.region}.created`: the routing key of every event
/// whose document names none). Fields are dotted paths into the document (`type`,
/// `data.customer.region`). Checked when the relay starts; a document without a field a mapping
/// names is parked with a reason naming it.
public struct FieldMapping: Sendable, Equatable {
    /// A header from a document field.
    public struct HeaderField: Sendable, Equatable {
        public var path: [String]
        public var header: String
    }

    /// A piece of a routing-key template: text as written, or a field's value.
    public enum TemplatePart: Sendable, Equatable {
        case text(String)
        case field([String])
    }

    public var headers: [HeaderField]
    /// nil: the routing key defaults to the dotted event type.
    public var routingKey: [TemplatePart]?

    public init(headers: [HeaderField] = [], routingKey: [TemplatePart]? = nil) {
        self.headers = headers
        self.routingKey = routingKey
    }

    /// Parses `path=header,path=header` (spaces around items ignored).
    public static func parseHeaders(_ text: String, setting: String) throws -> [HeaderField] {
        var fields: [HeaderField] = []
        for item in text.split(separator: ",") {
            let pair = item.split(separator: "=", maxSplits: 1).map { $0.trimmingSpaces }
            guard pair.count == 2, let path = Self.path(pair[0]), !pair[1].isEmpty, pair[1].utf8.count <= 255 else {
                throw ConfigurationError(setting: setting, reason: "'\(item.trimmingSpaces)' is not field.path=header-name")
            }
            guard !fields.contains(where: { $0.header == pair[1] }) else {
                throw ConfigurationError(setting: setting, reason: "header '\(pair[1])' is mapped twice")
            }
            fields.append(HeaderField(path: path, header: pair[1]))
        }
        return fields
    }

    /// Parses a template such as `order.{data.region}.created`; nil for an empty one.
    public static func parseTemplate(_ text: String, setting: String) throws -> [TemplatePart]? {
        guard !text.isEmpty else { return nil }
        var parts: [TemplatePart] = []
        var rest = Substring(text)
        while let open = rest.firstIndex(where: { $0 == "{" || $0 == "}" }) {
            guard rest[open] == "{", let close = rest[open...].firstIndex(of: "}") else {
                throw ConfigurationError(setting: setting, reason: "'\(text)' has a brace without its pair")
            }
            let name = rest[rest.index(after: open)..<close]
            guard !name.contains("{"), let path = Self.path(name) else {
                throw ConfigurationError(setting: setting, reason: "'{\(name)}' in '\(text)' is not a field path such as {data.region}")
            }
            if open > rest.startIndex { parts.append(.text(String(rest[..<open]))) }
            parts.append(.field(path))
            rest = rest[rest.index(after: close)...]
        }
        if !rest.isEmpty { parts.append(.text(String(rest))) }
        guard parts.contains(where: { if case .field = $0 { true } else { false } }) else {
            throw ConfigurationError(
                setting: setting, reason: "'\(text)' names no field; set RELAY_EXCHANGE_MAP or the documents' routingKey instead")
        }
        return parts
    }

    /// A dotted path of non-empty names, or nil.
    private static func path(_ text: some StringProtocol) -> [String]? {
        let names = String(text).split(separator: Character("."), omittingEmptySubsequences: false).map(String.init)
        guard !names.isEmpty, names.allSatisfy({ !$0.isEmpty && !$0.contains(" ") }) else { return nil }
        return names
    }
}
