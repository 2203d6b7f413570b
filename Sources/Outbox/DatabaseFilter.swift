/// Which databases source discovery looks in: comma-separated name patterns, `*` matching any
/// run of characters; a pattern starting with `!` excludes. A name is taken when it matches an
/// including pattern (none given: every name) and no excluding one. MongoDB's own databases
/// (`admin`, `config`, `local`) are never taken.
public struct DatabaseFilter: Sendable, Equatable, CustomStringConvertible {
    public let include: [String]
    public let exclude: [String]

    public static let system: Set<String> = ["admin", "config", "local"]

    /// `shop-*,!shop-test`; errors name `setting`.
    public init(parsing text: String, setting: String) throws {
        var include: [String] = []
        var exclude: [String] = []
        for part in text.split(separator: ",") {
            let pattern = part.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            guard !pattern.isEmpty else { continue }
            let excluding = pattern.hasPrefix("!")
            let name = excluding ? String(pattern.dropFirst()) : pattern
            guard !name.isEmpty, !name.contains(where: { "/\\. \"$".contains($0) }) else {
                throw ConfigurationError(setting: setting, reason: "'\(pattern)' is not a database name pattern (letters, digits, - _ and *)")
            }
            if excluding { exclude.append(name) } else { include.append(name) }
        }
        self.include = include
        self.exclude = exclude
    }

    public var description: String { (include + exclude.map { "!" + $0 }).joined(separator: ",") }

    /// Whether discovery looks in the database `name`.
    public func takes(_ name: String) -> Bool {
        guard !Self.system.contains(name) else { return false }
        guard include.isEmpty || include.contains(where: { Self.matches(name, $0) }) else { return false }
        return !exclude.contains { Self.matches(name, $0) }
    }

    /// `*` matches any run of characters, everything else itself.
    static func matches(_ name: String, _ pattern: String) -> Bool {
        let pieces = pattern.split(separator: "*", omittingEmptySubsequences: false).map(String.init)
        guard pieces.count > 1 else { return name == pattern }
        var rest = Substring(name)
        guard rest.hasPrefix(pieces[0]) else { return false }
        rest = rest.dropFirst(pieces[0].count)
        for piece in pieces.dropFirst().dropLast() where !piece.isEmpty {
            guard let range = rest.firstRange(of: piece) else { return false }
            rest = rest[range.upperBound...]
        }
        let last = pieces[pieces.count - 1]
        return rest.count >= last.count && rest.hasSuffix(last)
    }
}
