/// A setting that cannot be used. The description names the setting (flag or environment
/// variable) and why, and never echoes a password.
public struct ConfigurationError: Error, CustomStringConvertible, Sendable, Equatable {
    public let setting: String
    public let reason: String

    public init(setting: String, reason: String) {
        self.setting = setting
        self.reason = reason
    }

    public var description: String { "invalid configuration: \(setting): \(reason)" }
}

/// Where a RabbitMQ broker is, parsed from an `amqp://user:password@host:port/vhost` URL.
public struct AMQPEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var user: String
    public var password: String
    public var virtualHost: String

    public init(host: String, port: Int = 5672, user: String = "guest", password: String = "guest", virtualHost: String = "/") {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.virtualHost = virtualHost
    }

    /// Parses an AMQP URL. `setting` names where it came from, for the error message.
    public init(url: String, setting: String = "AMQP_URL") throws {
        func fail(_ reason: String) -> ConfigurationError { ConfigurationError(setting: setting, reason: reason) }
        guard url.hasPrefix("amqp://") else {
            throw fail(url.hasPrefix("amqps://") ? "TLS (amqps://) is not supported yet" : "must start with amqp://")
        }
        var rest = Substring(url.dropFirst("amqp://".count))
        var vhost = "/"
        if let slash = rest.firstIndex(of: "/") {
            let path = rest[rest.index(after: slash)...]
            if !path.isEmpty {
                guard let decoded = percentDecode(path) else { throw fail("virtual host is not valid percent-encoding") }
                vhost = decoded
            }
            rest = rest[..<slash]
        }
        var user = "guest"
        var password = "guest"
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            let parts = credentials.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            guard let u = percentDecode(parts[0]) else { throw fail("user is not valid percent-encoding") }
            user = u
            if parts.count == 2 {
                guard let p = percentDecode(parts[1]) else { throw fail("password is not valid percent-encoding") }
                password = p
            }
        }
        var port = 5672
        if let colon = rest.lastIndex(of: ":") {
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else {
                throw fail("port must be a number from 1 to 65535")
            }
            port = p
            rest = rest[..<colon]
        }
        guard !rest.isEmpty else { throw fail("host is missing") }
        self.init(host: String(rest), port: port, user: user, password: password, virtualHost: vhost)
    }

    /// The endpoint without its password, for logs.
    public var description: String { "amqp://\(user)@\(host):\(port)/\(virtualHost == "/" ? "%2f" : virtualHost)" }
}

private func percentDecode(_ s: Substring) -> String? {
    var bytes: [UInt8] = []
    var iterator = s.utf8.makeIterator()
    while let byte = iterator.next() {
        if byte == UInt8(ascii: "%") {
            guard let high = iterator.next(), let low = iterator.next(),
                let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
            else { return nil }
            bytes.append(value)
        } else {
            bytes.append(byte)
        }
    }
    return String(validating: bytes, as: UTF8.self)
}

/// Reads typed settings from flags and environment with errors that name the setting.
public enum Setting {
    public static func duration(_ value: String, setting: String) throws -> Duration {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, scale) in units where value.hasSuffix(suffix) {
            // "ms" comes before "s" and "m", so "250ms" never reads as seconds or minutes.
            let number = value.dropLast(suffix.count)
            if let n = Double(number), n >= 0, n.isFinite {
                return .milliseconds(Int64((n * scale * 1000).rounded()))
            }
        }
        throw ConfigurationError(setting: setting, reason: "'\(value)' is not a duration (e.g. 250ms, 5s, 2m, 1h)")
    }

    public static func positiveInt(_ value: Int, setting: String, max: Int = Int.max) throws -> Int {
        guard value > 0, value <= max else {
            throw ConfigurationError(setting: setting, reason: "must be between 1 and \(max), got \(value)")
        }
        return value
    }

    /// An environment value when the flag was not given.
    public static func fromEnvironment(_ name: String, _ environment: [String: String]) -> String? {
        guard let value = environment[name], !value.isEmpty else { return nil }
        return value
    }
}
