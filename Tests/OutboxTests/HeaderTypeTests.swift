import Outbox
import Testing

@testable import OutboxMongo

/// The header types a writer's document can say, read from BSON and written back.
@Suite("Header values of every type")
struct HeaderTypeTests {
    @Test("a Decimal128's text as AMQP's decimal: scale and a 32-bit value, or nil when it does not fit")
    func amqpDecimal() {
        #expect(OutboxDocument.amqpDecimal("12.50")! == (2, 1250))
        #expect(OutboxDocument.amqpDecimal("-3E-2")! == (2, -3))
        #expect(OutboxDocument.amqpDecimal("1.2E+3")! == (0, 1200))
        #expect(OutboxDocument.amqpDecimal("0.000")! == (3, 0))
        #expect(OutboxDocument.amqpDecimal("2147483647")! == (0, Int32.max))
        #expect(OutboxDocument.amqpDecimal("2147483648") == nil)
        #expect(OutboxDocument.amqpDecimal("1234567890.5") == nil)
        #expect(OutboxDocument.amqpDecimal("NaN") == nil)
        #expect(OutboxDocument.amqpDecimal("-Infinity") == nil)
    }

    @Test("BSON → header → BSON keeps every type; dates keep whole seconds; other types name their path")
    func roundTrip() throws {
        let document: Document = [
            "s": "text", "i": .int64(42), "b": true, "d": .double(2.5), "dec": .decimal128(Decimal128("12.50")!),
            "doc": ["k": "v", "list": [1, "two"]],
        ]
        for (key, value) in document.fields {
            let header = try OutboxDocument.header(value, path: key).get()
            #expect(OutboxDocument.bson(header: header) == value, "\(key)")
        }
        #expect(try OutboxDocument.header(.datetime(1_700_000_000_999), path: "t").get() == .timestamp(1_700_000_000))
        #expect(try OutboxDocument.header(.datetime(-1), path: "t").get() == .timestamp(-1), "before 1970: the second it falls in")
        guard case .failure(let failure) = OutboxDocument.header(["id": .null], path: "headers.tenant") else {
            Issue.record("a null header was taken")
            return
        }
        #expect(failure.reason.hasPrefix("headers.tenant.id must be"))
    }
}
