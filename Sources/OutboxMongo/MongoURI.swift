import Outbox

/// The user part of a MongoDB connection string (`mongodb://user:password@hosts/...`); the rest
/// of the URI is libmongoc's to parse.
public enum MongoURI {
    private static func split(_ uri: String) -> (head: Substring, userInfo: Substring?, tail: Substring)? {
        guard let scheme = uri.firstRange(of: "://") else { return nil }
        let rest = uri[scheme.upperBound...]
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" } ?? rest.endIndex
        guard let at = rest[..<authorityEnd].lastIndex(of: "@") else { return (uri[..<scheme.upperBound], nil, rest) }
        return (uri[..<scheme.upperBound], rest[..<at], rest[rest.index(after: at)...])
    }

    /// The decoded password in the URI, if it holds one.
    public static func password(in uri: String) -> String? {
        guard let userInfo = split(uri)?.userInfo, let colon = userInfo.firstIndex(of: ":") else { return nil }
        let encoded = userInfo[userInfo.index(after: colon)...]
        return encoded.isEmpty ? nil : String(percentDecoding: encoded) ?? String(encoded)
    }

    /// `uri` with `password` (percent-encoded) after its user name. The URI must name a user and
    /// hold no password; errors name `setting` and `uriSetting`, never the values.
    public static func withPassword(_ uri: String, _ password: String, setting: String, uriSetting: String) throws -> String {
        guard let parts = split(uri), let userInfo = parts.userInfo, !userInfo.isEmpty, !userInfo.contains(":") else {
            throw ConfigurationError(setting: setting, reason: "\(uriSetting) must name the user and hold no password (mongodb://user@host/)")
        }
        return "\(parts.head)\(userInfo):\(Secrets.percentEncoded(password))@\(parts.tail)"
    }
}
