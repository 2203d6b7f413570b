import Outbox

/// TLS settings of an `amqps://` link. Peer and host name verification are on unless turned off
/// explicitly (`verify=verify_none` in the URL, or `AMQP_TLS_VERIFY_PEER` / `AMQP_TLS_VERIFY_HOSTNAME`).
public struct AMQPTLSOptions: Sendable, Equatable {
    /// PEM file of the CA certificates that may sign the broker's certificate; nil uses the system's.
    public var caFile: String?
    /// PEM client certificate (chain) and its unencrypted private key, for mutual TLS; both or neither.
    public var certFile: String?
    public var keyFile: String?
    /// Whether the broker's certificate must chain to a trusted CA.
    public var verifyPeer: Bool
    /// Whether the broker's certificate must name the host connected to.
    public var verifyHostname: Bool

    public init(caFile: String? = nil, certFile: String? = nil, keyFile: String? = nil, verifyPeer: Bool = true, verifyHostname: Bool = true) {
        self.caFile = caFile
        self.certFile = certFile
        self.keyFile = keyFile
        self.verifyPeer = verifyPeer
        self.verifyHostname = verifyHostname
    }
}

/// Where a RabbitMQ broker is, parsed from an AMQP URI:
/// `amqp[s]://user:password@host[:port][,host[:port]...]/vhost[?parameters]`.
///
/// Several comma-separated hosts are tried in turn when connecting and reconnecting. Parameters
/// (as in RabbitMQ's URI spec): `heartbeat` (seconds, 0 turns heartbeats off), `connection_timeout`
/// (milliseconds), and for `amqps://` `cacertfile`, `certfile`, `keyfile` and `verify`
/// (`verify_peer`, the default, or `verify_none`).
public struct AMQPEndpoint: Sendable, Equatable, CustomStringConvertible {
    /// One broker address.
    public struct Address: Sendable, Equatable, CustomStringConvertible {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    /// The brokers, tried in this order; never empty.
    public var addresses: [Address]
    public var user: String
    public var password: String
    public var virtualHost: String
    /// TLS settings; nil for a plain `amqp://` link.
    public var tls: AMQPTLSOptions?
    /// The URL's `heartbeat` parameter, in seconds.
    public var heartbeatSeconds: Int?
    /// The URL's `connection_timeout` parameter.
    public var connectionTimeout: Duration?

    public init(
        host: String, port: Int? = nil, user: String = "guest", password: String = "guest", virtualHost: String = "/",
        tls: AMQPTLSOptions? = nil
    ) {
        self.init(
            addresses: [Address(host: host, port: port ?? (tls == nil ? 5672 : 5671))], user: user, password: password,
            virtualHost: virtualHost, tls: tls)
    }

    public init(
        addresses: [Address], user: String = "guest", password: String = "guest", virtualHost: String = "/", tls: AMQPTLSOptions? = nil,
        heartbeatSeconds: Int? = nil, connectionTimeout: Duration? = nil
    ) {
        precondition(!addresses.isEmpty, "an AMQP endpoint needs at least one address")
        self.addresses = addresses
        self.user = user
        self.password = password
        self.virtualHost = virtualHost
        self.tls = tls
        self.heartbeatSeconds = heartbeatSeconds
        self.connectionTimeout = connectionTimeout
    }

    /// The first broker's host and port.
    public var host: String { addresses[0].host }
    public var port: Int { addresses[0].port }

    /// Parses an AMQP URL. `setting` names where it came from, for the error message; no error
    /// message repeats the URL, which may hold a password.
    public init(url: String, setting: String = "AMQP_URL") throws {
        func fail(_ reason: String) -> ConfigurationError { ConfigurationError(setting: setting, reason: reason) }
        let secure: Bool
        if url.hasPrefix("amqps://") {
            secure = true
        } else if url.hasPrefix("amqp://") {
            secure = false
        } else {
            throw fail("must start with amqp:// or amqps://")
        }
        var rest = Substring(url.drop { $0 != "/" }.dropFirst(2))
        var query: Substring = ""
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        var vhost = "/"
        if let slash = rest.firstIndex(of: "/") {
            let path = rest[rest.index(after: slash)...]
            if !path.isEmpty {
                guard let decoded = String(percentDecoding: path) else { throw fail("virtual host is not valid percent-encoding") }
                vhost = decoded
            }
            rest = rest[..<slash]
        }
        var (user, password) = ("guest", "guest")
        if let at = rest.lastIndex(of: "@") {
            (user, password) = try Self.credentials(rest[..<at], fail: fail)
            rest = rest[rest.index(after: at)...]
        }
        let defaultPort = secure ? 5671 : 5672
        var addresses: [Address] = []
        for hostPort in rest.split(separator: ",", omittingEmptySubsequences: false) {
            addresses.append(try Self.address(hostPort, defaultPort: defaultPort, fail: fail))
        }
        var tls: AMQPTLSOptions? = secure ? AMQPTLSOptions() : nil
        var heartbeat: Int?
        var timeout: Duration?
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(parts[0])
            guard parts.count == 2, let value = String(percentDecoding: parts[1]), !value.isEmpty else {
                throw fail("parameter '\(name)' needs a value")
            }
            switch name {
            case "heartbeat":
                guard let seconds = Int(value), (0...65535).contains(seconds) else {
                    throw fail("heartbeat must be a number of seconds from 0 to 65535")
                }
                heartbeat = seconds
            case "connection_timeout":
                guard let ms = Int(value), (1...3_600_000).contains(ms) else {
                    throw fail("connection_timeout must be a number of milliseconds from 1 to 3600000")
                }
                timeout = .milliseconds(ms)
            case "cacertfile", "certfile", "keyfile", "verify":
                guard tls != nil else { throw fail("parameter '\(name)' needs an amqps:// URL") }
                switch name {
                case "cacertfile": tls?.caFile = value
                case "certfile": tls?.certFile = value
                case "keyfile": tls?.keyFile = value
                default:
                    guard value == "verify_peer" || value == "verify_none" else {
                        throw fail("verify must be verify_peer or verify_none")
                    }
                    tls?.verifyPeer = value == "verify_peer"
                    tls?.verifyHostname = value == "verify_peer"
                }
            default:
                throw fail("unknown parameter '\(name)' (known: heartbeat, connection_timeout, cacertfile, certfile, keyfile, verify)")
            }
        }
        self.init(
            addresses: addresses, user: user, password: password, virtualHost: vhost, tls: tls, heartbeatSeconds: heartbeat,
            connectionTimeout: timeout)
    }

    /// `user[:password]`, percent-decoded. Without a password in the URL the password is empty
    /// (it may come from a file).
    private static func credentials(_ text: Substring, fail: (String) -> ConfigurationError) throws -> (user: String, password: String) {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        guard let user = String(percentDecoding: parts[0]) else { throw fail("user is not valid percent-encoding") }
        guard parts.count == 2 else { return (user, "") }
        guard let password = String(percentDecoding: parts[1]) else { throw fail("password is not valid percent-encoding") }
        return (user, password)
    }

    private static func address(_ text: Substring, defaultPort: Int, fail: (String) -> ConfigurationError) throws -> Address {
        var host = text
        var portText: Substring?
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { throw fail("IPv6 address lacks its closing ]") }
            let after = host[host.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { throw fail("unexpected text after ]") }
            host = host[host.index(after: host.startIndex)..<close]
        } else if let colon = host.lastIndex(of: ":") {
            portText = host[host.index(after: colon)...]
            host = host[..<colon]
        }
        var port = defaultPort
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p) else { throw fail("port must be a number from 1 to 65535") }
            port = p
        }
        guard !host.isEmpty else { throw fail("host is missing") }
        return Address(host: String(host), port: port)
    }

    /// The URL scheme.
    public var scheme: String { tls == nil ? "amqp" : "amqps" }

    private var vhostPath: String { virtualHost == "/" ? "%2f" : virtualHost }

    /// One broker of the endpoint as a URL without the password, for logs and errors.
    public func link(_ address: Address) -> String { "\(scheme)://\(user)@\(address)/\(vhostPath)" }

    /// The endpoint without its password, for logs.
    public var description: String {
        "\(scheme)://\(user)@\(addresses.map(\.description).joined(separator: ","))/\(vhostPath)"
    }
}
