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

/// Reads typed settings from flags and environment with errors that name the setting.
public enum Setting {
    public static func duration(_ value: String, setting: String) throws -> Duration {
        // Zero needs no unit; settings that refuse zero say so where they are read.
        if value == "0" { return .zero }
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)]
        for (suffix, scale) in units where value.hasSuffix(suffix) {
            // "ms" comes before "s" and "m", so "250ms" never reads as seconds or minutes.
            let number = value.dropLast(suffix.count)
            if let n = Double(number), n >= 0, n.isFinite {
                return .milliseconds(Int64((n * scale * 1000).rounded()))
            }
        }
        throw ConfigurationError(setting: setting, reason: "'\(value)' is not a duration (e.g. 250ms, 5s, 2m, 1h, 30d)")
    }

    /// An environment value when the flag was not given.
    public static func fromEnvironment(_ name: String, _ environment: [String: String]) -> String? {
        guard let value = environment[name], !value.isEmpty else { return nil }
        return value
    }
}
