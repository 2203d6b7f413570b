import CMongoC

/// The result of an update.
public struct UpdateResult: Sendable {
    public var matched: Int
    public var modified: Int
    public var upserted: Int
}

/// A collection seen through a borrowed connection. Every operation joins the connection's
/// session (and so its transaction) when there is one.
public struct MongoCollection {
    let connection: MongoConnection
    public let name: String

    init(connection: MongoConnection, name: String) {
        self.connection = connection
        self.name = name
    }

    private func withHandle<R>(_ body: (OpaquePointer) throws -> R) rethrows -> R {
        try connection.inTurn {
            let handle = mongoc_client_get_collection(connection.client, connection.database, name)!
            defer { mongoc_collection_destroy(handle) }
            return try body(handle)
        }
    }

    private func write(
        _ operation: String, options: Document?,
        _ call: (OpaquePointer, OpaquePointer, OpaquePointer, UnsafeMutablePointer<bson_error_t>) -> Bool
    ) throws -> Document {
        try withHandle { handle in
            try connection.withOptions(options) { opts in
                let reply = outbox_reply_new()!
                defer { outbox_reply_free(reply) }
                var error = bson_error_t()
                guard call(handle, opts, reply, &error) else {
                    throw MongoError(operation: "\(operation) \(name)", error: error, reply: reply)
                }
                return try Document(copying: reply)
            }
        }
    }

    public func insertOne(_ document: Document, options: Document? = nil) throws {
        _ = try write("insert", options: options) { handle, opts, reply, error in
            document.withBSONPointer { mongoc_collection_insert_one(handle, $0, opts, reply, error) }
        }
    }

    /// Inserts all documents in one command; returns how many were inserted.
    @discardableResult
    public func insertMany(_ documents: [Document], ordered: Bool = true) throws -> Int {
        guard !documents.isEmpty else { return 0 }
        let pointers = documents.map { doc in
            doc.bsonBytes().withUnsafeBufferPointer { outbox_bson_new_from_data($0.baseAddress, $0.count)! }
        }
        defer { pointers.forEach { bson_destroy($0) } }
        let reply = try write("insert", options: ["ordered": .bool(ordered)]) { handle, opts, reply, error in
            var array: [OpaquePointer?] = pointers
            return array.withUnsafeMutableBufferPointer { buffer in
                mongoc_collection_insert_many(handle, buffer.baseAddress, buffer.count, opts, reply, error)
            }
        }
        return reply["insertedCount"]?.intValue ?? documents.count
    }

    @discardableResult
    public func updateOne(_ filter: Document, _ update: Document, upsert: Bool = false) throws -> UpdateResult {
        try runUpdate(filter, .document(update), upsert: upsert, many: false)
    }

    @discardableResult
    public func updateMany(_ filter: Document, _ update: Document) throws -> UpdateResult {
        try runUpdate(filter, .document(update), upsert: false, many: true)
    }

    /// An update with an aggregation pipeline, e.g. to use `$$NOW`, the database clock.
    @discardableResult
    public func updateOne(_ filter: Document, pipeline: [BSON], upsert: Bool = false) throws -> UpdateResult {
        try runUpdate(filter, .array(pipeline), upsert: upsert, many: false)
    }

    @discardableResult
    public func updateMany(_ filter: Document, pipeline: [BSON]) throws -> UpdateResult {
        try runUpdate(filter, .array(pipeline), upsert: false, many: true)
    }

    private func runUpdate(_ filter: Document, _ update: BSON, upsert: Bool, many: Bool) throws -> UpdateResult {
        // The generic update command takes a document or a pipeline alike.
        var statement: Document = ["q": .document(filter), "u": update, "multi": .bool(many)]
        if upsert { statement["upsert"] = true }
        let reply = try connection.runCommand(["update": .string(name), "updates": [.document(statement)]])
        try Self.checkWriteErrors(reply, operation: "update \(name)")
        let upserted = reply["upserted"]?.arrayValue?.count ?? 0
        return UpdateResult(
            matched: (reply["n"]?.intValue ?? 0) - upserted, modified: reply["nModified"]?.intValue ?? 0,
            upserted: upserted)
    }

    /// One `update` command carrying many statements (each with its own filter and update, each
    /// updating one document).
    @discardableResult
    public func bulkUpdate(_ statements: [(filter: Document, update: BSON)]) throws -> UpdateResult {
        try bulkUpdate(statements.map { (filter: $0.filter, update: $0.update, multi: false) })
    }

    /// One unordered `update` command carrying many statements; throws the first statement the
    /// server refused (the others are applied all the same).
    @discardableResult
    public func bulkUpdate(_ statements: [(filter: Document, update: BSON, multi: Bool)]) throws -> UpdateResult {
        guard let reply = try runBulkUpdate(statements) else { return UpdateResult(matched: 0, modified: 0, upserted: 0) }
        try Self.checkWriteErrors(reply, operation: "update \(name)")
        return Self.updateResult(reply)
    }

    /// A statement of a bulk update the server refused, by its place in the command.
    public struct StatementError: Sendable, Equatable {
        public var index: Int
        public var code: Int
        public var message: String
    }

    /// Unordered `update` commands: every statement the server accepts is applied, whatever the
    /// others do, and the refused ones come back by index (e.g. `$inc` on a field a writer set to
    /// `null`), so one document's error never holds up the rest. Throws only when a command itself
    /// fails (connection, server); the commands before it stay applied.
    ///
    /// The statements go in commands of at most `documentsPerCommand` documents (a statement on an
    /// `_id` `$in` list counts its ids), in order: a server that runs one command at a time (as
    /// SecantusDB does) answers other clients' commands, such as lease renewals, in between,
    /// instead of after a whole batch's marks.
    public func bulkUpdateEach(_ statements: [(filter: Document, update: BSON, multi: Bool)]) throws -> (UpdateResult, [StatementError]) {
        var total = UpdateResult(matched: 0, modified: 0, upserted: 0)
        var errors: [StatementError] = []
        var start = 0
        while start < statements.count {
            var end = start
            var documents = 0
            while end < statements.count && (end == start || documents + Self.documents(of: statements[end]) <= Self.documentsPerCommand) {
                documents += Self.documents(of: statements[end])
                end += 1
            }
            if let reply = try runBulkUpdate(Array(statements[start..<end])) {
                errors += (reply["writeErrors"]?.arrayValue ?? []).compactMap(\.documentValue).map {
                    StatementError(
                        index: start + ($0["index"]?.intValue ?? 0), code: $0["code"]?.intValue ?? 0,
                        message: $0["errmsg"]?.stringValue ?? "write error")
                }
                let result = Self.updateResult(reply)
                total.matched += result.matched
                total.modified += result.modified
            }
            start = end
        }
        return (total, errors)
    }

    /// Documents per command of `bulkUpdateEach`. Measured on SecantusDB with three relays
    /// draining: a batch's hand-overs in one command (3,000 statements) took 14 s, far beyond a
    /// 3 s lease TTL.
    public static let documentsPerCommand = 500

    /// The documents a statement names: the ids of an `_id` `$in` list, or one.
    static func documents(of statement: (filter: Document, update: BSON, multi: Bool)) -> Int {
        statement.multi ? max(statement.filter["_id"]?.documentValue?["$in"]?.arrayValue?.count ?? 1, 1) : 1
    }

    private func runBulkUpdate(_ statements: [(filter: Document, update: BSON, multi: Bool)]) throws -> Document? {
        guard !statements.isEmpty else { return nil }
        let updates: [BSON] = statements.map { .document(["q": .document($0.filter), "u": $0.update, "multi": .bool($0.multi)]) }
        return try connection.runCommand(["update": .string(name), "updates": .array(updates), "ordered": false])
    }

    private static func updateResult(_ reply: Document) -> UpdateResult {
        UpdateResult(matched: reply["n"]?.intValue ?? 0, modified: reply["nModified"]?.intValue ?? 0, upserted: 0)
    }

    @discardableResult
    public func deleteMany(_ filter: Document) throws -> Int {
        let reply = try connection.runCommand([
            "delete": .string(name), "deletes": [["q": .document(filter), "limit": .int32(0)]],
        ])
        try Self.checkWriteErrors(reply, operation: "delete \(name)")
        return reply["n"]?.intValue ?? 0
    }

    /// Write commands report per-statement failures in `writeErrors` with ok: 1.
    static func checkWriteErrors(_ reply: Document, operation: String) throws {
        guard let first = reply["writeErrors"]?.arrayValue?.first?.documentValue else { return }
        var error = bson_error_t()
        error.domain = UInt32(MONGOC_ERROR_SERVER.rawValue)
        error.code = UInt32(first["code"]?.intValue ?? 0)
        let message = first["errmsg"]?.stringValue ?? "write error"
        _ = message.withCString { strncpy(&error.message.0, $0, 503) }
        throw MongoError(operation: operation, error: error, replyDocument: reply)
    }

    /// Finds documents. `options` takes `sort`, `limit`, `projection`, `skip`, `hint`, ...
    public func find(_ filter: Document = [:], options: Document? = nil) throws -> [Document] {
        try withHandle { handle in
            try connection.withOptions(options) { opts in
                let cursor = filter.withBSONPointer { mongoc_collection_find_with_opts(handle, $0, opts, nil) }!
                return try drain(cursor, operation: "find \(name)")
            }
        }
    }

    public func findOne(_ filter: Document, options: Document? = nil) throws -> Document? {
        var options = options ?? Document()
        options["limit"] = .int64(1)
        return try find(filter, options: options).first
    }

    public func countDocuments(_ filter: Document = [:]) throws -> Int {
        try withHandle { handle in
            try connection.withOptions(nil) { opts in
                let reply = outbox_reply_new()!
                defer { outbox_reply_free(reply) }
                var error = bson_error_t()
                let count = filter.withBSONPointer {
                    mongoc_collection_count_documents(handle, $0, opts, nil, reply, &error)
                }
                guard count >= 0 else { throw MongoError(operation: "count \(name)", error: error, reply: reply) }
                return Int(count)
            }
        }
    }

    /// The number of documents in the collection, from the collection's metadata where the
    /// server keeps it (the `count` command without a filter): no document is read, where
    /// `countDocuments` reads every match.
    public func estimatedCount() throws -> Int {
        try connection.runCommand(["count": .string(name)])["n"]?.intValue ?? 0
    }

    public func aggregate(_ pipeline: [BSON]) throws -> [Document] {
        try withHandle { handle in
            try connection.withOptions(nil) { opts in
                let command: Document = ["pipeline": .array(pipeline)]
                let cursor = command.withBSONPointer {
                    mongoc_collection_aggregate(handle, MONGOC_QUERY_NONE, $0, opts, nil)
                }!
                return try drain(cursor, operation: "aggregate \(name)")
            }
        }
    }

    /// `findAndModify` with an update document or pipeline; returns the document after the update.
    public func findOneAndUpdate(
        _ filter: Document, update: BSON, sort: Document? = nil, upsert: Bool = false, returnNew: Bool = true
    ) throws -> Document? {
        var command: Document = ["findAndModify": .string(name), "query": .document(filter), "update": update]
        if let sort { command["sort"] = .document(sort) }
        command["upsert"] = .bool(upsert)
        command["new"] = .bool(returnNew)
        let reply = try connection.runCommand(command)
        return reply["value"]?.documentValue
    }

    /// Creates indexes (`key`, `name`, and options such as `unique`, `partialFilterExpression`).
    public func createIndexes(_ indexes: [Document]) throws {
        try connection.runCommand(["createIndexes": .string(name), "indexes": .array(indexes.map { .document($0) })])
    }

    public func drop() throws {
        do {
            try connection.runCommand(["drop": .string(name)])
        } catch let error as MongoError where error.code == 26 || error.message.contains("ns not found") {
            // Dropping a collection that does not exist is not an error here.
        }
    }

    private func drain(_ cursor: OpaquePointer, operation: String) throws -> [Document] {
        defer { mongoc_cursor_destroy(cursor) }
        var results: [Document] = []
        var current: OpaquePointer? = nil
        while mongoc_cursor_next(cursor, &current) {
            results.append(try Document(copying: current!))
        }
        var error = bson_error_t()
        var replyPointer: OpaquePointer? = nil
        if mongoc_cursor_error_document(cursor, &error, &replyPointer) {
            throw MongoError(operation: operation, error: error, reply: replyPointer)
        }
        return results
    }
}
