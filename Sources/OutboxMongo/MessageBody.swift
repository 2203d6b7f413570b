import Outbox

/// How the relay makes message bodies from outbox events.
public struct MessageBodyOptions: Sendable, Equatable {
    public init() {}
}

/// Renders an event's message body and content type from its decoded fields and `data`.
enum MessageBody {
    /// Sets `message.body` and `message.contentType`. `document` is the whole outbox document,
    /// for settings a writer may give per event.
    static func render(_ message: inout OutboxMessage, data: Document, document: Document, options: MessageBodyOptions) {
        var envelope: Document = ["id": .string(message.id), "type": .string(message.type)]
        if !message.aggregateType.isEmpty { envelope["aggregateType"] = .string(message.aggregateType) }
        envelope["aggregateId"] = .string(message.aggregateId)
        if let version = message.aggregateVersion { envelope["aggregateVersion"] = .int64(Int64(version)) }
        envelope["timestamp"] = .datetime(message.occurredAt)
        envelope["data"] = .document(data)
        message.body = ExtendedJSON.renderBytes(envelope)
        message.contentType = "application/json"
    }
}
