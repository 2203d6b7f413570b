import Outbox
import OutboxConsole
import Testing

@Suite("Console tokens file")
struct ConsoleTokensTests {
    @Test("role:token and role:name:token lines; comments and blank lines skipped; names never the token")
    func parsing() throws {
        let tokens = try ConsoleTokens(
            parsing: "# tokens\n\nviewer:aaaaaaaaaaaaaaaaaaaa\noperator:bob:bbbbbbbbbbbbbbbb:with-colon\n", setting: "OUTBOX_CONSOLE_TOKENS_FILE")
        #expect(tokens.principal(for: "aaaaaaaaaaaaaaaaaaaa") == ConsolePrincipal(name: "viewer@3", role: .viewer))
        #expect(tokens.principal(for: "bbbbbbbbbbbbbbbb:with-colon") == ConsolePrincipal(name: "bob", role: .operator))
        #expect(tokens.principal(for: "aaaaaaaaaaaaaaaaaaa") == nil, "a prefix is not the token")
        #expect(tokens.principal(for: "") == nil)
    }

    @Test("a bad file fails naming the setting and the line, never showing a token")
    func refusals() {
        let cases: [(String, String)] = [
            ("admin:cccccccccccccccccccc", "line 1 is not role:token"),
            ("viewer:tooshort", "at least 16"),
            ("viewer:dddddddddddddddddddd\noperator:dddddddddddddddddddd", "line 2 repeats a token"),
            ("# nothing\n", "holds no token"),
        ]
        for (text, reason) in cases {
            #expect {
                try ConsoleTokens(parsing: text, setting: "OUTBOX_CONSOLE_TOKENS_FILE")
            } throws: { error in
                guard let error = error as? ConfigurationError else { return false }
                return error.setting == "OUTBOX_CONSOLE_TOKENS_FILE" && error.reason.contains(reason) && !error.reason.contains("cccc")
                    && !error.reason.contains("tooshort") && !error.reason.contains("dddd")
            }
        }
    }

    @Test("an operator may do what a viewer may")
    func roles() {
        #expect(ConsoleRole.operator > .viewer)
    }
}
