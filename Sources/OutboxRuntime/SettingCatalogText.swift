/// The catalog as text: the table of `docs/configuration.md`, the lines of
/// `ops/deploy/relay.env.example` and the listing of `outboxctl settings`.
extension SettingCatalog {
    /// The settings a relay's environment file holds: its links and its own.
    public static let relayEnvironment = links + relay

    /// A Markdown table of `settings`, one row each.
    public static func markdownTable(_ settings: [SettingDeclaration] = all) -> String {
        var lines = ["| variable | flag | default | used by | meaning |", "|---|---|---|---|---|"]
        for setting in settings {
            let meaning = [setting.summary, setting.form].compactMap { $0 }.joined(separator: "; ")
            let cells = [
                "`\(setting.env)`", setting.flagSpelling.map { "`\($0)`" } ?? "", setting.shownDefault, setting.usedBy, meaning,
            ]
            lines.append("| " + cells.map { $0.replacingOccurrences(of: "|", with: "\\|") }.joined(separator: " | ") + " |")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// An environment file: each setting's help as a comment, then the variable with its example
    /// value, or commented out at its default.
    public static func environmentFile(_ settings: [SettingDeclaration] = relayEnvironment, program: String = "outbox-relay") -> String {
        var lines = [
            "# Settings of \(program); every one also has a flag where --help shows one.",
            "# Generated from the settings' declarations by 'outboxctl settings --format env'; passwords",
            "# come from files only the relay can read, never from this file.",
        ]
        for setting in settings {
            lines.append("")
            lines += wrapped(setting.help, width: 98).map { "# \($0)" }
            if let example = setting.example {
                lines.append("\(setting.env)=\(example)")
            } else {
                lines.append("#\(setting.env)=\(setting.defaultValue ?? "")")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// A plain listing: the variable, flag and default on one line, the help below.
    public static func listing(_ settings: [SettingDeclaration] = all) -> String {
        settings.map { setting in
            let head = [setting.env, setting.flagSpelling, "default: \(setting.shownDefault)", "used by: \(setting.usedBy)"]
                .compactMap { $0 }.joined(separator: "  ")
            return ([head] + wrapped(setting.help, width: 96).map { "    \($0)" }).joined(separator: "\n")
        }.joined(separator: "\n") + "\n"
    }

    /// `text` broken into lines of at most `width` characters at spaces.
    static func wrapped(_ text: String, width: Int) -> [String] {
        var lines: [String] = []
        var line = ""
        for word in text.split(separator: " ") {
            if !line.isEmpty && line.count + 1 + word.count > width {
                lines.append(line)
                line = ""
            }
            line += line.isEmpty ? String(word) : " \(word)"
        }
        if !line.isEmpty { lines.append(line) }
        return lines
    }
}
