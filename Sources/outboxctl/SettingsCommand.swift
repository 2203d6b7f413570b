import ArgumentParser
import OutboxRuntime

extension OutboxCtl {
    /// Every setting of the relay, the consumers and outboxctl, from their declarations; also what
    /// `docs/configuration.md` and `ops/deploy/relay.env.example` are generated from.
    struct SettingsCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "settings",
            abstract: "List every setting: variable, flag, default, who reads it, what it does (no values are read or shown).")

        enum Format: String, ExpressibleByArgument, CaseIterable {
            case text, markdown, env
        }

        @Option(help: "text (default), markdown (the table of docs/configuration.md) or env (the relay's environment file).")
        var format: Format = .text

        func run() {
            switch format {
            case .text: print(SettingCatalog.listing(), terminator: "")
            case .markdown: print(SettingCatalog.markdownTable(), terminator: "")
            case .env: print(SettingCatalog.environmentFile(), terminator: "")
            }
        }
    }
}
