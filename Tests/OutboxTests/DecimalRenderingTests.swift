import Foundation
import Outbox
import OutboxConsumer
import Testing

@testable import OutboxMongo

@Suite("Wire formats: decimals")
struct DecimalRenderingTests {
    @Test("Decimal128 as a number literal keeps its exact digits; NaN and infinities stay strings")
    func numbers() throws {
        let cases: [(String, String)] = [
            ("44.99", "44.99"), ("0.10", "0.10"), ("-3", "-3"), ("1234567890123456789012345678901234", "1234567890123456789012345678901234"),
            ("0.000000001", "1E-9"), ("1.5E+40", "1.5E+40"), ("-0", "-0"),
        ]
        for (input, literal) in cases {
            let value = BSON.decimal128(Decimal128(input)!)
            #expect(ExtendedJSON.render(value, decimals: .number) == literal)
            #expect(ExtendedJSON.render(value) == "\"\(literal)\"")
            // What a consumer parses is the same number, digit for digit.
            #expect(try JSONValue.parse(Array(literal.utf8)) == .number(literal))
        }
        let nan = Decimal128(low: 0, high: 0x7C00_0000_0000_0000)
        let infinity = Decimal128(low: 0, high: 0x7800_0000_0000_0000)
        let negativeInfinity = Decimal128(low: 0, high: 0xF800_0000_0000_0000)
        #expect(
            ExtendedJSON.render(["a": .decimal128(nan), "b": .decimal128(infinity), "c": .decimal128(negativeInfinity)], decimals: .number)
                == #"{"a":"NaN","b":"Infinity","c":"-Infinity"}"#)
        // Other types are not touched by the setting.
        #expect(ExtendedJSON.render(["d": 1.5, "i": .int64(7), "s": "44.99"], decimals: .number) == #"{"d":1.5,"i":7,"s":"44.99"}"#)
    }
}
