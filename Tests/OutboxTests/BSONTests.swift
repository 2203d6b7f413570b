import Foundation
import Testing

@testable import OutboxMongo

@Suite("BSON")
struct BSONTests {
    @Test("round trip of every supported type, nested")
    func roundTrip() throws {
        let oid = ObjectId()
        let document: Document = [
            "double": 1.5, "string": "héllo \"quoted\"", "int32": .int32(-7), "int64": .int64(Int64.max),
            "bool": true, "null": nil, "oid": .objectId(oid), "date": .datetime(1_764_180_000_123),
            "money": .decimal128(Decimal128("12.50")!), "binary": .binary(subtype: 4, bytes: Array(0..<16)),
            "timestamp": .timestamp(increment: 3, seconds: 1_700_000_000), "regex": .regex(pattern: "^a", options: "i"),
            "nested": ["items": [["sku": "A", "quantity": 2], ["sku": "B", "quantity": .int32(1)]], "empty": [:]],
            "array": [1, "two", [3.0]], "min": .minKey, "max": .maxKey,
        ]
        let bytes = document.bsonBytes()
        let decoded = try Document(bsonBytes: bytes)
        #expect(decoded == document)
        #expect(decoded.keys == document.keys)
        #expect(decoded.bsonBytes() == bytes)
    }

    @Test("round trip through a libbson bson_t")
    func throughLibbson() throws {
        let document: Document = ["a": 1, "b": ["c": .decimal128(Decimal128("-0.001")!)]]
        let copy = try document.withBSONPointer { try Document(copying: $0) }
        #expect(copy == document)
    }

    @Test("Decimal128 keeps exact decimal text and rejects non-numbers")
    func decimal128() throws {
        for text in ["0.10", "12.50", "-3", "1234567890123456789012345678901234", "0.0001"] {
            #expect(Decimal128(text)?.description == text)
        }
        for bad in ["abc", "NaN", "Infinity", "-inf", "1.2.3", ""] {
            #expect(Decimal128(bad) == nil, "\(bad) must be rejected")
        }
        #expect(Decimal128("0.1")!.decimal! + Decimal128("0.2")!.decimal! == Decimal(string: "0.3")!)
    }

    @Test("ObjectId hex round trip and ordering")
    func objectId() throws {
        let a = ObjectId()
        let b = ObjectId()
        #expect(ObjectId(a.hex) == a)
        #expect(a < b)
        #expect(ObjectId("zz") == nil)
        #expect(ObjectId(String(repeating: "g", count: 24)) == nil)
    }

    @Test("truncated or corrupt bytes are errors, not crashes")
    func corrupt() throws {
        let document: Document = ["a": "hello", "b": ["c": 1]]
        let bytes = document.bsonBytes()
        for cut in [0, 3, 4, 10, bytes.count - 1] {
            #expect(throws: BSONError.self) { try Document(bsonBytes: Array(bytes.prefix(cut))) }
        }
        var badType = bytes
        badType[4] = 0x42
        #expect(throws: BSONError.self) { try Document(bsonBytes: badType) }
    }

    @Test("JSON rendering: decimals and ids as strings, dates ISO 8601, escapes")
    func json() {
        let document: Document = [
            "id": .objectId(ObjectId("6745a1b2c3d4e5f601234567")!), "total": .decimal128(Decimal128("25.00")!),
            "at": .datetime(0), "n": .int64(3), "s": "a\"b\n\u{1}",
        ]
        #expect(
            ExtendedJSON.render(.document(document))
                == #"{"id":"6745a1b2c3d4e5f601234567","total":"25.00","at":"1970-01-01T00:00:00.000Z","n":3,"s":"a\"b\n\u0001"}"#)
    }
}
