import Synchronization

/// The passwords this process was given (in URLs or password files). Everything the programs
/// print — log lines, error and exit messages — passes through `redact`, so a password that a
/// library echoes (in an error from a driver, say) still never reaches the output.
public enum Secrets {
    private static let known = Mutex<[String]>([])

    /// Placeholder that replaces a secret.
    public static let mask = "*****"

    /// Shorter secrets are not masked in free text: masking every "guest" or every "x" would
    /// garble the output and protect nothing. URLs never show a password of any length.
    public static let minimumLength = 6

    /// Remembers `secret` (and its percent-encoded form, as it appears in URLs) for `redact`.
    public static func register(_ secret: String) {
        guard secret.count >= minimumLength else { return }
        let forms = Set([secret, percentEncoded(secret)])
        known.withLock { list in
            for form in forms where !list.contains(form) { list.append(form) }
            // Longest first, so that a secret containing another is replaced whole.
            list.sort { $0.count > $1.count }
        }
    }

    /// `text` with every registered secret replaced by `mask`.
    public static func redact(_ text: String) -> String {
        let secrets = known.withLock { $0 }
        guard !secrets.isEmpty else { return text }
        var result = text
        for secret in secrets where result.contains(secret) {
            result = result.replacing(secret, with: mask)
        }
        return result
    }

    /// A connection URI fit for output: the password in the user part and the values of query
    /// parameters whose name mentions a password are masked; with `query: false` the query and
    /// path are dropped (`mongodb://user@host:port`).
    public static func displayURI(_ uri: String, query keepQuery: Bool = true) -> String {
        guard let schemeEnd = uri.firstRange(of: "://") else { return keepQuery ? redact(uri) : mask }
        let scheme = uri[..<schemeEnd.upperBound]
        var rest = uri[schemeEnd.upperBound...]
        var tail: Substring = ""
        if let end = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) {
            tail = rest[end...]
            rest = rest[..<end]
        }
        var authority = String(rest)
        if let at = rest.lastIndex(of: "@") {
            let user = rest[..<at].split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)[0]
            authority = "\(user)@\(rest[rest.index(after: at)...])"
        }
        guard keepQuery else { return redact("\(scheme)\(authority)") }
        var shown = tail
        if let mark = tail.firstIndex(of: "?") {
            let parameters = tail[tail.index(after: mark)...].split(separator: "&", omittingEmptySubsequences: false).map { pair in
                let name = pair.split(separator: "=", maxSplits: 1)[0]
                return name.lowercased().contains("password") ? "\(name)=\(mask)" : String(pair)
            }
            shown = tail[...mark] + parameters.joined(separator: "&")
        }
        return redact("\(scheme)\(authority)\(shown)")
    }

    /// Percent-encoding as URLs' user parts need it: everything but letters, digits and `-._~`.
    public static func percentEncoded(_ text: String) -> String {
        var result = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                result.unicodeScalars.append(UnicodeScalar(byte))
            default:
                result += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return result
    }
}
