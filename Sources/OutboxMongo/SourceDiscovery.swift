import Outbox

/// Finds the outboxes of a cluster: every database the filter takes that holds a collection of
/// the given name (`outboxctl`'s and the relay's `--discover-collection`).
public struct SourceDiscovery: Sendable {
    public let collection: String
    public let databases: DatabaseFilter

    public init(collection: String, databases: DatabaseFilter) {
        self.collection = collection
        self.databases = databases
    }

    /// The sources found now, by database name. Two commands a database plus one for the list:
    /// cheap next to a relay's polling.
    public func find(on pool: MongoClientPool) async throws -> [OutboxSource] {
        let (collection, databases) = (collection, databases)
        return try await pool.withConnection { connection in
            let listed = try connection.runCommand(["listDatabases": 1, "nameOnly": true], database: "admin")
            let names = (listed["databases"]?.arrayValue ?? []).compactMap { $0.documentValue?["name"]?.stringValue }
            return try names.filter(databases.takes).sorted().compactMap { database in
                try connection.collectionExists(collection, database: database) ? OutboxSource(database: database, collection: collection) : nil
            }
        }
    }
}
