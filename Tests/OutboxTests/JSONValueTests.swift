import Foundation
import Outbox
import Testing

@Suite("JSON parser")
struct JSONValueTests {
    @Test("keeps number text, decodes escapes and surrogates")
    func parse() throws {
        let value = try JSONValue.parse(Array(#"{"a":[1,2.50,-0.1e3],"s":"\u00e9\ud83d\ude00\n","t":true,"n":null}"#.utf8))
        #expect(value["a"] == .array([.number("1"), .number("2.50"), .number("-0.1e3")]))
        #expect(value["s"] == .string("é😀\n"))
        #expect(value["t"] == .bool(true))
        #expect(value["n"] == .null)
    }

    @Test("rejects malformed input", arguments: ["", "{", "[1,]", "01", "1.", "\"\\x\"", "{\"a\" 1}", "[1] x", "\"\u{1}\"", "nul"])
    func malformed(text: String) {
        #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse(Array(text.utf8)) }
    }

    @Test("deep nesting is refused, not a stack overflow")
    func deep() {
        let text = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse(Array(text.utf8)) }
    }
}
