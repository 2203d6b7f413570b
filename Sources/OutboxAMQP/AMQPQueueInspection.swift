import CRabbitMQ
import Foundation
import Outbox

/// Reading a queue without taking its messages, and publishing with every property: what the
/// dead-letter tools need beside the relay's and consumers' paths.
let AMQP_BASIC_GET_OK_METHOD_ID: amqp_method_number_t = 0x003C_0047

extension AMQPConnection {
    /// `queue.declare` passive: the queue's ready messages and consumers, without creating it; nil
    /// when there is no such queue. The broker closes the channel for a missing queue (which gives
    /// back every message got on it without ack); it is opened again here, in confirm mode if it was.
    func inspectQueue(_ name: String) throws -> (messages: Int, consumers: Int)? {
        let arena = CArena()
        let ok = amqp_queue_declare(state, channel, arena.bytes(name), 1, 0, 0, 0, amqp_empty_table)
        let reply = amqp_get_rpc_reply(state)
        if reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION, reply.reply.id == OUTBOX_AMQP_CHANNEL_CLOSE,
            reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee.reply_code == 404
        {
            var closeOk = amqp_channel_close_ok_t()
            let status = amqp_send_method(state, channel, OUTBOX_AMQP_CHANNEL_CLOSE_OK, &closeOk)
            guard status == AMQP_STATUS_OK.rawValue else { throw failed("channel.close-ok", statusText(status)) }
            amqp_channel_open(state, channel)
            try check("channel.open")
            if confirmMode { try confirmSelect() }
            return nil
        }
        try check("queue.declare passive \(name)")
        return (Int(ok?.pointee.message_count ?? 0), Int(ok?.pointee.consumer_count ?? 0))
    }

    /// Fetches one message with `basic.get`, every property and header as the broker holds it;
    /// nil when the queue is empty. Without `autoAck` the message stays this channel's until it
    /// is acked, nacked or the connection closes.
    func get(queue: String, autoAck: Bool) throws -> AMQPMessage? {
        releaseBuffers()
        let arena = CArena()
        let reply = amqp_basic_get(state, channel, arena.bytes(queue), autoAck ? 1 : 0)
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else { throw failed("basic.get", replyText(reply)) }
        guard reply.reply.id == AMQP_BASIC_GET_OK_METHOD_ID else { return nil }
        let ok = reply.reply.decoded.assumingMemoryBound(to: amqp_basic_get_ok_t.self).pointee
        var message = amqp_message_t()
        let read = amqp_read_message(state, channel, &message, 0)
        guard read.reply_type == AMQP_RESPONSE_NORMAL else { throw failed("basic.get", replyText(read)) }
        defer { amqp_destroy_message(&message) }
        return AMQPMessage(
            deliveryTag: ok.delivery_tag, redelivered: ok.redelivered != 0, exchange: String(amqpBytes: ok.exchange),
            routingKey: String(amqpBytes: ok.routing_key), messagesLeft: Int(ok.message_count),
            properties: AMQPProperties(message.properties), body: [UInt8](amqpBytes: message.body), connectionGeneration: generation)
    }

    /// `basic.nack`: with `requeue` the broker puts the message(s) back in their queue, else it
    /// dead-letters or drops them. `multiple` covers every unacknowledged tag up to `deliveryTag`.
    func nack(_ deliveryTag: UInt64, multiple: Bool, requeue: Bool) throws {
        let status = amqp_basic_nack(state, channel, deliveryTag, multiple ? 1 : 0, requeue ? 1 : 0)
        guard status == AMQP_STATUS_OK.rawValue else { throw failed("basic.nack", statusText(status)) }
    }

    /// Sends one `basic.publish` with exactly `properties`; returns its delivery tag on a confirm channel.
    @discardableResult
    func publish(exchange: String, routingKey: String, mandatory: Bool, properties: AMQPProperties, body: [UInt8]) throws -> UInt64 {
        let arena = CArena()
        var props = properties.encoded(in: arena)
        let status = amqp_basic_publish(
            state, channel, arena.bytes(exchange), arena.bytes(routingKey), mandatory ? 1 : 0, 0, &props, arena.bytes(body))
        guard status == AMQP_STATUS_OK.rawValue else { throw failed("basic.publish", statusText(status)) }
        guard confirmMode else { return 0 }
        defer { nextDeliveryTag += 1 }
        return nextDeliveryTag
    }

    /// Waits up to `timeout` for the confirm of the publish tagged `tag` (confirms of earlier tags
    /// are passed over). A mandatory message that came back is `.returned`, even though an ack follows.
    func awaitConfirm(of tag: UInt64, messageId: String?, timeout: Duration) throws -> PublishOutcome {
        let deadline = ContinuousClock.now + timeout
        var returned: String?
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return blockedReason.map { .blocked($0) } ?? .timedOut }
            guard let event = try nextConfirmEvent(timeout: left) else { continue }
            switch event {
            case .ack(let acked, let multiple) where acked == tag || (multiple && acked > tag):
                return returned.map { .returned($0) } ?? .acked
            case .nack(let nacked, let multiple) where nacked == tag || (multiple && nacked > tag):
                return .nacked
            case .returned(let id, let text) where id == messageId:
                returned = text
            default:
                continue
            }
        }
    }
}
