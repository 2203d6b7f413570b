import CMongoC
import Foundation

/// A BSON value. Documents keep their field order, as MongoDB does.
public enum BSON: Sendable, Hashable {
    case double(Double)
    case string(String)
    case document(Document)
    case array([BSON])
    case binary(subtype: UInt8, bytes: [UInt8])
    case objectId(ObjectId)
    case bool(Bool)
    /// Milliseconds since the Unix epoch (BSON UTC datetime).
    case datetime(Int64)
    case null
    case regex(pattern: String, options: String)
    case int32(Int32)
    case timestamp(increment: UInt32, seconds: UInt32)
    case int64(Int64)
    case decimal128(Decimal128)
    case minKey
    case maxKey

    public static func date(_ date: Date) -> BSON {
        .datetime(Int64((date.timeIntervalSince1970 * 1000).rounded(.down)))
    }

    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var documentValue: Document? { if case .document(let d) = self { return d } else { return nil } }
    public var arrayValue: [BSON]? { if case .array(let a) = self { return a } else { return nil } }
    public var objectIdValue: ObjectId? { if case .objectId(let o) = self { return o } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var decimalValue: Decimal128? { if case .decimal128(let d) = self { return d } else { return nil } }

    /// Any integral number (int32, int64, or a double without fraction) as Int.
    public var intValue: Int? {
        switch self {
        case .int32(let v): return Int(v)
        case .int64(let v): return Int(v)
        case .double(let v) where v.rounded() == v && abs(v) < 9.0e15: return Int(v)
        default: return nil
        }
    }

    public var dateValue: Date? {
        if case .datetime(let ms) = self { return Date(timeIntervalSince1970: Double(ms) / 1000) }
        return nil
    }
}

extension BSON: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByFloatLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    /// Integer literals become int64 so counters never overflow silently.
    public init(integerLiteral value: Int) { self = .int64(Int64(value)) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(arrayLiteral elements: BSON...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, BSON)...) { self = .document(Document(elements)) }
    public init(nilLiteral: ()) { self = .null }
}

/// An ordered BSON document.
public struct Document: Sendable, Hashable, ExpressibleByDictionaryLiteral, CustomStringConvertible {
    public private(set) var fields: [(key: String, value: BSON)]

    public init() { fields = [] }
    public init(_ pairs: [(String, BSON)]) { fields = pairs.map { (key: $0.0, value: $0.1) } }
    public init(dictionaryLiteral elements: (String, BSON)...) { self.init(elements) }

    public var keys: [String] { fields.map(\.key) }
    public var isEmpty: Bool { fields.isEmpty }
    public var count: Int { fields.count }

    /// Reading a missing key gives nil; assigning nil removes the key; assigning keeps position.
    public subscript(key: String) -> BSON? {
        get { fields.first(where: { $0.key == key })?.value }
        set {
            if let index = fields.firstIndex(where: { $0.key == key }) {
                if let newValue { fields[index].value = newValue } else { fields.remove(at: index) }
            } else if let newValue {
                fields.append((key: key, value: newValue))
            }
        }
    }

    /// This document with the fields of `other` added after its own (or replacing them in place).
    public func merging(_ other: Document) -> Document {
        var merged = self
        for (key, value) in other.fields { merged[key] = value }
        return merged
    }

    public static func == (lhs: Document, rhs: Document) -> Bool {
        lhs.fields.count == rhs.fields.count
            && zip(lhs.fields, rhs.fields).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }

    public func hash(into hasher: inout Hasher) {
        for field in fields {
            hasher.combine(field.key)
            hasher.combine(field.value)
        }
    }

    public var description: String { ExtendedJSON.render(.document(self)) }
}

/// A 12-byte MongoDB ObjectId.
public struct ObjectId: Sendable, Hashable, CustomStringConvertible, Comparable {
    public let bytes: [UInt8]

    public init() {
        var oid = bson_oid_t()
        bson_oid_init(&oid, nil)
        bytes = withUnsafeBytes(of: &oid.bytes) { Array($0) }
    }

    public init?(bytes: [UInt8]) {
        guard bytes.count == 12 else { return nil }
        self.bytes = bytes
    }

    /// A new ObjectId whose time is `time` (rather than this machine's clock), e.g. the
    /// database's: it sorts by that time, and within one second in the order made here.
    public init(time: Date) {
        var bytes = ObjectId().bytes
        let seconds = UInt32(clamping: Int64(time.timeIntervalSince1970.rounded(.down)))
        bytes.replaceSubrange(0..<4, with: withUnsafeBytes(of: seconds.bigEndian) { Array($0) })
        self.bytes = bytes
    }

    public init?(_ hex: String) {
        guard hex.utf8.count == 24 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(12)
        var iterator = hex.utf8.makeIterator()
        while let high = iterator.next(), let low = iterator.next() {
            guard let h = hexNibble(high), let l = hexNibble(low) else { return nil }
            out.append(h << 4 | l)
        }
        bytes = out
    }

    public var hex: String {
        var s = ""
        s.reserveCapacity(24)
        for b in bytes {
            s.append(hexDigits[Int(b >> 4)])
            s.append(hexDigits[Int(b & 0xF)])
        }
        return s
    }

    public var description: String { hex }

    /// Seconds since the epoch encoded in the first four bytes.
    public var timestamp: Date {
        let seconds = bytes[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        return Date(timeIntervalSince1970: Double(seconds))
    }

    public static func < (lhs: ObjectId, rhs: ObjectId) -> Bool { lhs.bytes.lexicographicallyPrecedes(rhs.bytes) }
}

private let hexDigits: [Character] = Array("0123456789abcdef")

private func hexNibble(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
    default: return nil
    }
}

/// IEEE 754-2008 decimal128, the BSON type for exact money amounts.
public struct Decimal128: Sendable, Hashable, CustomStringConvertible {
    public let low: UInt64
    public let high: UInt64

    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// Parses a decimal string such as "12.50"; nil when it is not a finite decimal number.
    public init?(_ string: String) {
        // libbson also accepts NaN and Infinity, which no amount ever is.
        let lowered = string.lowercased()
        guard !lowered.contains("nan"), !lowered.contains("inf") else { return nil }
        var value = bson_decimal128_t()
        guard bson_decimal128_from_string(string, &value) else { return nil }
        self.init(low: value.low, high: value.high)
    }

    public init(_ decimal: Decimal) {
        // Decimal's description is plain decimal notation, which libbson always parses.
        self.init(decimal.description)!
    }

    public var description: String {
        var value = bson_decimal128_t(low: low, high: high)
        var buffer = [CChar](repeating: 0, count: Int(BSON_DECIMAL128_STRING))
        bson_decimal128_to_string(&value, &buffer)
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// Exact value as a Foundation Decimal (base-10, no binary rounding).
    public var decimal: Decimal? { Decimal(string: description, locale: Locale(identifier: "en_US_POSIX")) }
}

public struct BSONError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

// MARK: - Binary encoding

extension Document {
    /// The document's BSON bytes.
    public func bsonBytes() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        BSONWriter.writeDocument(self, into: &out)
        return out
    }

    /// Decodes BSON bytes, validating lengths and types.
    public init(bsonBytes bytes: UnsafeRawBufferPointer) throws {
        var reader = BSONReader(bytes: bytes)
        self = try reader.readDocument()
        guard reader.offset == bytes.count else { throw BSONError("trailing bytes after document") }
    }

    public init(bsonBytes bytes: [UInt8]) throws {
        self = try bytes.withUnsafeBytes { try Document(bsonBytes: $0) }
    }
}

enum BSONWriter {
    static func writeDocument(_ document: Document, into out: inout [UInt8]) {
        let start = out.count
        append(Int32(0), to: &out)
        for (key, value) in document.fields {
            writeElement(key: key, value: value, into: &out)
        }
        out.append(0)
        patchLength(at: start, in: &out)
    }

    static func writeArray(_ array: [BSON], into out: inout [UInt8]) {
        let start = out.count
        append(Int32(0), to: &out)
        for (index, value) in array.enumerated() {
            writeElement(key: String(index), value: value, into: &out)
        }
        out.append(0)
        patchLength(at: start, in: &out)
    }

    static func writeElement(key: String, value: BSON, into out: inout [UInt8]) {
        out.append(typeByte(value))
        writeCString(key, into: &out)
        switch value {
        case .double(let v): append(v.bitPattern, to: &out)
        case .string(let s): writeString(s, into: &out)
        case .document(let d): writeDocument(d, into: &out)
        case .array(let a): writeArray(a, into: &out)
        case .binary(let subtype, let bytes):
            append(Int32(bytes.count), to: &out)
            out.append(subtype)
            out.append(contentsOf: bytes)
        case .objectId(let oid): out.append(contentsOf: oid.bytes)
        case .bool(let b): out.append(b ? 1 : 0)
        case .datetime(let ms): append(ms, to: &out)
        case .null, .minKey, .maxKey: break
        case .regex(let pattern, let options):
            writeCString(pattern, into: &out)
            writeCString(options, into: &out)
        case .int32(let v): append(v, to: &out)
        case .timestamp(let increment, let seconds):
            append(increment, to: &out)
            append(seconds, to: &out)
        case .int64(let v): append(v, to: &out)
        case .decimal128(let d):
            append(d.low, to: &out)
            append(d.high, to: &out)
        }
    }

    static func typeByte(_ value: BSON) -> UInt8 {
        switch value {
        case .double: 0x01
        case .string: 0x02
        case .document: 0x03
        case .array: 0x04
        case .binary: 0x05
        case .objectId: 0x07
        case .bool: 0x08
        case .datetime: 0x09
        case .null: 0x0A
        case .regex: 0x0B
        case .int32: 0x10
        case .timestamp: 0x11
        case .int64: 0x12
        case .decimal128: 0x13
        case .minKey: 0xFF
        case .maxKey: 0x7F
        }
    }

    static func writeCString(_ s: String, into out: inout [UInt8]) {
        // Keys and regexes cannot hold NUL; cut at the first one rather than write a corrupt document.
        for byte in s.utf8 {
            if byte == 0 { break }
            out.append(byte)
        }
        out.append(0)
    }

    static func writeString(_ s: String, into out: inout [UInt8]) {
        let utf8 = s.utf8
        append(Int32(utf8.count + 1), to: &out)
        out.append(contentsOf: utf8)
        out.append(0)
    }

    static func append<T: FixedWidthInteger>(_ value: T, to out: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { out.append(contentsOf: $0) }
    }

    static func patchLength(at start: Int, in out: inout [UInt8]) {
        let length = Int32(out.count - start).littleEndian
        withUnsafeBytes(of: length) { raw in
            for i in 0..<4 { out[start + i] = raw[i] }
        }
    }
}

struct BSONReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    mutating func readDocument() throws -> Document {
        var fields: [(String, BSON)] = []
        try readElements { key, value in fields.append((key, value)) }
        return Document(fields)
    }

    mutating func readArray() throws -> [BSON] {
        var values: [BSON] = []
        try readElements { _, value in values.append(value) }
        return values
    }

    private mutating func readElements(_ body: (String, BSON) -> Void) throws {
        let start = offset
        let length = Int(try read(Int32.self))
        guard length >= 5, start + length <= bytes.count else { throw BSONError("bad document length \(length)") }
        let end = start + length
        while offset < end - 1 {
            let type = try readByte()
            let key = try readCString()
            body(key, try readValue(type: type))
        }
        guard offset == end - 1, try readByte() == 0 else { throw BSONError("document not terminated") }
    }

    private mutating func readValue(type: UInt8) throws -> BSON {
        switch type {
        case 0x01: return .double(Double(bitPattern: try read(UInt64.self)))
        case 0x02: return .string(try readString())
        case 0x03: return .document(try readDocument())
        case 0x04: return .array(try readArray())
        case 0x05:
            let count = Int(try read(Int32.self))
            let subtype = try readByte()
            guard count >= 0 else { throw BSONError("negative binary length") }
            return .binary(subtype: subtype, bytes: try readBytes(count))
        case 0x07: return .objectId(ObjectId(bytes: try readBytes(12))!)
        case 0x08: return .bool(try readByte() != 0)
        case 0x09: return .datetime(try read(Int64.self))
        case 0x0A, 0x06: return .null
        case 0x0B: return .regex(pattern: try readCString(), options: try readCString())
        case 0x10: return .int32(try read(Int32.self))
        case 0x11:
            let increment = try read(UInt32.self)
            return .timestamp(increment: increment, seconds: try read(UInt32.self))
        case 0x12: return .int64(try read(Int64.self))
        case 0x13:
            let low = try read(UInt64.self)
            return .decimal128(Decimal128(low: low, high: try read(UInt64.self)))
        case 0xFF: return .minKey
        case 0x7F: return .maxKey
        default: throw BSONError("unsupported BSON type 0x\(String(type, radix: 16))")
        }
    }

    private mutating func readByte() throws -> UInt8 {
        guard offset < bytes.count else { throw BSONError("unexpected end of BSON") }
        defer { offset += 1 }
        return bytes[offset]
    }

    private mutating func readBytes(_ count: Int) throws -> [UInt8] {
        guard count >= 0, offset + count <= bytes.count else { throw BSONError("unexpected end of BSON") }
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    private mutating func read<T: FixedWidthInteger>(_: T.Type) throws -> T {
        let size = MemoryLayout<T>.size
        guard offset + size <= bytes.count else { throw BSONError("unexpected end of BSON") }
        defer { offset += size }
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    private mutating func readCString() throws -> String {
        guard let end = bytes[offset...].firstIndex(of: 0) else { throw BSONError("unterminated key") }
        defer { offset = end + 1 }
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[offset..<end]), as: UTF8.self)
    }

    private mutating func readString() throws -> String {
        let length = Int(try read(Int32.self))
        guard length >= 1, offset + length <= bytes.count, bytes[offset + length - 1] == 0 else {
            throw BSONError("bad string length")
        }
        defer { offset += length }
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + length - 1]), as: UTF8.self)
    }
}

// MARK: - bson_t bridging

/// Owns a heap `bson_t` built from a Document for the duration of a C call.
extension Document {
    /// Lends a `bson_t` holding this document to `body`; it is destroyed afterwards.
    public func withBSONPointer<R>(_ body: (OpaquePointer) throws -> R) rethrows -> R {
        let bytes = bsonBytes()
        let bson = bytes.withUnsafeBufferPointer { outbox_bson_new_from_data($0.baseAddress, $0.count) }!
        defer { bson_destroy(bson) }
        return try body(bson)
    }

    /// Copies a `bson_t` the caller still owns into a Swift document.
    public init(copying bson: OpaquePointer) throws {
        var length: UInt32 = 0
        let data = outbox_bson_data(bson, &length)!
        self = try Document(bsonBytes: UnsafeRawBufferPointer(start: data, count: Int(length)))
    }
}

/// Lends an optional document's `bson_t` (nil when the document is nil).
func withOptionalBSONPointer<R>(_ document: Document?, _ body: (OpaquePointer?) throws -> R) rethrows -> R {
    guard let document else { return try body(nil) }
    return try document.withBSONPointer { try body($0) }
}
