import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo

/// Resolves settings: a flag wins, then the environment variable, then the default. Errors name
/// both the flag and the variable.
public struct Settings: Sendable {
    public let environment: [String: String]

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.environment = environment
    }

    /// A value from the flag, the setting's environment variable, or the file named by `file`
    /// (the container-secret convention; a final line break is dropped). A value given both in a
    /// file and directly is an error, never a silent choice.
    public func secret(_ flag: String?, _ setting: SettingDeclaration, file: SettingDeclaration) throws -> String {
        let direct = flag?.isEmpty == false ? setting.flagSpelling : Setting.fromEnvironment(setting.env, environment).map { _ in setting.env }
        guard let path = Setting.fromEnvironment(file.env, environment) else {
            return try string(flag, setting)
        }
        if let direct {
            throw ConfigurationError(setting: file.env, reason: "\(direct) is set too; give the value one way only")
        }
        return try readFile(path, setting: file.env)
    }

    /// The contents of a settings file without its final line break; errors name `setting`.
    public func readFile(_ path: String, setting: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(setting: setting, reason: "cannot read the file \(path)")
        }
        guard var text = String(data: data, encoding: .utf8) else {
            throw ConfigurationError(setting: setting, reason: "the file \(path) is not UTF-8 text")
        }
        while text.hasSuffix("\n") || text.hasSuffix("\r") { text.removeLast() }
        guard !text.isEmpty else { throw ConfigurationError(setting: setting, reason: "the file \(path) is empty") }
        return text
    }

    /// The flag's or the environment's text, else nil.
    func raw(_ flag: String?, _ setting: SettingDeclaration) -> String? {
        (flag?.isEmpty == false ? flag : nil) ?? Setting.fromEnvironment(setting.env, environment)
    }

    /// A text setting; `computed` stands in for a default the declaration cannot hold (one that
    /// depends on the program).
    public func string(_ flag: String?, _ setting: SettingDeclaration, default computed: String? = nil) throws -> String {
        guard let value = raw(flag, setting) ?? computed ?? setting.defaultValue else {
            throw ConfigurationError(setting: setting.label, reason: "is required")
        }
        return value
    }

    /// An integer setting within the declared range.
    public func int(_ flag: Int?, _ setting: SettingDeclaration, default computed: Int? = nil) throws -> Int {
        guard case .integer(let range) = setting.kind else { preconditionFailure("\(setting.env) is not an integer setting") }
        let resolved: Int
        if let flag {
            resolved = flag
        } else if let raw = Setting.fromEnvironment(setting.env, environment) {
            guard let parsed = Int(raw) else { throw ConfigurationError(setting: setting.label, reason: "'\(raw)' is not an integer") }
            resolved = parsed
        } else if let value = computed ?? setting.defaultValue.flatMap({ Int($0) }) {
            resolved = value
        } else {
            throw ConfigurationError(setting: setting.label, reason: "is required")
        }
        guard range.contains(resolved) else {
            throw ConfigurationError(setting: setting.label, reason: "must be between \(range.lowerBound) and \(range.upperBound), got \(resolved)")
        }
        return resolved
    }

    /// A duration setting; zero is refused unless the declaration allows it (a zero poll interval
    /// spins, a zero confirm timeout fails every publish).
    public func duration(_ flag: String?, _ setting: SettingDeclaration) throws -> Duration {
        guard case .duration(let allowZero) = setting.kind else { preconditionFailure("\(setting.env) is not a duration setting") }
        guard let text = raw(flag, setting) ?? setting.defaultValue else {
            throw ConfigurationError(setting: setting.label, reason: "is required")
        }
        let duration = try Setting.duration(text, setting: setting.label)
        guard allowZero || duration > .zero else {
            throw ConfigurationError(setting: setting.label, reason: "must be more than 0, got '\(text)'")
        }
        return duration
    }

    /// A duration that may also be `off`: nil when neither flag, environment nor default gives
    /// one, `.some(nil)` for `off`, else the duration.
    public func durationOrOff(_ flag: String?, _ setting: SettingDeclaration) throws -> Duration?? {
        guard let text = raw(flag, setting) ?? setting.defaultValue else { return nil }
        guard text.lowercased() != "off" else { return .some(nil) }
        return .some(try Setting.duration(text, setting: setting.label))
    }

    /// A true-or-false setting (`--[no-]flag` or true, false, yes, no, on, off, 1, 0).
    public func bool(_ flag: Bool?, _ setting: SettingDeclaration) throws -> Bool {
        if let flag { return flag }
        guard let raw = Setting.fromEnvironment(setting.env, environment) else { return setting.defaultValue == "true" }
        switch raw.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: throw ConfigurationError(setting: setting.label, reason: "'\(raw)' is not true or false")
        }
    }

    public func logLevel(_ flag: String?) throws -> Logger.Level {
        let raw = try string(flag, .logLevel)
        guard let level = Logger.Level(rawValue: raw.lowercased()) else {
            throw ConfigurationError(
                setting: SettingDeclaration.logLevel.label, reason: "'\(raw)' is not one of trace, debug, info, notice, warning, error, critical")
        }
        return level
    }

    /// The MongoDB pool, with a bad URI reported as a configuration error.
    public func mongoPool(uri: String, database: String, appName: String, threads: Int = 4) throws -> MongoClientPool {
        do {
            return try MongoClientPool(MongoConfiguration(uri: uri, database: database, threads: threads, appName: appName))
        } catch let error as MongoError {
            throw ConfigurationError(setting: SettingDeclaration.mongodbURI.label, reason: error.message)
        }
    }

    /// The RabbitMQ link: the URL from `--amqp-url`, `AMQP_URL` or `AMQP_URL_FILE`, the password
    /// optionally from `AMQP_PASSWORD_FILE`, TLS settings from the URL and `AMQP_TLS_*`. Files
    /// are checked now, so a missing CA file stops the process at start, naming the setting.
    public func amqp(_ flag: String?) throws -> AMQPConfiguration {
        let (file, passwordFile) = (SettingDeclaration.amqpURLFile, SettingDeclaration.amqpPasswordFile)
        let urlSetting = Setting.fromEnvironment(file.env, environment) != nil ? file.env : SettingDeclaration.amqpURL.label
        let url = try secret(flag, .amqpURL, file: file)
        var endpoint = try AMQPEndpoint(url: url, setting: urlSetting)
        if let path = Setting.fromEnvironment(passwordFile.env, environment) {
            guard url.prefix(while: { $0 != "?" }).contains("@"), endpoint.password.isEmpty else {
                throw ConfigurationError(
                    setting: passwordFile.env, reason: "\(urlSetting) must name the user and hold no password (amqps://user@host/)")
            }
            endpoint.password = try readFile(path, setting: passwordFile.env)
        }
        Secrets.register(endpoint.password)
        endpoint.tls = try amqpTLS(endpoint.tls, urlSetting: urlSetting)
        return AMQPConfiguration(endpoint: endpoint)
    }

    /// Merges `AMQP_TLS_*` into the URL's TLS settings: a setting given in both places differently is an error.
    private func amqpTLS(_ fromURL: AMQPTLSOptions?, urlSetting: String) throws -> AMQPTLSOptions? {
        let (ca, cert, key) = (SettingDeclaration.amqpTLSCAFile, SettingDeclaration.amqpTLSCertFile, SettingDeclaration.amqpTLSKeyFile)
        let (peer, hostname) = (SettingDeclaration.amqpTLSVerifyPeer, SettingDeclaration.amqpTLSVerifyHostname)
        func isSet(_ setting: SettingDeclaration) -> Bool { Setting.fromEnvironment(setting.env, environment) != nil }
        guard var tls = fromURL else {
            if let setting = [ca, cert, key, peer, hostname].first(where: isSet) {
                throw ConfigurationError(setting: setting.env, reason: "is set but \(urlSetting) is not amqps://; TLS needs amqps://")
            }
            return nil
        }
        func merge(_ current: String?, _ setting: SettingDeclaration, parameter: String) throws -> String? {
            guard let value = Setting.fromEnvironment(setting.env, environment) else { return current }
            if let current, current != value {
                throw ConfigurationError(setting: setting.env, reason: "differs from the URL's \(parameter); give it one way only")
            }
            return value
        }
        tls.caFile = try merge(tls.caFile, ca, parameter: "cacertfile")
        tls.certFile = try merge(tls.certFile, cert, parameter: "certfile")
        tls.keyFile = try merge(tls.keyFile, key, parameter: "keyfile")
        if isSet(peer) {
            let verify = try bool(nil, peer)
            if !tls.verifyPeer && verify {
                throw ConfigurationError(setting: peer.env, reason: "is true but the URL says verify=verify_none")
            }
            tls.verifyPeer = verify
        }
        if isSet(hostname) {
            let verify = try bool(nil, hostname)
            if !tls.verifyHostname && verify {
                throw ConfigurationError(setting: hostname.env, reason: "is true but the URL says verify=verify_none")
            }
            tls.verifyHostname = verify
        }
        if tls.verifyHostname && !tls.verifyPeer {
            throw ConfigurationError(
                setting: hostname.env, reason: "checking the host name of an unverified certificate proves nothing; turn both off or neither")
        }
        if (tls.certFile == nil) != (tls.keyFile == nil) {
            throw ConfigurationError(
                setting: tls.certFile == nil ? cert.env : key.env,
                reason: "a client certificate needs both \(cert.env) and \(key.env) (or certfile and keyfile)")
        }
        for (file, setting) in [(tls.caFile, ca), (tls.certFile, cert), (tls.keyFile, key)] {
            guard let file else { continue }
            let text = try readFile(file, setting: setting.env)
            guard text.contains("-----BEGIN ") else {
                throw ConfigurationError(setting: setting.env, reason: "the file \(file) is not PEM")
            }
            if setting == key && text.contains("ENCRYPTED") {
                throw ConfigurationError(
                    setting: setting.env, reason: "the key in \(file) is encrypted; rabbitmq-c needs an unencrypted key (protect the file instead)")
            }
        }
        return tls
    }
}
