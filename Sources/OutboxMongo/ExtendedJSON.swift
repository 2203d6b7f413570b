import Foundation

/// Renders BSON as the plain JSON that consumers read: ObjectIds as hex strings, dates as
/// ISO 8601 strings, Decimal128 as decimal strings (exact, never a binary float).
public enum ExtendedJSON {
    public static func render(_ value: BSON) -> String {
        var out = ""
        write(value, into: &out)
        return out
    }

    public static func renderBytes(_ document: Document) -> [UInt8] {
        Array(render(.document(document)).utf8)
    }

    static func write(_ value: BSON, into out: inout String) {
        switch value {
        case .double(let v):
            out += v.isFinite ? (v.rounded() == v && abs(v) < 1e15 ? String(Int64(v)) : String(v)) : "null"
        case .string(let s): writeString(s, into: &out)
        case .document(let d):
            out += "{"
            for (index, field) in d.fields.enumerated() {
                if index > 0 { out += "," }
                writeString(field.key, into: &out)
                out += ":"
                write(field.value, into: &out)
            }
            out += "}"
        case .array(let a):
            out += "["
            for (index, element) in a.enumerated() {
                if index > 0 { out += "," }
                write(element, into: &out)
            }
            out += "]"
        case .binary(_, let bytes): writeString(Data(bytes).base64EncodedString(), into: &out)
        case .objectId(let oid): writeString(oid.hex, into: &out)
        case .bool(let b): out += b ? "true" : "false"
        case .datetime(let ms): writeString(iso8601(milliseconds: ms), into: &out)
        case .null, .minKey, .maxKey: out += "null"
        case .regex(let pattern, _): writeString(pattern, into: &out)
        case .int32(let v): out += String(v)
        case .timestamp(_, let seconds): out += String(seconds)
        case .int64(let v): out += String(v)
        case .decimal128(let d): writeString(d.description, into: &out)
        }
    }

    static func writeString(_ s: String, into out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count)
                    + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
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
