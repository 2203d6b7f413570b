import Foundation
import Outbox
import OutboxMongo
import OutboxOps
import Testing

/// The console's pages in a real browser (headless Chromium through Selenium,
/// Tests/clients/console_browser.py) against the real `outboxctl console` and `outbox-relay`:
/// sign in, see a parked group, retry it, see its events delivered. Screenshots are kept in
/// .stack/test-artifacts/console.
@Suite("Operator console in a browser", .enabled(if: Servers.enabled), .timeLimit(.minutes(3)))
struct ConsoleBrowserTests {
    static let screenshots = Programs.root.appendingPathComponent(".stack/test-artifacts/console")

    @Test("sign in, see the parked group, retry it with preview and confirm, and its events are delivered")
    func retryParkedGroup() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let ids = try await f.appendEvents((0..<4).map { f.event(aggregate: "browser-\($0)") })
            let group = "exchange orders-eu not found (parked in the browser test)"
            try await f.pool.withConnection {
                try $0.collection("outbox").updateMany(
                    ["_id": ["$in": .array(ids.prefix(3).map { .string($0) })]],
                    ["$set": ["status": "parked", "lastError": .string(group), "parkedAt": .date(Date())]])
            }
            let token = "operator-\(UUID().uuidString)"
            let tokens = FileManager.default.temporaryDirectory.appendingPathComponent("console-tokens-\(UUID().uuidString)")
            try "operator:on-call:\(token)\n".write(to: tokens, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(at: tokens) }

            let relay = try Program("outbox-relay", ["--http-address", "off", "--poll-interval", "100ms"], environment: Programs.environment(f))
            defer { kill(relay.pid, SIGKILL) }
            let port = unusedPort()
            let console = try Program(
                "outboxctl", ["console", "--listen", "127.0.0.1:\(port)"],
                environment: Programs.environment(f, ["OUTBOX_CONSOLE_TOKENS_FILE": tokens.path]), label: "console")
            defer { kill(console.pid, SIGKILL) }
            #expect(await eventually { await httpGet(port: port, "/health")?.status == 200 }, "\(console.output)")
            #expect(try await eventually { try await f.count("outbox", ["status": "delivered"]) == 1 }, "the unparked one: \(relay.output)")

            let result = try await Programs.run(
                Programs.python,
                [
                    Programs.root.appendingPathComponent("Tests/clients/console_browser.py").path, "http://127.0.0.1:\(port)", token, group, ids[0],
                    Self.screenshots.path,
                ],
                environment: ["PATH": "/usr/bin:/bin", "HOME": FileManager.default.temporaryDirectory.path], timeout: .seconds(120))
            #expect(result.status == 0, "console_browser.py: \(result.errors.suffix(3000)) console: \(console.output.suffix(2000))")
            let seen = try JSONValue.parse(Array(result.output.utf8))
            #expect(seen["preview"] == .string("3 event(s) would be unparked; nothing has changed yet."), "\(result.output)")
            #expect(seen["result"] == .string("3 of 3 event(s) unparked."))
            #expect(seen["status"] == .string("delivered"))
            #expect(try await eventually { try await f.count("outbox", ["status": "delivered"]) == 4 })
            #expect(Set(try await f.admin.drain(queue).compactMap(\.messageId)) == Set(ids))
            let trail = try await AuditTrail(pool: f.pool).recent()
            #expect(trail.map(\.dryRun) == [false, true] && trail.allSatisfy { $0.actor == "on-call" && $0.via == "console page" })
            for shot in ["overview", "preview", "done", "event"] {
                #expect(FileManager.default.fileExists(atPath: Self.screenshots.appendingPathComponent("\(shot).png").path), "\(shot).png")
            }
            #expect(!console.output.contains(token), "the console never logs a token")
            #expect(await console.terminate(grace: .seconds(10)) == 0, "SIGTERM stops the console: \(console.output.suffix(1000))")
        }
    }
}
