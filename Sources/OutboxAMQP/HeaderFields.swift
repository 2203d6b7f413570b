import Outbox

/// An outbox header as an AMQP field, and back: every type a writer's document can say keeps its
/// type on the wire, in the consumers and in their dead letters.
extension AMQPFieldValue {
    public init(header: HeaderValue) {
        switch header {
        case .string(let s): self = .string(s)
        case .int(let i): self = .int(i)
        case .bool(let b): self = .bool(b)
        case .double(let d): self = .double(d)
        case .decimal(let scale, let value): self = .decimal(scale: scale, value: UInt32(bitPattern: value))
        case .timestamp(let seconds): self = .timestamp(UInt64(max(seconds, 0)))
        case .array(let items): self = .array(items.map(AMQPFieldValue.init(header:)))
        case .table(let table): self = .table(table.mapValues(AMQPFieldValue.init(header:)))
        }
    }
}

extension HeaderValue {
    /// nil for byte strings and void, which no outbox document says.
    public init?(field: AMQPFieldValue) {
        switch field {
        case .string(let s): self = .string(s)
        case .int(let i): self = .int(i)
        case .bool(let b): self = .bool(b)
        case .float(let f): self = .double(Double(f))
        case .double(let d): self = .double(d)
        case .decimal(let scale, let value): self = .decimal(scale: scale, value: Int32(bitPattern: value))
        case .timestamp(let seconds): self = .timestamp(Int64(clamping: seconds))
        case .array(let items): self = .array(items.compactMap(HeaderValue.init(field:)))
        case .table(let table): self = .table(table.compactMapValues(HeaderValue.init(field:)))
        case .bytes, .void: return nil
        }
    }
}
