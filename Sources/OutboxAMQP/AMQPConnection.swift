import CRabbitMQ
import Foundation
import Outbox

/// The confirm-mode channel number used by every connection here (one channel per connection).
let channel: amqp_channel_t = 1

/// Owns one `amqp_connection_state_t` with one open channel.
///
/// rabbitmq-c connections are not thread-safe: an instance is created, used and closed on one
/// thread only (see `AMQPConnectionOwner`), which is why it is not Sendable.
final class AMQPConnection {
    let state: amqp_connection_state_t
    private(set) var isOpen = false
    /// Next publish sequence number on a confirm channel (RabbitMQ numbers from 1).
    var nextDeliveryTag: UInt64 = 1
    private(set) var confirmMode = false
    /// Why the broker blocked this connection (`connection.blocked`, e.g. a memory or disk alarm);
    /// nil while it accepts publishes. Set and cleared by the frames read here.
    private(set) var blockedReason: String?
    var isBlocked: Bool { blockedReason != nil }
    /// Exchanges declared on this connection so far.
    private(set) var declaredExchanges: Set<String> = []
    /// Publishes handed back while blocked and still unconfirmed (see `HeldBackPublishes`);
    /// every confirm read here settles them.
    var heldBack = HeldBackPublishes()
    /// Which connection of its owner this is; delivery tags are only valid on the connection that issued them.
    let generation: Int

    init(
        endpoint: AMQPEndpoint, address: AMQPEndpoint.Address, heartbeatSeconds: Int32, connectTimeout: Duration,
        generation: Int = 0
    ) throws {
        self.generation = generation
        let link = endpoint.link(address)
        guard let state = amqp_new_connection() else { throw AMQPError(operation: "connect to \(link)", message: "out of memory") }
        // From here on every stored property is set, so a throw still runs deinit, which
        // destroys the state: the failure paths below must not destroy it themselves.
        self.state = state
        let socket = try Self.socket(state, tls: endpoint.tls, link: link)
        var timeout = timeval(duration: connectTimeout)
        let status = amqp_socket_open_noblock(socket, address.host, Int32(address.port), &timeout)
        guard status == AMQP_STATUS_OK.rawValue else {
            throw AMQPError(operation: "connect to \(link)", message: Self.openFailure(status), cause: Self.openCause(status))
        }
        // Reads and writes give up after this long, so a dead peer never blocks a thread for ever.
        var rpcTimeout = timeval(duration: connectTimeout)
        amqp_set_rpc_timeout(state, &rpcTimeout)
        amqp_set_handshake_timeout(state, &rpcTimeout)
        let login = outbox_amqp_login_plain(
            state, endpoint.virtualHost, 1, 131072, heartbeatSeconds, endpoint.user, endpoint.password)
        guard login.reply_type == AMQP_RESPONSE_NORMAL else {
            let (message, cause) = Self.loginFailure(login, tls: endpoint.tls != nil)
            throw AMQPError(operation: "login to \(link)", message: message, cause: cause)
        }
        amqp_channel_open(state, channel)
        try check("channel.open")
        isOpen = true
    }

    /// A TCP socket, or a TLS socket set up from `tls`. The socket belongs to `state`.
    private static func socket(_ state: amqp_connection_state_t, tls: AMQPTLSOptions?, link: String) throws -> OpaquePointer {
        func fail(_ message: String, _ cause: AMQPError.Cause = .tlsSettings) -> AMQPError {
            AMQPError(operation: "connect to \(link)", message: message, cause: cause)
        }
        guard let tls else {
            guard let socket = amqp_tcp_socket_new(state) else { throw fail("cannot create socket", .other) }
            return socket
        }
        guard let socket = amqp_ssl_socket_new(state) else { throw fail("cannot create TLS socket", .other) }
        if let caFile = tls.caFile, amqp_ssl_socket_set_cacert(socket, caFile) != AMQP_STATUS_OK.rawValue {
            throw fail("CA file \(caFile) holds no usable PEM certificate")
        }
        guard outbox_amqp_ssl_harden(socket, tls.caFile == nil ? 1 : 0) == 1 else {
            throw fail("cannot set up TLS (minimum version TLS 1.2, system CA store)")
        }
        if let certFile = tls.certFile, let keyFile = tls.keyFile,
            outbox_amqp_ssl_set_key(socket, certFile, keyFile) != AMQP_STATUS_OK.rawValue
        {
            throw fail("client certificate \(certFile) and key \(keyFile) cannot be used (PEM, matching, key not encrypted)")
        }
        amqp_ssl_socket_set_verify_peer(socket, tls.verifyPeer ? 1 : 0)
        amqp_ssl_socket_set_verify_hostname(socket, tls.verifyHostname ? 1 : 0)
        return socket
    }

    private static func openCause(_ status: Int32) -> AMQPError.Cause {
        switch status {
        case AMQP_STATUS_SSL_PEER_VERIFY_FAILED.rawValue: .certificate
        case AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED.rawValue: .hostname
        case AMQP_STATUS_SSL_CONNECTION_FAILED.rawValue, AMQP_STATUS_SSL_ERROR.rawValue: .tlsHandshake
        default: .unreachable
        }
    }

    private static func openFailure(_ status: Int32) -> String {
        switch status {
        case AMQP_STATUS_SSL_PEER_VERIFY_FAILED.rawValue:
            "TLS: the broker's certificate is not signed by a trusted CA (AMQP_TLS_CA_FILE or the URL's cacertfile)"
        case AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED.rawValue:
            "TLS: the broker's certificate does not name this host (host name mismatch)"
        case AMQP_STATUS_SSL_CONNECTION_FAILED.rawValue, AMQP_STATUS_SSL_ERROR.rawValue:
            "TLS handshake failed (is the port a TLS port? does the broker require a client certificate, AMQP_TLS_CERT_FILE?)"
        case AMQP_STATUS_SOCKET_ERROR.rawValue:
            "cannot connect: nothing accepted the connection (refused, unreachable or reset)"
        case AMQP_STATUS_TIMEOUT.rawValue:
            "cannot connect: timed out (connection_timeout)"
        case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED.rawValue:
            "cannot connect: host name not found"
        default:
            statusText(status)
        }
    }

    /// Why `amqp_login` failed. The broker refuses a bad password with connection.close 403; a
    /// TLS listener reached in plain text closes the connection before the AMQP handshake.
    private static func loginFailure(_ reply: amqp_rpc_reply_t, tls: Bool) -> (String, AMQPError.Cause) {
        switch reply.reply_type {
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == OUTBOX_AMQP_CONNECTION_CLOSE:
            let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            let text = "\(close.reply_code) \(String(amqpBytes: close.reply_text))"
            switch close.reply_code {
            case 403: return ("the broker refused the user name or password: \(text)", .authentication)
            case 530: return ("the user may not use this virtual host: \(text)", .authentication)
            default: return ("connection closed by broker: \(text)", .other)
            }
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            switch reply.library_error {
            case AMQP_STATUS_CONNECTION_CLOSED.rawValue, AMQP_STATUS_SOCKET_ERROR.rawValue, AMQP_STATUS_BAD_AMQP_DATA.rawValue,
                AMQP_STATUS_INCOMPATIBLE_AMQP_VERSION.rawValue, AMQP_STATUS_SSL_ERROR.rawValue, AMQP_STATUS_UNEXPECTED_STATE.rawValue:
                if tls {
                    // TLS 1.3 reports a refused client certificate only at the first read.
                    let text =
                        "the broker closed the TLS connection before the AMQP handshake (does it require a client certificate, AMQP_TLS_CERT_FILE?)"
                    return ("\(text): \(statusText(reply.library_error))", .tlsHandshake)
                }
                let text = "the broker closed the connection before the AMQP handshake (a TLS port needs amqps://)"
                return ("\(text): \(statusText(reply.library_error))", .protocolMismatch)
            default:
                return (statusText(reply.library_error), .unreachable)
            }
        default:
            return ("no reply to the login", .unreachable)
        }
    }

    deinit {
        close()
        amqp_destroy_connection(state)
    }

    /// Closes channel and connection politely; safe to call twice.
    func close() {
        guard isOpen else { return }
        isOpen = false
        _ = amqp_channel_close(state, channel, Int32(AMQP_REPLY_SUCCESS))
        _ = amqp_connection_close(state, Int32(AMQP_REPLY_SUCCESS))
    }

    /// Marks the connection unusable after a failure, without a polite close that could block.
    func abandon() { isOpen = false }

    func check(_ operation: String) throws {
        let reply = amqp_get_rpc_reply(state)
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else {
            isOpen = false
            var cause = AMQPError.Cause.other
            if reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION, reply.reply.id == OUTBOX_AMQP_CHANNEL_CLOSE,
                reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee.reply_code == 406
            {
                cause = .inequivalent
            }
            throw AMQPError(operation: operation, message: replyText(reply), cause: cause)
        }
    }

    // MARK: Topology

    func confirmSelect() throws {
        amqp_confirm_select(state, channel)
        try check("confirm.select")
        confirmMode = true
        nextDeliveryTag = 1
    }

    func declareExchange(_ name: String, type: String = "topic", durable: Bool = true) throws {
        let arena = CArena()
        amqp_exchange_declare(state, channel, arena.bytes(name), arena.bytes(type), 0, durable ? 1 : 0, 0, 0, amqp_empty_table)
        try check("exchange.declare \(name)")
        declaredExchanges.insert(name)
    }

    @discardableResult
    func declareQueue(_ name: String, durable: Bool = true, arguments: [String: AMQPArgument] = [:]) throws -> Int {
        let arena = CArena()
        let ok = amqp_queue_declare(state, channel, arena.bytes(name), 0, durable ? 1 : 0, 0, 0, arena.table(arguments))
        try check("queue.declare \(name)")
        return Int(ok?.pointee.message_count ?? 0)
    }

    func bindQueue(_ queue: String, exchange: String, routingKey: String) throws {
        let arena = CArena()
        amqp_queue_bind(state, channel, arena.bytes(queue), arena.bytes(exchange), arena.bytes(routingKey), amqp_empty_table)
        try check("queue.bind \(queue)")
    }

    func deleteQueue(_ name: String) throws {
        let arena = CArena()
        amqp_queue_delete(state, channel, arena.bytes(name), 0, 0)
        try check("queue.delete \(name)")
    }

    func deleteExchange(_ name: String) throws {
        let arena = CArena()
        amqp_exchange_delete(state, channel, arena.bytes(name), 0)
        try check("exchange.delete \(name)")
    }

    @discardableResult
    func purgeQueue(_ name: String) throws -> Int {
        let arena = CArena()
        let ok = amqp_queue_purge(state, channel, arena.bytes(name))
        try check("queue.purge \(name)")
        return Int(ok?.pointee.message_count ?? 0)
    }

    // MARK: Publishing

    /// Sends one persistent `basic.publish`; returns its delivery tag on a confirm channel.
    @discardableResult
    func publish(
        exchange: String, routingKey: String, body: [UInt8], contentType: String = "application/json", mandatory: Bool,
        messageId: String?, type: String?, correlationId: String? = nil, priority: UInt8? = nil, expiration: String? = nil,
        timestampSeconds: UInt64? = nil, headers: [String: HeaderValue] = [:], appId: String? = nil, contentEncoding: String? = nil,
        replyTo: String? = nil
    ) throws -> UInt64 {
        try publish(
            exchange: exchange, routingKey: routingKey, mandatory: mandatory,
            properties: AMQPProperties(
                contentType: contentType, contentEncoding: contentEncoding, headers: headers.mapValues(AMQPFieldValue.init(header:)),
                deliveryMode: 2, priority: priority, correlationId: correlationId, replyTo: replyTo, expiration: expiration, messageId: messageId,
                timestamp: timestampSeconds, type: type,
                appId: appId),
            body: body)
    }

    // MARK: Frames

    /// An event read from the channel while waiting for confirms.
    enum ConfirmEvent {
        case ack(tag: UInt64, multiple: Bool)
        case nack(tag: UInt64, multiple: Bool)
        /// A mandatory message came back unroutable; identified by its `message_id`.
        case returned(messageId: String?, replyText: String)
        /// `connection.blocked`: the broker stopped reading publishes (resource alarm).
        case blocked(reason: String)
        /// `connection.unblocked`: publishes flow again.
        case unblocked
    }

    /// Waits up to `timeout` for the next confirm-related frame; nil on timeout. Throws when the
    /// channel or connection closed or the socket failed.
    func nextConfirmEvent(timeout: Duration) throws -> ConfirmEvent? {
        let event = try readConfirmEvent(timeout: timeout)
        if let event { heldBack.apply(event) }
        return event
    }

    private func readConfirmEvent(timeout: Duration) throws -> ConfirmEvent? {
        guard let frame = try waitFrame(timeout: timeout) else { return nil }
        guard frame.frame_type == UInt8(AMQP_FRAME_METHOD) else { return nil }  // stray content frame
        let method = frame.payload.method
        switch method.id {
        case OUTBOX_AMQP_BASIC_ACK:
            let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            return .ack(tag: ack.delivery_tag, multiple: ack.multiple != 0)
        case OUTBOX_AMQP_BASIC_NACK:
            let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            return .nack(tag: nack.delivery_tag, multiple: nack.multiple != 0)
        case OUTBOX_AMQP_BASIC_RETURN:
            let ret = method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            let text = String(amqpBytes: ret.reply_text)
            // A return is followed by the content header (with the properties) and body frames.
            guard let header = try waitFrame(timeout: .seconds(5)), header.frame_type == UInt8(AMQP_FRAME_HEADER) else {
                throw failed("basic.return", "content header missing")
            }
            var remaining = header.payload.properties.body_size
            let props = header.payload.properties.decoded.assumingMemoryBound(to: amqp_basic_properties_t.self).pointee
            let messageId =
                props._flags & amqp_flags_t(AMQP_BASIC_MESSAGE_ID_FLAG) != 0 ? String(amqpBytes: props.message_id) : nil
            while remaining > 0 {
                guard let body = try waitFrame(timeout: .seconds(5)), body.frame_type == UInt8(AMQP_FRAME_BODY) else {
                    throw failed("basic.return", "content body missing")
                }
                remaining -= UInt64(body.payload.body_fragment.len)
            }
            return .returned(messageId: messageId, replyText: "\(ret.reply_code) \(text)")
        case OUTBOX_AMQP_CHANNEL_CLOSE:
            let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            throw failed("channel", "closed by broker: \(close.reply_code) \(String(amqpBytes: close.reply_text))")
        case OUTBOX_AMQP_CONNECTION_CLOSE:
            let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            throw failed("connection", "closed by broker: \(close.reply_code) \(String(amqpBytes: close.reply_text))")
        case OUTBOX_AMQP_CONNECTION_BLOCKED, OUTBOX_AMQP_CONNECTION_UNBLOCKED:
            return noteFlow(method)
        default:
            return nil
        }
    }

    /// Records `connection.blocked` / `connection.unblocked`.
    private func noteFlow(_ method: amqp_method_t) -> ConfirmEvent {
        guard method.id == OUTBOX_AMQP_CONNECTION_BLOCKED else {
            blockedReason = nil
            return .unblocked
        }
        let blocked = method.decoded.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee
        let reason = String(amqpBytes: blocked.reason)
        blockedReason = reason.isEmpty ? "blocked" : reason
        return .blocked(reason: blockedReason!)
    }

    /// Reads frames for up to `timeout` while the connection is blocked; returns at once when it
    /// is not or once `connection.unblocked` arrives. Confirms read meanwhile belong to no batch.
    func waitWhileBlocked(timeout: Duration) throws {
        let deadline = ContinuousClock.now + timeout
        while isBlocked {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return }
            _ = try nextConfirmEvent(timeout: left)
        }
    }

    func failed(_ operation: String, _ message: String) -> AMQPError {
        isOpen = false
        return AMQPError(operation: operation, message: message)
    }

    private func waitFrame(timeout: Duration) throws -> amqp_frame_t? {
        var frame = amqp_frame_t()
        var tv = timeval(duration: timeout)
        let status = amqp_simple_wait_frame_noblock(state, &frame, &tv)
        if status == AMQP_STATUS_TIMEOUT.rawValue { return nil }
        guard status == AMQP_STATUS_OK.rawValue else { throw failed("read frame", statusText(status)) }
        return frame
    }

    /// Frees decoded-frame memory once nothing is buffered; call between batches.
    func releaseBuffers() { amqp_maybe_release_buffers(state) }

    /// Lets rabbitmq-c answer heartbeats while the connection is otherwise idle, and notices a
    /// connection or channel the broker closed (a forced close, a node shutting down): without
    /// that the connection would look open until the broker gave up waiting for close-ok.
    func keepAlive() throws {
        while let frame = try waitFrame(timeout: .zero) {
            guard frame.frame_type == UInt8(AMQP_FRAME_METHOD) else { continue }
            let method = frame.payload.method
            switch method.id {
            case OUTBOX_AMQP_CONNECTION_CLOSE:
                let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                let text = "closed by broker: \(close.reply_code) \(String(amqpBytes: close.reply_text))"
                var ok = amqp_connection_close_ok_t()
                _ = amqp_send_method(state, 0, OUTBOX_AMQP_CONNECTION_CLOSE_OK, &ok)
                throw failed("connection", text)
            case OUTBOX_AMQP_CHANNEL_CLOSE:
                let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                throw failed("channel", "closed by broker: \(close.reply_code) \(String(amqpBytes: close.reply_text))")
            case OUTBOX_AMQP_CONNECTION_BLOCKED, OUTBOX_AMQP_CONNECTION_UNBLOCKED:
                _ = noteFlow(method)
            default:
                continue
            }
        }
    }

    // MARK: Consuming

    func qos(prefetch: UInt16) throws {
        amqp_basic_qos(state, channel, 0, prefetch, 0)
        try check("basic.qos")
    }

    func consume(queue: String) throws {
        let arena = CArena()
        amqp_basic_consume(state, channel, arena.bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table)
        try check("basic.consume \(queue)")
    }

    /// Waits up to `timeout` for a delivery; nil on timeout.
    func nextDelivery(timeout: Duration) throws -> AMQPDelivery? {
        releaseBuffers()
        var envelope = amqp_envelope_t()
        var tv = timeval(duration: timeout)
        let reply = amqp_consume_message(state, &envelope, &tv, 0)
        if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && reply.library_error == AMQP_STATUS_TIMEOUT.rawValue {
            return nil
        }
        if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && reply.library_error == AMQP_STATUS_UNEXPECTED_STATE.rawValue {
            // A frame other than a delivery: a close means the channel is gone; anything else is skipped.
            _ = try nextConfirmEvent(timeout: .zero)
            return nil
        }
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else { throw failed("consume", replyText(reply)) }
        defer { amqp_destroy_envelope(&envelope) }
        return AMQPDelivery(
            deliveryTag: envelope.delivery_tag, redelivered: envelope.redelivered != 0, exchange: String(amqpBytes: envelope.exchange),
            routingKey: String(amqpBytes: envelope.routing_key), properties: AMQPProperties(envelope.message.properties),
            body: [UInt8](amqpBytes: envelope.message.body), connectionGeneration: generation)
    }

    /// Acks `deliveryTag`, and with `multiple` every unacknowledged delivery up to it.
    func ack(_ deliveryTag: UInt64, multiple: Bool = false) throws {
        let status = amqp_basic_ack(state, channel, deliveryTag, multiple ? 1 : 0)
        guard status == AMQP_STATUS_OK.rawValue else { throw failed("basic.ack", statusText(status)) }
    }

    func reject(_ deliveryTag: UInt64, requeue: Bool) throws {
        let status = amqp_basic_reject(state, channel, deliveryTag, requeue ? 1 : 0)
        guard status == AMQP_STATUS_OK.rawValue else { throw failed("basic.reject", statusText(status)) }
    }

    /// Fetches one message with `basic.get` and acks it at once (used by tests and tools); nil when
    /// the queue is empty.
    func get(queue: String) throws -> AMQPDelivery? {
        try get(queue: queue, autoAck: true).map {
            AMQPDelivery(
                deliveryTag: $0.deliveryTag, redelivered: $0.redelivered, exchange: $0.exchange, routingKey: $0.routingKey,
                properties: $0.properties, body: $0.body, connectionGeneration: $0.connectionGeneration)
        }
    }

    func replyText(_ reply: amqp_rpc_reply_t) -> String {
        switch reply.reply_type {
        case AMQP_RESPONSE_NONE: return "no reply (missing RPC reply type)"
        case AMQP_RESPONSE_LIBRARY_EXCEPTION: return statusText(reply.library_error)
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            switch reply.reply.id {
            case OUTBOX_AMQP_CONNECTION_CLOSE:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                return "connection closed by broker: \(close.reply_code) \(String(amqpBytes: close.reply_text))"
            case OUTBOX_AMQP_CHANNEL_CLOSE:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                return "channel closed by broker: \(close.reply_code) \(String(amqpBytes: close.reply_text))"
            default:
                return "unexpected server method \(reply.reply.id)"
            }
        default: return "unknown reply"
        }
    }
}
