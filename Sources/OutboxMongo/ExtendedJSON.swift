import Foundation
import Outbox

/// Renders BSON as the plain JSON that consumers read: ObjectIds as hex strings, dates as
/// ISO 8601 strings, Decimal128 as decimal strings or, with `decimals: .number`, as JSON number
/// literals with the same digits (exact either way, never through a binary float).
public enum ExtendedJSON {
    public static func render(_ value: BSON, decimals: DecimalFormat = .string) -> String {
        String(decoding: renderBytes(value, decimals: decimals), as: UTF8.self)
    }

    public static func renderBytes(_ document: Document, decimals: DecimalFormat = .string) -> [UInt8] {
        renderBytes(.document(document), decimals: decimals)
    }

    public static func renderBytes(_ value: BSON, decimals: DecimalFormat = .string) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(value, into: &out, decimals: decimals)
        return out
    }

    static func write(_ value: BSON, into out: inout [UInt8], decimals: DecimalFormat = .string) {
        switch value {
        case .double(let v):
            out += Array((v.isFinite ? (v.rounded() == v && abs(v) < 1e15 ? String(Int64(v)) : String(v)) : "null").utf8)
        case .string(let s): writeString(s, into: &out)
        case .document(let d):
            out.append(UInt8(ascii: "{"))
            for (index, field) in d.fields.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                writeString(field.key, into: &out)
                out.append(UInt8(ascii: ":"))
                write(field.value, into: &out, decimals: decimals)
            }
            out.append(UInt8(ascii: "}"))
        case .array(let a):
            out.append(UInt8(ascii: "["))
            for (index, element) in a.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                write(element, into: &out, decimals: decimals)
            }
            out.append(UInt8(ascii: "]"))
        case .binary(_, let bytes): writeString(Data(bytes).base64EncodedString(), into: &out)
        case .objectId(let oid): writeString(oid.hex, into: &out)
        case .bool(let b): out += Array((b ? "true" : "false").utf8)
        case .datetime(let ms): writeString(iso8601(milliseconds: ms), into: &out)
        case .null, .minKey, .maxKey: out += Array("null".utf8)
        case .regex(let pattern, _): writeString(pattern, into: &out)
        case .int32(let v): out += Array(String(v).utf8)
        case .timestamp(_, let seconds): out += Array(String(seconds).utf8)
        case .int64(let v): out += Array(String(v).utf8)
        case .decimal128(let d):
            let text = d.description
            if decimals == .number, isJSONNumber(text) {
                out += Array(text.utf8)
            } else {
                writeString(text, into: &out)
            }
        }
    }

    /// Whether `text` is a JSON number literal (RFC 8259). libbson writes every finite Decimal128
    /// as one (`44.99`, `-0`, `1.5E+40`); `NaN`, `Infinity` and `-Infinity` are not.
    static func isJSONNumber(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        var i = 0
        func digits() -> Int {
            let start = i
            while i < bytes.count, bytes[i] >= UInt8(ascii: "0"), bytes[i] <= UInt8(ascii: "9") { i += 1 }
            return i - start
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "-") { i += 1 }
        if i < bytes.count, bytes[i] == UInt8(ascii: "0") {
            i += 1
        } else if digits() == 0 {
            return false
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            guard digits() > 0 else { return false }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard digits() > 0 else { return false }
        }
        return i == bytes.count
    }

    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    /// A JSON string literal; UTF-8 bytes pass through, only quotes, backslashes and control
    /// characters are escaped.
    static func writeString(_ s: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in s.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0x0A: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case 0x0D: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case 0x09: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0..<0x20:
                out += [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// `2026-11-26T18:04:05.123Z`
    public static func iso8601(milliseconds ms: Int64) -> String {
        let seconds = ms.quotientAndRemainder(dividingBy: 1000)
        var whole = seconds.quotient
        var millis = seconds.remainder
        if millis < 0 {
            whole -= 1
            millis += 1000
        }
        var t = time_t(whole)
        var parts = tm()
        gmtime_r(&t, &parts)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(millis), 3))Z"
    }
}
