import Foundation
import Outbox
import OutboxRuntime
import Testing

/// The settings' declarations are the one place each setting is written down: these check that
/// the declarations are consistent, and that parsing follows them.
@Suite struct SettingCatalogTests {
    @Test func everyVariableAndFlagIsDeclaredOnce() {
        let variables = SettingCatalog.all.map(\.env)
        #expect(Set(variables).count == variables.count, "a variable declared twice: \(variables)")
        for program in [SettingCatalog.relayEnvironment, SettingCatalog.links + SettingCatalog.consumers] {
            let flags = program.compactMap(\.flag)
            #expect(Set(flags).count == flags.count, "a flag used twice in one program: \(flags)")
        }
    }

    @Test func everyDefaultIsValidForItsKind() throws {
        let settings = Settings(environment: [:])
        for setting in SettingCatalog.all where setting.defaultValue != nil {
            switch setting.kind {
            case .integer: _ = try settings.int(nil, setting)
            case .duration: _ = try settings.duration(nil, setting)
            case .durationOrOff: _ = try settings.durationOrOff(nil, setting)
            case .toggle: _ = try settings.bool(nil, setting)
            case .text, .file: _ = try settings.string(nil, setting)
            }
            #expect(setting.help.contains("env \(setting.env)") && setting.help.contains("default \(setting.shownDefault)"), "\(setting.help)")
        }
    }

    @Test func parsingFollowsTheKind() throws {
        #expect(throws: ConfigurationError.self) {
            try Settings(environment: [SettingDeclaration.relayPollInterval.env: "0ms"]).duration(nil, .relayPollInterval)
        }
        #expect(try Settings(environment: [SettingDeclaration.consumerBatchWait.env: "0ms"]).duration(nil, .consumerBatchWait) == .zero)
        #expect(try Settings(environment: [:]).durationOrOff(nil, .relayDeliveredRetention) == nil, "unset stays unset")
        #expect(
            try Settings(environment: [SettingDeclaration.relayDeliveredRetention.env: "off"]).durationOrOff(nil, .relayDeliveredRetention)
                == .some(nil))
        #expect(try Settings(environment: [SettingDeclaration.relayChangeStream.env: "off"]).bool(nil, .relayChangeStream) == false)
        #expect(try Settings(environment: [SettingDeclaration.relayChangeStream.env: "off"]).bool(true, .relayChangeStream), "the flag wins")
    }

    @Test func theEnvironmentFileListsEveryRelaySettingOnce() {
        let file = SettingCatalog.environmentFile()
        for setting in SettingCatalog.relayEnvironment {
            let lines = file.split(separator: "\n").filter { $0.hasPrefix("\(setting.env)=") || $0.hasPrefix("#\(setting.env)=") }
            #expect(lines.count == 1, "\(setting.env): \(lines)")
        }
        #expect(!file.split(separator: "\n").contains { !$0.hasPrefix("#") && $0.contains("password=") })
    }
}
