import Foundation
import Testing

/// Settings the relay refuses at start, naming the setting, before it touches any server.
@Suite("Relay start-up checks", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct RelayStartTests {
    @Test(
        "a zero poll interval or confirm timeout fails the start (exit 78), naming the setting",
        arguments: [
            ("RELAY_POLL_INTERVAL", "0ms", "RELAY_POLL_INTERVAL (--poll-interval)"),
            ("RELAY_CONFIRM_TIMEOUT", "0s", "RELAY_CONFIRM_TIMEOUT (--confirm-timeout)"),
            ("RELAY_LEASE_TTL", "0ms", "RELAY_LEASE_TTL (--lease-ttl)"),
        ])
    func zeroDurations(variable: String, value: String, setting: String) async throws {
        try await Fixture.with { f in
            var environment = Programs.environment(f)
            environment[variable] = value
            let result = try await Programs.product("outbox-relay", ["--http-address", "off", "--exit-when-idle"], environment: environment)
            #expect(result.status == 78)
            #expect(result.errors.contains(setting) && result.errors.contains("more than 0"), "\(result.errors)")
        }
    }
}
