import Foundation
import Metrics
import Outbox

/// The BSON type of a value as `$type` names it, for parked reasons.
func typeName(_ value: BSON) -> String {
    switch value {
    case .double: "double"
    case .string: "string"
    case .document: "document"
    case .array: "array"
    case .binary: "binary"
    case .objectId: "objectId"
    case .bool: "bool"
    case .datetime: "date"
    case .null: "null"
    case .regex: "regex"
    case .int32: "int"
    case .timestamp: "timestamp"
    case .int64: "long"
    case .decimal128: "decimal"
    case .minKey: "minKey"
    case .maxKey: "maxKey"
    }
}

extension OutboxMessage {
    /// Whether the event's `_id` is an ObjectId (the store key holds its BSON type, 0x07).
    var storeKeyIsObjectId: Bool { storeKey.count > 4 && storeKey[4] == 0x07 }
}

/// Turns a stored outbox document into a publishable message, or says why it cannot be one.
///
/// The writer's contract (`schema/outbox-event.schema.json`): `type` (string), `aggregateId`
/// (string) and `data` (document) are required. `_id` may be any of string, ObjectId, UUID (or
/// other binary), integer; the message id is its text (a string as is, an ObjectId in hex, a UUID
/// in its canonical form, an integer in decimal). `timestamp` defaults to the ObjectId's time or
/// the time the relay first saw the event; `aggregateType` to none; `exchange` to the relay's
/// routing; `routingKey` to the dotted form of the type.
public enum OutboxDocument {
    public struct Malformed: Error, Equatable {
        public let reason: String
        /// Not malformed: past its `expiresAt`, so it is settled as expired, never published.
        public var expired = false
    }

    public struct Options: Sendable {
        public var maxBodyBytes: Int
        public var partitions: Int
        public var routing: EventRouting
        public var body: MessageBodyOptions

        public init(
            maxBodyBytes: Int = 1 << 20, partitions: Int = OutboxSchema.defaultPartitions, routing: EventRouting = EventRouting(),
            body: MessageBodyOptions = MessageBodyOptions()
        ) {
            self.maxBodyBytes = maxBodyBytes
            self.partitions = partitions
            self.routing = routing
            self.body = body
        }
    }

    /// Decodes a document. `isNew`: the document has no relay state yet, so its partition is
    /// computed here from the aggregate id (and `now` stands in for a missing timestamp).
    public static func decode(_ document: Document, options: Options, isNew: Bool, now: Date = Date()) -> Result<OutboxMessage, Malformed> {
        func fail(_ reason: String) -> Result<OutboxMessage, Malformed> { .failure(Malformed(reason: reason)) }
        guard let rawId = document["_id"] else { return fail("_id is missing") }
        guard let id = messageId(of: rawId) else {
            return fail("_id of type \(typeName(rawId)) cannot be a message id (use a string, ObjectId, UUID or integer)")
        }
        guard let type = document["type"]?.stringValue, !type.isEmpty, type.utf8.count <= 255 else {
            return fail("type must be a non-empty string of at most 255 bytes, found \(describe(document["type"]))")
        }
        guard let aggregateId = document["aggregateId"]?.stringValue, !aggregateId.isEmpty else {
            return fail("aggregateId must be a non-empty string, found \(describe(document["aggregateId"]))")
        }
        guard let data = document["data"]?.documentValue else { return fail("data must be a document, found \(describe(document["data"]))") }
        var aggregateType = ""
        if let raw = document["aggregateType"], raw != .null {
            guard let value = raw.stringValue else { return fail("aggregateType must be a string, found \(typeName(raw))") }
            aggregateType = value
        }
        var version: Int?
        if let raw = document["aggregateVersion"], raw != .null {
            guard let value = raw.intValue, value >= 1 else { return fail("aggregateVersion must be a positive integer, found \(describe(raw))") }
            version = value
        }
        let timestamp: Int64
        switch document["timestamp"] {
        case .datetime(let ms)?: timestamp = ms
        case nil, .null?:
            if case .objectId(let oid) = rawId {
                timestamp = Int64(oid.timestamp.timeIntervalSince1970 * 1000)
            } else {
                timestamp = Int64((document["seenAt"]?.dateValue ?? now).timeIntervalSince1970 * 1000)
            }
        case let other?: return fail("timestamp must be a date (BSON datetime), found \(typeName(other))")
        }
        var expiresAt: Int64?
        if let raw = document["expiresAt"], raw != .null {
            guard case .datetime(let ms) = raw else { return fail("expiresAt must be a date (BSON datetime), found \(typeName(raw))") }
            guard ms > Int64(now.timeIntervalSince1970 * 1000) else {
                return .failure(Malformed(reason: "expired at \(ExtendedJSON.render(raw)) before it was published", expired: true))
            }
            expiresAt = ms
        }
        var deliverAt: Int64?
        if let raw = document["deliverAt"], raw != .null {
            guard case .datetime(let ms) = raw else { return fail("deliverAt must be a date (BSON datetime), found \(typeName(raw))") }
            deliverAt = ms
        }
        let exchange: String
        if let raw = document["exchange"], raw != .null {
            guard let value = raw.stringValue, value.utf8.count <= 255 else { return fail("exchange must be a string of at most 255 bytes") }
            exchange = value
        } else {
            exchange = options.routing.exchange(type: type, aggregateType: aggregateType)
        }
        let routingKey: String
        if let raw = document["routingKey"], raw != .null {
            guard let value = raw.stringValue, value.utf8.count <= 255 else { return fail("routingKey must be a string of at most 255 bytes") }
            routingKey = value
        } else if let template = options.routing.mapping.routingKey {
            var key = ""
            for part in template {
                switch part {
                case .text(let text): key += text
                case .field(let path):
                    let name = path.joined(separator: ".")
                    switch field(path, in: document) {
                    case .string(let s)?: key += s
                    case .int32(let i)?: key += "\(i)"
                    case .int64(let i)?: key += "\(i)"
                    case .bool(let b)?: key += "\(b)"
                    case nil, .null?: return fail("\(name) is missing, which RELAY_ROUTING_KEY_TEMPLATE puts in the routing key")
                    case let other?:
                        return fail("\(name) must be a string, integer or boolean for RELAY_ROUTING_KEY_TEMPLATE, found \(typeName(other))")
                    }
                }
            }
            guard key.utf8.count <= 255 else { return fail("the routing key RELAY_ROUTING_KEY_TEMPLATE makes is over 255 bytes") }
            routingKey = key
        } else {
            routingKey = EventNaming.routingKey(forType: type)
        }
        var headers: [String: HeaderValue]
        switch self.headers(document["headers"]) {
        case .success(let decoded): headers = decoded
        case .failure(let failure): return .failure(failure)
        }
        for mapped in options.routing.mapping.headers where headers[mapped.header] == nil {
            let name = mapped.path.joined(separator: ".")
            guard let value = field(mapped.path, in: document), value != .null else {
                return fail("\(name) is missing, which RELAY_HEADER_FIELDS sends as header \(mapped.header)")
            }
            switch header(value, path: name) {
            case .success(let decoded): headers[mapped.header] = decoded
            case .failure(let failure): return .failure(failure)
            }
        }
        traceContext(document, into: &headers)
        var correlationId: String?
        if let raw = document["correlationId"], raw != .null {
            guard let value = raw.stringValue else { return fail("correlationId must be a string") }
            correlationId = value
        }
        var priority: UInt8?
        if let raw = document["priority"], raw != .null {
            guard let value = raw.intValue, let byte = UInt8(exactly: value) else {
                return fail("priority must be an integer from 0 to 255, found \(describe(raw))")
            }
            priority = byte
        }
        let partition: Int
        if isNew {
            partition = EventNaming.partition(ofAggregate: aggregateId, partitions: options.partitions)
        } else {
            guard let stored = document["partition"]?.intValue, (0..<options.partitions).contains(stored) else {
                return fail("partition must be an integer from 0 to \(options.partitions - 1)")
            }
            partition = stored
        }
        var message = OutboxMessage(
            id: id, type: type, aggregateType: aggregateType, aggregateId: aggregateId, aggregateVersion: version,
            exchange: exchange, routingKey: routingKey, occurredAt: timestamp, correlationId: correlationId, priority: priority,
            expiresAt: expiresAt, deliverAt: deliverAt, headers: headers,
            body: [], attempts: max(document["attempts"]?.intValue ?? 0, 0), partition: partition, storeKey: storeKey(of: rawId),
            isFirstSight: isNew)
        do { try MessageBody.render(&message, data: data, document: document, options: options.body) } catch { return .failure(error) }
        guard message.body.count <= options.maxBodyBytes else {
            return fail("body of \(message.body.count) bytes exceeds the limit of \(options.maxBodyBytes) bytes")
        }
        return .success(message)
    }

    /// The writer's `headers` (none when absent or null): strings, integers, booleans, doubles,
    /// Decimal128 (of at most nine digits, as AMQP's decimal), dates (whole seconds on the wire),
    /// and documents and arrays of these.
    static func headers(_ raw: BSON?) -> Result<[String: HeaderValue], Malformed> {
        guard let raw, raw != .null else { return .success([:]) }
        guard raw.documentValue != nil else { return .failure(Malformed(reason: "headers must be a document")) }
        return header(raw, path: "headers").map { if case .table(let table) = $0 { table } else { [:] } }
    }

    static func header(_ value: BSON, path: String) -> Result<HeaderValue, Malformed> {
        switch value {
        case .string(let s): return .success(.string(s))
        case .int32(let i): return .success(.int(Int64(i)))
        case .int64(let i): return .success(.int(i))
        case .bool(let b): return .success(.bool(b))
        case .double(let d): return .success(.double(d))
        case .datetime(let ms): return .success(.timestamp(ms >= 0 ? ms / 1000 : (ms - 999) / 1000))
        case .decimal128(let decimal):
            guard let (scale, digits) = amqpDecimal(decimal.description) else {
                return .failure(
                    Malformed(
                        reason:
                            "\(path) is a Decimal128 (\(decimal)) of more than nine digits, which an AMQP header cannot carry; write it as a string"))
            }
            return .success(.decimal(scale: scale, value: digits))
        case .document(let document):
            var table: [String: HeaderValue] = [:]
            for (key, item) in document.fields {
                switch header(item, path: "\(path).\(key)") {
                case .success(let decoded): table[key] = decoded
                case .failure(let failure): return .failure(failure)
                }
            }
            return .success(.table(table))
        case .array(let items):
            var array: [HeaderValue] = []
            for (index, item) in items.enumerated() {
                switch header(item, path: "\(path).\(index)") {
                case .success(let decoded): array.append(decoded)
                case .failure(let failure): return .failure(failure)
                }
            }
            return .success(.array(array))
        default:
            return .failure(
                Malformed(
                    reason: "\(path) must be a string, integer, boolean, double, Decimal128, date, document or array, found \(typeName(value))"))
        }
    }

    /// The value at a dotted path of documents, if there is one.
    static func field(_ path: [String], in document: Document) -> BSON? {
        var value: BSON = .document(document)
        for name in path {
            guard let next = value.documentValue?[name] else { return nil }
            value = next
        }
        return value
    }

    /// A decimal's text (`12.50`, `-3E-2`, `1.2E+3`) as AMQP's decimal: scale and unscaled value,
    /// if it fits (scale 0–255, value in 32 bits).
    static func amqpDecimal(_ text: String) -> (scale: UInt8, value: Int32)? {
        let parts = text.uppercased().split(separator: "E", maxSplits: 1)
        guard let mantissa = parts.first, let exponent = parts.count == 2 ? Int(parts[1]) : 0 else { return nil }
        let negative = mantissa.hasPrefix("-")
        let unsigned = mantissa.drop { $0 == "-" || $0 == "+" }
        let pieces = unsigned.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        let whole = pieces.first ?? "", fraction = pieces.count == 2 ? pieces[1] : ""
        var digits = String(whole + fraction)
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber) else { return nil }  // NaN, Infinity
        var scale = fraction.count - exponent
        if scale < 0 {
            guard -scale <= 9 else { return nil }
            digits += String(repeating: "0", count: -scale)
            scale = 0
        }
        digits = String(digits.drop { $0 == "0" })
        guard scale <= 255, let magnitude = Int64(digits.isEmpty ? "0" : digits), magnitude <= Int64(Int32.max) else { return nil }
        return (UInt8(scale), Int32(negative ? -magnitude : magnitude))
    }

    /// A header as the BSON a writer stores (`OutboxWriter`), the inverse of `header(_:path:)`.
    public static func bson(header: HeaderValue) -> BSON {
        switch header {
        case .string(let s): .string(s)
        case .int(let i): .int64(i)
        case .bool(let b): .bool(b)
        case .double(let d): .double(d)
        case .timestamp(let seconds): .datetime(seconds * 1000)
        case .decimal(let scale, let value):
            .decimal128(Decimal128("\(value)E-\(scale)") ?? Decimal128("0")!)
        case .array(let items): .array(items.map { bson(header: $0) })
        case .table(let table): .document(Document(table.sorted { $0.key < $1.key }.map { ($0.key, bson(header: $0.value)) }))
        }
    }

    /// The writer's trace context, from the top-level `traceparent` and `tracestate` fields or else
    /// from `headers`, as the message's `traceparent` and `tracestate` headers. One that is not a
    /// valid W3C traceparent is dropped (counted in `outbox_trace_context_dropped_total`): the
    /// event is delivered without it, as the specification starts a new trace then.
    static func traceContext(_ document: Document, into headers: inout [String: HeaderValue]) {
        let parentField = TraceContext.traceparentField, stateField = TraceContext.tracestateField
        func text(_ value: HeaderValue?) -> String? { if case .string(let s)? = value { s } else { nil } }
        // nil: none given; .some(nil): given, but not a string.
        let parent: String??, state: String?
        if let raw = document[parentField], raw != .null {
            parent = .some(raw.stringValue)
            state = document[stateField]?.stringValue
        } else if let raw = headers[parentField] {
            parent = .some(text(raw))
            state = text(headers[stateField])
        } else {
            parent = nil
            state = nil
        }
        headers[parentField] = nil
        headers[stateField] = nil
        guard let parent else { return }
        guard let parent, let context = TraceContext(traceparent: parent, tracestate: state) else {
            droppedTraceContexts.increment()
            return
        }
        headers.merge(context.headers) { $1 }
    }

    static let droppedTraceContexts = Counter(label: "outbox_trace_context_dropped_total")

    /// The relay's fields a writer set to a value of the wrong type (null included), e.g.
    /// `attempts is null`: what makes the relay's updates fail on a document.
    public static func relayFieldProblems(_ document: Document) -> [String] {
        let expected: [(String, Set<String>)] = [
            ("status", ["string"]), ("partition", ["int", "long", "double"]), ("sid", ["string"]), ("fence", ["int", "long", "double"]),
            ("attempts", ["int", "long", "double"]), ("nextAttemptAt", ["date"]), ("lastError", ["string"]),
            ("deliveredAt", ["date"]), ("parkedAt", ["date"]), ("seenAt", ["date"]),
        ]
        return expected.compactMap { field, types in
            guard let value = document[field] else { return nil }
            let type = typeName(value)
            return types.contains(type) ? nil : "\(field) is \(type)"
        }
    }

    /// The partition a document belongs to by its aggregate id (0 when it has none).
    static func partition(of document: Document, partitions: Int) -> Int {
        guard let aggregateId = document["aggregateId"]?.stringValue else { return 0 }
        return EventNaming.partition(ofAggregate: aggregateId, partitions: partitions)
    }

    /// The message id of an `_id`: a string as is, an ObjectId in hex, a UUID in its canonical
    /// form (other binary in hex), an integer in decimal. Nil for other types.
    public static func messageId(of id: BSON) -> String? {
        switch id {
        case .string(let s): return s.isEmpty ? nil : s
        case .objectId(let oid): return oid.hex
        case .int32(let i): return String(i)
        case .int64(let i): return String(i)
        case .double(let d) where d.rounded() == d && abs(d) < 9.0e15: return String(Int64(d))
        case .decimal128(let d): return d.description
        case .binary(let subtype, let bytes) where (subtype == 3 || subtype == 4) && bytes.count == 16:
            let hex = bytes.map { String(format: "%02x", $0) }.joined()
            let parts = [hex.prefix(8), hex.dropFirst(8).prefix(4), hex.dropFirst(12).prefix(4), hex.dropFirst(16).prefix(4), hex.dropFirst(20)]
            return parts.joined(separator: "-")
        case .binary(_, let bytes) where !bytes.isEmpty:
            return bytes.map { String(format: "%02x", $0) }.joined()
        default: return nil
        }
    }

    /// The `_id` as opaque bytes for the core, and back.
    static func storeKey(of id: BSON) -> [UInt8] { Document([("k", id)]).bsonBytes() }

    static func bson(storeKey: [UInt8]) throws -> BSON {
        guard let value = try Document(bsonBytes: storeKey)["k"] else { throw BSONError("empty store key") }
        return value
    }

    /// The `_id` values an operator's text may mean: the string itself, and the ObjectId, integer
    /// or UUID it spells.
    public static func idCandidates(_ text: String) -> [BSON] {
        var candidates: [BSON] = [.string(text)]
        if text.utf8.count == 24, let oid = ObjectId(text) { candidates.append(.objectId(oid)) }
        if let i = Int64(text) {
            candidates.append(.int64(i))
            if let small = Int32(exactly: i) { candidates.append(.int32(small)) }
        }
        let hex = text.replacingOccurrences(of: "-", with: "")
        if text.utf8.count == 36, hex.utf8.count == 32, let bytes = hexBytes(hex) { candidates.append(.binary(subtype: 4, bytes: bytes)) }
        return candidates
    }

    private static func hexBytes(_ hex: String) -> [UInt8]? {
        var bytes: [UInt8] = []
        var iterator = hex.makeIterator()
        while let high = iterator.next() {
            guard let low = iterator.next(), let byte = UInt8(String([high, low]), radix: 16) else { return nil }
            bytes.append(byte)
        }
        return bytes
    }

    private static func describe(_ value: BSON?) -> String {
        guard let value else { return "none" }
        if case .string(let s) = value, s.isEmpty { return "an empty string" }
        return typeName(value)
    }
}
