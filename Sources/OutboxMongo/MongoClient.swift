import CMongoC
import Logging
import Outbox
import NIOPosix
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// libmongoc's counters (read only by external diagnostics) live in a shared-memory segment,
/// `/dev/shm/mongoc-<pid>`, which it leaves behind when the process ends. A later process with
/// the same pid then finds it taken and prints "Falling back to malloc for counters" on stderr,
/// before any of our code runs: a libmongoc that initialises itself when the process loads it
/// (as Debian's does) has made its segment by then, so `MONGOC_DISABLE_SHM` set from here is too
/// late. Removing the name at once keeps the counters (they stay mapped) and leaves nothing
/// behind, however the process ends. Called at start-up (`Runtime.bootstrap`) and before the
/// first client.
public enum MongoCounters {
    public static func releaseSegment() {
        _ = shm_unlink("/mongoc-\(getpid())")
    }
}

/// One-time libmongoc initialisation for the whole process (mongoc_cleanup is left to process exit).
private let mongocInitialised: Bool = {
    // No shared-memory counters where libmongoc waits for this call to set itself up.
    setenv("MONGOC_DISABLE_SHM", "1", 1)
    mongoc_init()
    MongoCounters.releaseSegment()
    // libmongoc's own log lines go through swift-log instead of straight to stderr.
    mongoc_log_set_handler(
        { level, domain, message, _ in
            let text = "\(domain.map { String(cString: $0) } ?? "mongoc"): \(message.map { String(cString: $0) } ?? "")"
            switch level {
            case MONGOC_LOG_LEVEL_ERROR, MONGOC_LOG_LEVEL_CRITICAL: mongocLogger.error("\(text)")
            // After a write conflict the server has already aborted the transaction; libmongoc's own
            // abort then fails and says so. with_transaction retries; nothing is wrong.
            case MONGOC_LOG_LEVEL_WARNING where text.contains("Error in abortTransaction"): mongocLogger.debug("\(text)")
            // The operation that needed the connection fails with the same cause and reports it.
            case MONGOC_LOG_LEVEL_WARNING where text.contains("Failed authentication"): mongocLogger.debug("\(text)")
            case MONGOC_LOG_LEVEL_WARNING: mongocLogger.warning("\(text)")
            case MONGOC_LOG_LEVEL_MESSAGE, MONGOC_LOG_LEVEL_INFO: mongocLogger.info("\(text)")
            default: mongocLogger.trace("\(text)")
            }
        }, nil)
    return true
}()

private let mongocLogger = Logger(label: "libmongoc")

/// An error from libmongoc or the server. The description names the operation and the
/// server's message, never the documents involved.
public struct MongoError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let domain: UInt32
    public let code: UInt32
    public let message: String
    /// The server reply that came with the error (holds `errorLabels`), when there was one.
    public let reply: Document?
    fileprivate let raw: bson_error_t?

    init(operation: String, error: bson_error_t, reply: OpaquePointer?) {
        self.init(operation: operation, error: error, replyDocument: reply.flatMap { try? Document(copying: $0) })
    }

    init(operation: String, error: bson_error_t, replyDocument: Document?) {
        var error = error
        self.operation = operation
        domain = error.domain
        code = error.code
        message = String(cString: outbox_bson_error_message(&error))
        reply = replyDocument
        raw = error
    }

    public init(operation: String, message: String) {
        self.operation = operation
        domain = 0
        code = 0
        self.message = message
        reply = nil
        raw = nil
    }

    public var errorLabels: [String] {
        (reply?["errorLabels"]?.arrayValue ?? []).compactMap(\.stringValue)
    }

    /// Duplicate key (E11000), also when it is reported inside a write error.
    public var isDuplicateKey: Bool {
        if code == 11000 { return true }
        let writeErrors = reply?["writeErrors"]?.arrayValue ?? []
        return writeErrors.contains { $0.documentValue?["code"]?.intValue == 11000 }
    }

    /// Network, server selection or "not primary" failures: the operation may succeed if tried again.
    public var isConnectionFailure: Bool {
        let d = Int32(bitPattern: domain)
        return d == Int32(MONGOC_ERROR_STREAM.rawValue) || d == Int32(MONGOC_ERROR_SERVER_SELECTION.rawValue)
            || errorLabels.contains("RetryableWriteError") || errorLabels.contains("TransientTransactionError")
    }

    /// The server or the client refused the credentials (SCRAM): retrying cannot help.
    public var isAuthenticationFailure: Bool {
        (domain == UInt32(MONGOC_ERROR_CLIENT.rawValue) && code == UInt32(MONGOC_ERROR_CLIENT_AUTHENTICATE.rawValue))
            || code == 18  // AuthenticationFailed from the server
    }

    /// The TLS handshake failed (untrusted certificate, host name mismatch, no TLS on the port):
    /// retrying cannot help.
    public var isTLSFailure: Bool { message.contains("TLS handshake failed") }

    /// A failure that the settings must fix, not the network: authentication or TLS.
    public var isConfigurationFailure: Bool { isAuthenticationFailure || isTLSFailure }

    /// What the failure means for the link, in words, for start-up errors.
    public var linkExplanation: String {
        if isAuthenticationFailure {
            return "authentication failed: the user name or password is wrong, or authSource/authMechanism do not match the server (\(message))"
        }
        if message.contains("hostname mismatch") {
            return "TLS: the server's certificate does not name this host (host name mismatch) (\(message))"
        }
        if message.contains("certificate verify failed") {
            return "TLS: the server's certificate is not signed by a trusted CA (tlsCAFile in MONGODB_URI) (\(message))"
        }
        if isTLSFailure { return "TLS handshake failed (\(message))" }
        if message.contains("Failed to read 4 bytes") {
            return "the server closed the connection or did not answer; if the port is a TLS port, add tls=true to MONGODB_URI (\(message))"
        }
        return "unreachable (\(message))"
    }

    public var description: String { "MongoDB \(operation) failed (domain \(domain), code \(code)): \(message)" }
}

/// Settings for a `MongoClientPool`.
public struct MongoConfiguration: Sendable {
    /// Connection string, e.g. `mongodb://127.0.0.1:27017/?replicaSet=rs0`.
    public var uri: String
    /// Database holding the business and outbox collections.
    public var database: String
    /// Threads that run blocking libmongoc calls; also the number of concurrent operations.
    public var threads: Int
    /// Application name reported to the server.
    public var appName: String
    /// Sees the name and body of every command sent (libmongoc command monitoring), e.g. to
    /// check which write concern a commit carries. Runs on a pool thread; keep it short.
    public var commandObserver: (@Sendable (_ name: String, _ command: Document) -> Void)?

    public init(
        uri: String, database: String = "outbox", threads: Int = 4, appName: String = "outbox",
        commandObserver: (@Sendable (_ name: String, _ command: Document) -> Void)? = nil
    ) {
        self.uri = uri
        self.database = database
        self.threads = threads
        self.appName = appName
        self.commandObserver = commandObserver
    }
}

/// Carries `MongoConfiguration.commandObserver` through libmongoc's C callback.
private final class CommandObserverBox: Sendable {
    let observe: @Sendable (String, Document) -> Void
    init(_ observe: @escaping @Sendable (String, Document) -> Void) { self.observe = observe }
}

/// Owns a `mongoc_client_pool_t` and the threads that use it.
///
/// libmongoc calls block, so they run on a dedicated `NIOThreadPool`, never on Swift's
/// cooperative pool. Each job pops one client, uses it on that thread only, and pushes it back.
/// The client pool holds at least as many clients as there are threads, so a pop never waits
/// for a client that another blocked pop would have to return.
///
/// `@unchecked Sendable`: the client pool is thread-safe by libmongoc's contract, clients never
/// leave the job that popped them, and the pointers are immutable after `init`.
public final class MongoClientPool: @unchecked Sendable {
    public let configuration: MongoConfiguration
    private let uri: OpaquePointer
    let pool: OpaquePointer
    private let threadPool: NIOThreadPool
    /// Options of every transaction: write concern majority (see `withTransaction`).
    let transactionOptions: OpaquePointer
    private let observer: Unmanaged<CommandObserverBox>?
    /// The relay's sharing of the store between sources, and this pool's source there (see
    /// `share(_:member:)`).
    private let sharing = Mutex<(shares: StoreShares, member: Int)?>(nil)

    public init(_ configuration: MongoConfiguration) throws {
        _ = mongocInitialised
        self.configuration = configuration
        var error = bson_error_t()
        guard let uri = mongoc_uri_new_with_error(configuration.uri, &error) else {
            throw MongoError(operation: "parse MONGODB_URI", error: error, reply: nil)
        }
        guard let pool = mongoc_client_pool_new_with_error(uri, &error) else {
            mongoc_uri_destroy(uri)
            throw MongoError(operation: "create client pool", error: error, reply: nil)
        }
        mongoc_client_pool_set_error_api(pool, Int32(MONGOC_ERROR_API_VERSION_2))
        mongoc_client_pool_set_appname(pool, configuration.appName)
        if let observe = configuration.commandObserver {
            let box = Unmanaged.passRetained(CommandObserverBox(observe))
            let callbacks = mongoc_apm_callbacks_new()
            mongoc_apm_set_command_started_cb(callbacks) { event in
                guard let event, let context = mongoc_apm_command_started_get_context(event),
                    let command = mongoc_apm_command_started_get_command(event),
                    let name = mongoc_apm_command_started_get_command_name(event),
                    let document = try? Document(copying: command)
                else { return }
                Unmanaged<CommandObserverBox>.fromOpaque(context).takeUnretainedValue().observe(String(cString: name), document)
            }
            mongoc_client_pool_set_apm_callbacks(pool, callbacks, box.toOpaque())
            mongoc_apm_callbacks_destroy(callbacks)
            observer = box
        } else {
            observer = nil
        }
        // Durable writes: a transaction commits with write concern "majority", so an acknowledged
        // commit (an order and its event) is on a majority of the replica set and survives the
        // failover of the primary. On a real replica set majority implies journaled
        // (writeConcernMajorityJournalDefault). wtimeout bounds the wait when a majority is
        // unavailable; the commit then fails with UnknownTransactionCommitResult and is retried.
        let writeConcern = mongoc_write_concern_new()
        mongoc_write_concern_set_wmajority(writeConcern, MongoClientPool.majorityTimeoutMilliseconds)
        transactionOptions = mongoc_transaction_opts_new()
        mongoc_transaction_opts_set_write_concern(transactionOptions, writeConcern)
        mongoc_write_concern_destroy(writeConcern)
        // One client per pool thread, one for a change-stream watcher, one spare.
        mongoc_client_pool_max_size(pool, UInt32(max(configuration.threads, 1) + 2))
        self.uri = uri
        self.pool = pool
        threadPool = NIOThreadPool(numberOfThreads: max(configuration.threads, 1))
        threadPool.start()
    }

    deinit {
        try? threadPool.syncShutdownGracefully()
        mongoc_client_pool_destroy(pool)
        mongoc_uri_destroy(uri)
        mongoc_transaction_opts_destroy(transactionOptions)
        observer?.release()
    }

    /// How long a commit waits for a majority of the replica set to acknowledge it.
    public static let majorityTimeoutMilliseconds: Int32 = 10_000

    /// The database named in the configuration.
    public var database: String { configuration.database }

    /// Runs `body` with a client of its own on a pool thread.
    @discardableResult
    public func withConnection<R: Sendable>(_ body: @escaping @Sendable (MongoConnection) throws -> R) async throws -> R {
        try await threadPool.runIfActive { [self] in
            let client = mongoc_client_pool_pop(pool)!
            defer { mongoc_client_pool_push(pool, client) }
            return try body(
                MongoConnection(
                    client: client, session: nil, database: database, transactionOptions: transactionOptions, sharing: sharing.withLock { $0 }))
        }
    }

    /// Makes every collection command of this pool take its turn as `member` of `shares`: while
    /// the member drains a backlog and a quiet member's store work is under way, each command
    /// waits first (blocking only the pool thread that runs it, at most `shares.longestYield`);
    /// while the member is quiet, its commands make the draining ones wait.
    public func share(_ shares: StoreShares, member: Int) {
        sharing.withLock { $0 = (shares, member) }
    }

    /// Runs `body` inside a multi-document transaction with libmongoc's `with_transaction`
    /// semantics: a `TransientTransactionError` re-runs the whole body, an
    /// `UnknownTransactionCommitResult` retries the commit. An error thrown by `body` that is not
    /// a transient MongoDB error aborts the transaction and is rethrown as it is.
    @discardableResult
    public func withTransaction<R: Sendable>(
        _ body: @escaping @Sendable (MongoConnection) throws -> R
    ) async throws -> R {
        try await withConnection { connection in
            try connection.withTransaction(body)
        }
    }

    /// Sends `ping` to the server; throws when it cannot be reached.
    public func ping() async throws {
        _ = try await withConnection { try $0.runCommand(["ping": 1], database: "admin") }
    }
}

/// A client borrowed from the pool for one job, optionally inside a session's transaction.
/// Not Sendable: it lives on the pool thread that popped it.
public struct MongoConnection {
    let client: OpaquePointer
    let session: OpaquePointer?
    public let database: String
    /// The pool's transaction options (write concern majority).
    let transactionOptions: OpaquePointer?
    /// The pool's turns among the relay's sources (see `MongoClientPool.share(_:member:)`).
    let sharing: (shares: StoreShares, member: Int)?

    init(
        client: OpaquePointer, session: OpaquePointer?, database: String, transactionOptions: OpaquePointer? = nil,
        sharing: (shares: StoreShares, member: Int)? = nil
    ) {
        self.client = client
        self.session = session
        self.database = database
        self.transactionOptions = transactionOptions
        self.sharing = sharing
    }

    /// Runs one collection command in its turn (see `MongoClientPool.share(_:member:)`).
    func inTurn<R>(_ command: () throws -> R) rethrows -> R {
        guard let (shares, member) = sharing else { return try command() }
        if shares.shouldYield(member) {
            let deadline = ContinuousClock.now + shares.longestYield
            while shares.shouldYield(member) && ContinuousClock.now < deadline { usleep(500) }
        }
        return try shares.storeCommand(member, command)
    }

    public func collection(_ name: String) -> MongoCollection {
        MongoCollection(connection: self, name: name)
    }

    /// Whether the collection `name` exists in `database` (default: the connection's).
    public func collectionExists(_ name: String, database: String? = nil) throws -> Bool {
        let listed = try runCommand(["listCollections": 1, "filter": ["name": .string(name)], "nameOnly": true], database: database)
        return listed["cursor"]?.documentValue?["firstBatch"]?.arrayValue?.isEmpty == false
    }

    /// Runs a database command (read or write) and returns the reply.
    @discardableResult
    public func runCommand(_ command: Document, database: String? = nil) throws -> Document {
        try inTurn { try runCommandNow(command, database: database) }
    }

    private func runCommandNow(_ command: Document, database: String?) throws -> Document {
        try withOptions(nil) { opts in
            let reply = outbox_reply_new()!
            defer { outbox_reply_free(reply) }
            var error = bson_error_t()
            let ok = command.withBSONPointer { cmd in
                mongoc_client_write_command_with_opts(client, database ?? self.database, cmd, opts, reply, &error)
            }
            guard ok else { throw MongoError(operation: command.keys.first ?? "command", error: error, reply: reply) }
            return try Document(copying: reply)
        }
    }

    /// Builds an options `bson_t` from `options`, appends the session id when inside a session,
    /// and lends it to `body`.
    func withOptions<R>(_ options: Document?, _ body: (OpaquePointer) throws -> R) throws -> R {
        try (options ?? Document()).withBSONPointer { opts in
            if let session {
                var error = bson_error_t()
                guard mongoc_client_session_append(session, opts, &error) else {
                    throw MongoError(operation: "append session", error: error, reply: nil)
                }
            }
            return try body(opts)
        }
    }

    func withTransaction<R>(_ body: (MongoConnection) throws -> R) throws -> R {
        var error = bson_error_t()
        guard let session = mongoc_client_start_session(client, nil, &error) else {
            throw MongoError(operation: "start session", error: error, reply: nil)
        }
        defer { mongoc_client_session_destroy(session) }

        return try withoutActuallyEscaping(body) { body in
            let context = TransactionContext(
                connection: MongoConnection(
                    client: client, session: session, database: database, transactionOptions: transactionOptions, sharing: sharing)
            ) {
                try body($0)
            }
            let unmanaged = Unmanaged.passRetained(context)
            defer { unmanaged.release() }
            let reply = outbox_reply_new()!
            defer { outbox_reply_free(reply) }
            let ok = mongoc_client_session_with_transaction(
                session,
                { _, ctx, replyOut, errorOut in
                    let context = Unmanaged<TransactionContext>.fromOpaque(ctx!).takeUnretainedValue()
                    return context.runOnce(replyOut: replyOut, errorOut: errorOut)
                },
                transactionOptions, unmanaged.toOpaque(), reply, &error)
            if ok {
                return context.result as! R
            }
            // The body's own error says most; without one, the commit itself failed.
            if let thrown = context.lastError {
                throw thrown
            }
            throw MongoError(operation: "transaction", error: error, reply: reply)
        }
    }
}

/// Carries the Swift body through libmongoc's C callback.
private final class TransactionContext {
    let connection: MongoConnection
    let body: (MongoConnection) throws -> Any
    var result: Any?
    var lastError: Error?

    init(connection: MongoConnection, body: @escaping (MongoConnection) throws -> Any) {
        self.connection = connection
        self.body = body
    }

    /// One attempt of the body. On failure it hands libmongoc the failing reply and error, which is
    /// how `with_transaction` sees the `TransientTransactionError` label and retries.
    func runOnce(replyOut: UnsafeMutablePointer<OpaquePointer?>?, errorOut: UnsafeMutablePointer<bson_error_t>?) -> Bool {
        do {
            result = try body(connection)
            lastError = nil
            return true
        } catch let error as MongoError {
            lastError = error
            if let replyOut, let reply = error.reply {
                let bytes = reply.bsonBytes()
                replyOut.pointee = bytes.withUnsafeBufferPointer { outbox_bson_new_from_data($0.baseAddress, $0.count) }
            }
            if let errorOut {
                errorOut.pointee = error.raw ?? bson_error_t()
            }
            return false
        } catch {
            lastError = error
            if let errorOut {
                // Not a server error: leave no labels, so libmongoc aborts instead of retrying.
                var plain = bson_error_t()
                plain.domain = UInt32(MONGOC_ERROR_TRANSACTION.rawValue)
                plain.code = UInt32(MONGOC_ERROR_TRANSACTION_INVALID_STATE.rawValue)
                errorOut.pointee = plain
            }
            return false
        }
    }
}
