import ArgumentParser

/// One setting, declared once: its environment variable, flag, kind, default, help and who reads
/// it. The flags' names and help, the parsing (`Settings`), `outboxctl settings`,
/// `docs/configuration.md` and `ops/deploy/relay.env.example` all come from the declaration.
public struct SettingDeclaration: Sendable, Hashable {
    /// What a value is, which decides how it is parsed and what the help says about it.
    public enum Kind: Sendable, Hashable {
        case text
        case integer(ClosedRange<Int>)
        /// `250ms`, `5s`, `2m`, `1h`, `30d`; zero only where it means something.
        case duration(allowZero: Bool)
        /// A duration, or `off`.
        case durationOrOff
        case toggle
        /// A path to a file the process reads at start.
        case file
    }

    /// The environment variable, e.g. `RELAY_BATCH_SIZE`.
    public let env: String
    /// The long flag without its dashes, e.g. `batch-size`; nil for environment-only settings.
    public let flag: String?
    public let kind: Kind
    /// The value used when neither flag nor variable is set, as it would be written; nil when the
    /// setting is required or has no value by default.
    public let defaultValue: String?
    /// The default as shown, where it is computed or there is none (`host-pid-random`, `none`).
    public let shownDefault: String
    /// What it does, in a sentence or two.
    public let summary: String
    /// Who reads it: `all`, `relay`, `consumers`, `outboxctl`…
    public let usedBy: String
    /// Whether a value may hold a password (a URL), so it is never printed.
    public let secret: Bool
    /// A value for `relay.env.example`; nil leaves the setting commented out at its default.
    public let example: String?

    public init(
        env: String, flag: String?, kind: Kind = .text, default defaultValue: String?, shown shownDefault: String? = nil,
        usedBy: String, secret: Bool = false, example: String? = nil, _ summary: String
    ) {
        self.env = env
        self.flag = flag
        self.kind = kind
        self.defaultValue = defaultValue
        self.shownDefault = shownDefault ?? defaultValue ?? "none"
        self.summary = summary
        self.usedBy = usedBy
        self.secret = secret
        self.example = example
    }

    /// The flag as typed, e.g. `--batch-size` (`--[no-]change-stream` for a toggle).
    public var flagSpelling: String? {
        flag.map { kind == .toggle ? "--[no-]\($0)" : "--\($0)" }
    }

    /// How errors name the setting: `RELAY_BATCH_SIZE (--batch-size)`.
    public var label: String { flagSpelling.map { "\(env) (\($0))" } ?? env }

    /// How to turn tracing on, for the `--help` of the programs that make spans (the variable has
    /// no flag, so the option list does not show it).
    public static var tracingHelp: String { "Tracing (env \(otelTracesExporter.env)): \(otelTracesExporter.summary)." }

    /// The range, values or form a value takes, where the summary does not say it.
    public var form: String? {
        switch kind {
        case .integer(let range): "\(range.lowerBound)-\(range.upperBound)"
        case .toggle: "true or false"
        case .durationOrOff: "a duration or off"
        case .text, .duration, .file: nil
        }
    }

    /// The flag's help: the summary, then where else it is set, its form and its default.
    public var help: String {
        let fallback = shownDefault.hasPrefix("required") ? shownDefault : "default \(shownDefault)"
        let details = ["env \(env)", form, fallback].compactMap { $0 }.joined(separator: "; ")
        return "\(summary) (\(details))."
    }

    /// The argument parser's name for the flag.
    public var name: NameSpecification {
        guard let flag else { preconditionFailure("\(env) has no flag") }
        return .customLong(flag)
    }

    public var argumentHelp: ArgumentHelp { ArgumentHelp(help) }
}
