/// One outbox a relay serves: a collection in a database. Its name, `database.collection`, is how
/// settings, logs and the `source` label of the metrics name it.
public struct OutboxSource: Sendable, Hashable, CustomStringConvertible {
    public var database: String
    public var collection: String

    public init(database: String, collection: String) {
        self.database = database
        self.collection = collection
    }

    /// `database.collection`.
    public var description: String { "\(database).\(collection)" }

    /// The most sources one relay serves: each has its own connections, leases and loop, and the
    /// metrics' `source` label stays bounded.
    public static let limit = 64

    /// One entry, `database.collection`: the first dot splits (a collection name may hold dots,
    /// a database name may not). Errors name `setting`.
    public init(parsing entry: String, setting: String) throws {
        let text = entry.trimmingSpaces
        guard let dot = text.firstIndex(of: ".") else {
            throw ConfigurationError(setting: setting, reason: "'\(text)' is not database.collection")
        }
        let (database, collection) = (String(text[..<dot]), String(text[text.index(after: dot)...]))
        try Self.checkDatabase(database, setting: setting)
        guard !collection.isEmpty, !collection.hasPrefix("system."), !collection.contains("$"), !collection.contains("\0"),
            (database.utf8.count + collection.utf8.count) < 255
        else {
            throw ConfigurationError(setting: setting, reason: "'\(collection)' in '\(text)' is not a valid collection name")
        }
        self.init(database: database, collection: collection)
    }

    /// A database name MongoDB accepts: no `/\. "$`, shorter than 64 bytes, not empty.
    public static func checkDatabase(_ name: String, setting: String) throws {
        guard !name.isEmpty, !name.contains(where: { "/\\. \"$\0".contains($0) }), name.utf8.count < 64 else {
            throw ConfigurationError(setting: setting, reason: "'\(name)' is not a valid database name")
        }
    }

    /// A comma-separated list of entries: at least one, none twice, at most `limit`, and at most
    /// one a database (a database keeps one set of partition leases, `outbox_leases`).
    public static func parseList(_ text: String, setting: String) throws -> [OutboxSource] {
        let entries = text.split(separator: ",").map { String($0).trimmingSpaces }.filter { !$0.isEmpty }
        guard !entries.isEmpty else { throw ConfigurationError(setting: setting, reason: "names no source (database.collection, …)") }
        guard entries.count <= limit else {
            throw ConfigurationError(setting: setting, reason: "names \(entries.count) sources; a relay serves at most \(limit)")
        }
        var sources: [OutboxSource] = []
        var databases: [String: OutboxSource] = [:]
        for entry in entries {
            let source = try OutboxSource(parsing: entry, setting: setting)
            if let earlier = databases[source.database] {
                let reason =
                    earlier == source
                    ? "names \(source) twice"
                    : "names two collections of the database \(source.database) (\(earlier.collection), \(source.collection)); "
                        + "a database holds one outbox, as its partition leases (outbox_leases) serve one collection"
                throw ConfigurationError(setting: setting, reason: reason)
            }
            databases[source.database] = source
            sources.append(source)
        }
        return sources
    }
}

extension String {
    fileprivate var trimmingSpaces: String {
        String(self.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
