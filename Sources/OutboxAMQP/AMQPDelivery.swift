import Foundation
import Outbox

/// A queue argument (`x-max-length`, `x-overflow`, `x-dead-letter-exchange`, ...).
public enum AMQPArgument: Sendable, Hashable {
    case string(String)
    case int(Int64)
    case bool(Bool)
}

/// A message received from a queue, with the properties the relay sets and its headers (but for
/// byte strings and void; `AMQPMessage` carries every property and header type).
public struct AMQPDelivery: Sendable {
    public var deliveryTag: UInt64
    public var redelivered: Bool
    public var exchange: String
    public var routingKey: String
    public var messageId: String?
    public var type: String?
    public var correlationId: String?
    public var priority: UInt8?
    /// The AMQP `content_type`, when the publisher set one.
    public var contentType: String? = nil
    /// The AMQP `content_encoding` and `reply_to`, when the publisher set them.
    public var contentEncoding: String? = nil
    public var replyTo: String? = nil
    public var headers: [String: HeaderValue]
    public var body: [UInt8]
    /// The owner's connection generation that received it (acks go only to that connection).
    public var connectionGeneration: Int = 0

    init(
        deliveryTag: UInt64, redelivered: Bool, exchange: String, routingKey: String, properties: AMQPProperties, body: [UInt8],
        connectionGeneration: Int
    ) {
        self.deliveryTag = deliveryTag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routingKey = routingKey
        messageId = properties.messageId
        type = properties.type
        correlationId = properties.correlationId
        priority = properties.priority
        contentType = properties.contentType
        contentEncoding = properties.contentEncoding
        replyTo = properties.replyTo
        headers = properties.headers.compactMapValues(HeaderValue.init(field:))
        self.body = body
        self.connectionGeneration = connectionGeneration
    }
}
