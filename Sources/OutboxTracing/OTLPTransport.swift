import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import Outbox
import Synchronization

/// Hands one encoded `ExportTraceServiceRequest` to the collector; throws when it was not taken.
protocol SpanTransport: Sendable {
    func send(_ request: [UInt8]) async throws
    /// Closes what the transport keeps open between exports.
    func close()
}

/// Why an export failed, as the log and the tests see it (never a header's value).
struct ExportError: Error, CustomStringConvertible {
    let description: String
}

/// What both transports share: the collector's address, the TLS context of an `https` endpoint,
/// and a deadline (`OTEL_EXPORTER_OTLP_TIMEOUT`) on each export, after which its connection is
/// closed and the export fails.
struct CollectorConnection: Sendable {
    let endpoint: TracingSettings.Endpoint
    let tls: NIOSSLContext?
    let timeout: Duration

    init(settings: TracingSettings) throws {
        endpoint = settings.endpoint
        timeout = settings.timeout
        guard settings.endpoint.secure else {
            tls = nil
            return
        }
        var configuration = TLSConfiguration.makeClientConfiguration()
        if settings.transport == .grpc { configuration.applicationProtocols = ["h2"] }
        func load<T>(_ setting: String, _ read: () throws -> T) throws -> T {
            do { return try read() } catch { throw ConfigurationError(setting: setting, reason: "cannot be read: \(error)") }
        }
        if let file = settings.certificateFile {
            configuration.trustRoots = .file(file)
            _ = try load("OTEL_EXPORTER_OTLP_CERTIFICATE") { try NIOSSLCertificate.fromPEMFile(file) }
        }
        if let file = settings.clientCertificateFile {
            configuration.certificateChain = try load("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE") {
                try NIOSSLCertificate.fromPEMFile(file).map { .certificate($0) }
            }
        }
        if let file = settings.clientKeyFile {
            configuration.privateKey = .privateKey(try load("OTEL_EXPORTER_OTLP_CLIENT_KEY") { try NIOSSLPrivateKey(file: file, format: .pem) })
        }
        tls = try load("OTEL_EXPORTER_OTLP_ENDPOINT") { try NIOSSLContext(configuration: configuration) }
    }

    /// Connects, with TLS when the endpoint asks for it, and sets up the pipeline with `configure`.
    func connect<Output: Sendable>(_ configure: @escaping @Sendable (Channel) throws -> Output) async throws -> (Channel, Output) {
        let tls = self.tls
        // Server name indication takes host names only.
        let serverName = endpoint.host.allSatisfy { $0.isNumber || $0 == "." || $0 == ":" } ? nil : endpoint.host
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connectTimeout(TimeAmount(timeout))
        let initializer: @Sendable (Channel) -> EventLoopFuture<(Channel, Output)> = { channel in
            channel.eventLoop.makeCompletedFuture {
                if let tls {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: serverName))
                }
                return (channel, try configure(channel))
            }
        }
        // An address given as an IP needs no resolver round (a thread hop and getaddrinfo per export).
        let (channel, output) =
            if let address = try? SocketAddress(ipAddress: endpoint.host, port: endpoint.port) {
                try await bootstrap.connect(to: address, channelInitializer: initializer)
            } else {
                try await bootstrap.connect(host: endpoint.host, port: endpoint.port, channelInitializer: initializer)
            }
        return (channel, output)
    }

    /// Closes `channel` once an export's time is up, which fails whatever still waits on it;
    /// cancel it when the export is over.
    func deadline(_ channel: Channel) -> Scheduled<Void> {
        channel.eventLoop.scheduleTask(in: TimeAmount(timeout)) { channel.close(promise: nil) }
    }

    /// Why an answer never came.
    var noAnswer: ExportError {
        ExportError(description: "no answer from the collector within \(timeout) (OTEL_EXPORTER_OTLP_TIMEOUT)")
    }
}

/// OTLP/HTTP with protobuf bodies: `POST <endpoint>/v1/traces`, `application/x-protobuf`, a
/// connection an export (at most a few a second; nothing to keep alive).
struct OTLPHTTPTransport: SpanTransport {
    let connection: CollectorConnection
    let headers: [(String, String)]

    func close() {}

    func send(_ request: [UInt8]) async throws {
        let (channel, wrapped) = try await connection.connect { channel in
            try channel.pipeline.syncOperations.addHTTPClientHandlers()
            return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
        }
        let deadline = connection.deadline(channel)
        defer {
            deadline.cancel()
            channel.close(promise: nil)
        }
        let endpoint = connection.endpoint
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: endpoint.path)
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        head.headers.replaceOrAdd(name: "Host", value: endpoint.authority)
        head.headers.replaceOrAdd(name: "Content-Type", value: "application/x-protobuf")
        head.headers.replaceOrAdd(name: "Content-Length", value: "\(request.count)")
        head.headers.replaceOrAdd(name: "Connection", value: "close")
        let status: HTTPResponseStatus? = try await wrapped.executeThenClose { inbound, outbound in
            try await outbound.write(.head(head))
            try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: request))))
            try await outbound.write(.end(nil))
            var status: HTTPResponseStatus?
            for try await part in inbound {
                switch part {
                case .head(let response): status = response.status
                case .body: break
                case .end: return status
                }
            }
            return nil
        }
        guard let status else { throw connection.noAnswer }
        guard (200..<300).contains(status.code) else { throw ExportError(description: "the collector answered \(status.code)") }
    }
}

/// OTLP/gRPC: the `TraceService/Export` unary call over HTTP/2 (prior knowledge on `http`, ALPN
/// `h2` on `https`), a length-prefixed message, and the answer's `grpc-status`. The connection
/// stays open between exports, a stream each (setting up HTTP/2 for every export cost the relay
/// more than encoding the spans); a connection that failed or timed out is closed and made anew.
final class OTLPGRPCTransport: SpanTransport {
    static let path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    typealias Connected = (channel: Channel, multiplexer: NIOHTTP2Handler.AsyncStreamMultiplexer<Void>)

    let connection: CollectorConnection
    let headers: [(String, String)]
    private let open = Mutex<Connected?>(nil)

    init(connection: CollectorConnection, headers: [(String, String)]) {
        self.connection = connection
        self.headers = headers
    }

    func close() { open.withLock { $0.take() }?.channel.close(promise: nil) }

    func send(_ request: [UInt8]) async throws {
        let reused = open.withLock { $0 }.flatMap { $0.channel.isActive ? $0 : nil }
        do {
            if let reused { try await send(request, on: reused) } else { try await send(request, on: connect()) }
        } catch let error where reused != nil && !(error is ExportError) {
            // The collector may have closed an idle connection (GOAWAY): once more on a new one.
            try await send(request, on: connect())
        }
    }

    private func connect() async throws -> Connected {
        close()
        let connected = try await connection.connect { channel in
            // The collector opens no streams of its own.
            try channel.pipeline.syncOperations.configureAsyncHTTP2Pipeline(mode: .client) { stream in
                stream.eventLoop.makeSucceededVoidFuture()
            }
        }
        open.withLock { $0 = connected }
        return connected
    }

    private func send(_ request: [UInt8], on connected: Connected) async throws {
        let started = ContinuousClock.now
        let deadline = connection.deadline(connected.channel)
        defer { deadline.cancel() }
        do {
            try await exchange(request, on: connected.multiplexer)
        } catch {
            connected.channel.close(promise: nil)
            // The deadline closed the connection: the collector is slow, not gone.
            if ContinuousClock.now - started >= connection.timeout { throw connection.noAnswer }
            throw error
        }
    }

    private func exchange(_ request: [UInt8], on multiplexer: NIOHTTP2Handler.AsyncStreamMultiplexer<Void>) async throws {
        let stream = try await multiplexer.openStream { stream in
            stream.eventLoop.makeCompletedFuture {
                try NIOAsyncChannel<HTTP2Frame.FramePayload, HTTP2Frame.FramePayload>(wrappingChannelSynchronously: stream)
            }
        }
        let endpoint = connection.endpoint
        var head: HPACKHeaders = [
            ":method": "POST", ":scheme": endpoint.secure ? "https" : "http", ":path": Self.path, ":authority": endpoint.authority,
            "content-type": "application/grpc", "te": "trailers",
        ]
        for (name, value) in headers { head.add(name: name.lowercased(), value: value) }
        var message = ByteBuffer()
        message.writeInteger(UInt8(0))  // not compressed
        message.writeInteger(UInt32(request.count))
        message.writeBytes(request)
        let answer: (status: String?, grpcStatus: String?, grpcMessage: String?) = try await stream.executeThenClose { inbound, outbound in
            try await outbound.write(.headers(.init(headers: head)))
            try await outbound.write(.data(.init(data: .byteBuffer(message), endStream: true)))
            var answer: (status: String?, grpcStatus: String?, grpcMessage: String?) = (nil, nil, nil)
            for try await payload in inbound {
                switch payload {
                case .headers(let frame):
                    if let status = frame.headers.first(name: ":status") { answer.status = status }
                    if let status = frame.headers.first(name: "grpc-status") {
                        answer.grpcStatus = status
                        answer.grpcMessage = frame.headers.first(name: "grpc-message")
                    }
                    if frame.endStream { return answer }
                case .data(let frame):
                    if frame.endStream { return answer }
                case .rstStream(let code):
                    throw ExportError(description: "the collector reset the stream (\(code))")
                default: break
                }
            }
            return answer
        }
        guard let status = answer.status else { throw connection.noAnswer }
        guard status == "200" else { throw ExportError(description: "the collector answered HTTP/2 status \(status)") }
        guard answer.grpcStatus == "0" else {
            let message = answer.grpcMessage.map { ": \($0.removingPercentEncoding)" } ?? ""
            throw ExportError(description: "the collector answered gRPC status \(answer.grpcStatus ?? "none")\(message)")
        }
    }
}

extension String {
    /// A `grpc-message` as sent (percent-encoded), decoded where it can be.
    fileprivate var removingPercentEncoding: String { String(percentDecoding: Substring(self)) ?? self }
}
