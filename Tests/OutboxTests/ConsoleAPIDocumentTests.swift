import Foundation
import OutboxConsole
import Testing

@Suite("The console's OpenAPI document")
struct ConsoleAPIDocumentTests {
    static let document: String = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return (try? String(contentsOf: root.appendingPathComponent("docs/console-api.yaml"), encoding: .utf8)) ?? ""
    }()

    @Test("docs/console-api.yaml describes every route of the API, each action included")
    func everyRoute() {
        let reads = ["status", "backlog", "events", "events/{id}", "groups", "audit", "dead-letters"]
        let actions = ConsoleAction.allCases.map { "events/\($0.rawValue)" } + DeadLetterAction.allCases.map { "dead-letters/\($0.rawValue)" }
        for path in reads + actions {
            #expect(Self.document.contains("\n  /api/\(path):\n"), "docs/console-api.yaml has no /api/\(path)")
        }
    }
}
