import CMongoC
import Logging
import NIOPosix
import Outbox
import ServiceLifecycle
import Synchronization

/// Watches the outbox with a change stream and signals `wake` when events were inserted, so the
/// relay polls at once instead of at the end of its poll interval.
///
/// Only a hint: the relay's poll stays the source of truth, so a lost or restarted change stream
/// (no resume token is kept) loses nothing but latency. It asks the server for changes only while
/// the relay waits for work: a relay that is busy finds new events with its next fetch anyway,
/// and every wait for changes is a command that the store serves once per batch of writes. What
/// was inserted meanwhile comes in one batch with the next ask. The asks block in libmongoc, so
/// they run on a thread of their own with a client and a session of their own, each for at most
/// `maxAwait`, so that shutdown is noticed.
///
/// A relay that discovers its sources watches them all with one cluster-wide stream instead
/// (`init(everyDatabase:…)`), filtered by collection name, and wakes the source of each database
/// with inserts: one stream per source cost the store about six times as much
/// (`ops/bench --only streams`), and the one stream follows databases as they come and go.
public final class ChangeStreamHint: Service {
    private let pool: MongoClientPool
    private let scope: Stream.Scope
    /// The signals to wake, by database; the single-collection hint has one, under "".
    private let wakes: @Sendable () -> [String: WakeSignal]
    private let logger: Logger
    private let maxAwait: Duration
    private let thread = NIOThreadPool(numberOfThreads: 1)
    private let stopping = Atomic<Bool>(false)

    public convenience init(
        pool: MongoClientPool, collection: String = OutboxSchema.defaultCollection, wake: WakeSignal, logger: Logger,
        maxAwait: Duration = .milliseconds(500)
    ) {
        let wakes = ["": wake]  // built once: the hint reads it every few milliseconds
        self.init(pool: pool, scope: .collection(collection), wakes: { wakes }, logger: logger, maxAwait: maxAwait)
    }

    /// One stream over `collection` in every database, waking `wakes()[database]` (read again
    /// before each ask, so sources added or removed meanwhile count).
    public convenience init(
        everyDatabase collection: String, pool: MongoClientPool, logger: Logger, maxAwait: Duration = .milliseconds(500),
        wakes: @escaping @Sendable () -> [String: WakeSignal]
    ) {
        self.init(pool: pool, scope: .everyDatabase(collection: collection), wakes: wakes, logger: logger, maxAwait: maxAwait)
    }

    private init(
        pool: MongoClientPool, scope: Stream.Scope, wakes: @escaping @Sendable () -> [String: WakeSignal], logger: Logger, maxAwait: Duration
    ) {
        self.pool = pool
        self.scope = scope
        self.wakes = wakes
        self.logger = logger
        self.maxAwait = maxAwait
        thread.start()
    }

    deinit { try? thread.syncShutdownGracefully() }

    public func run() async throws {
        await withTaskCancellationHandler {
            await watchUntilStopped()
        } onCancel: {
            self.stopping.store(true, ordering: .relaxed)
        }
    }

    private var isStopping: Bool { stopping.load(ordering: .relaxed) || Task.isCancelled }

    private func watchUntilStopped() async {
        await withGracefulShutdownHandler {
            var failures = 0
            while !isStopping {
                do {
                    try await watch()
                    failures = 0
                } catch {
                    failures += 1
                    logger.warning("change stream failed; polling continues, retrying the watch", metadata: [LogKey.error: "\(error)"])
                    try? await Task.sleep(for: .milliseconds(min(250 << min(failures, 5), 5000)))
                }
            }
        } onGracefulShutdown: {
            self.stopping.store(true, ordering: .relaxed)
        }
    }

    /// One change stream, until shutdown or an error.
    private func watch() async throws {
        let stream = try await thread.runIfActive { [pool, scope] in try Stream(pool: pool, scope: scope) }
        logger.debug("change stream open", metadata: [LogKey.outboxCollection: "\(scope)"])
        do {
            try await follow(stream)
        } catch {
            try? await thread.runIfActive { stream.close() }
            throw error
        }
        try? await thread.runIfActive { stream.close() }
    }

    private func follow(_ stream: Stream) async throws {
        while !isStopping {
            // Changes matter only to a relay that waits for work.
            while !wakes().values.contains(where: \.isWaiting) {
                guard !isStopping else { return }
                try? await Task.sleep(for: .milliseconds(2))
            }
            let maxAwait = self.maxAwait
            let databases = try await thread.runIfActive { try stream.nextDatabases(maxAwait: maxAwait) }
            guard !databases.isEmpty else { continue }
            let wakes = self.wakes()
            switch scope {
            case .collection: wakes.values.forEach { $0.signal() }
            case .everyDatabase: Set(databases).forEach { wakes[$0]?.signal() }
            }
        }
    }

    /// A `$changeStream` cursor of inserts, read batch by batch with `getMore`, on one client and
    /// one explicit session. Used on one thread only (the hint's, or a benchmark's).
    public final class Stream: @unchecked Sendable {  // confined to one thread
        /// What a stream watches: one collection (the relay's choice), or every database's
        /// collection of a name through one cluster-wide stream (measured against it by
        /// `ops/bench --only streams`; the relay uses it when it discovers its sources).
        public enum Scope: Sendable {
            case collection(String)
            case everyDatabase(collection: String)
        }

        private let pool: MongoClientPool
        private let client: OpaquePointer
        private let session: OpaquePointer
        private let scope: Scope
        private var cursorId: Int64

        public init(pool: MongoClientPool, scope: Scope) throws {
            self.pool = pool
            self.scope = scope
            client = mongoc_client_pool_pop(pool.pool)!
            var error = bson_error_t()
            guard let session = mongoc_client_start_session(client, nil, &error) else {
                mongoc_client_pool_push(pool.pool, client)
                throw MongoError(operation: "start session", error: error, reply: nil)
            }
            self.session = session
            cursorId = 0
            do {
                let command: Document
                switch scope {
                case .collection(let collection):
                    command = [
                        "aggregate": .string(collection),
                        "pipeline": [["$changeStream": [:]], ["$match": ["operationType": "insert"]], ["$project": ["_id": 1]]],
                        "cursor": [:],
                    ]
                case .everyDatabase(let collection):
                    command = [
                        "aggregate": 1,
                        "pipeline": [
                            ["$changeStream": ["allChangesForCluster": true]],
                            ["$match": ["operationType": "insert", "ns.coll": .string(collection)]], ["$project": ["_id": 1, "ns": 1]],
                        ],
                        "cursor": [:],
                    ]
                }
                let reply = try connection.runCommand(command, database: database)
                cursorId = Int64(reply["cursor"]?.documentValue?["id"]?.intValue ?? 0)
            } catch {
                release()
                throw error
            }
        }

        /// Where the cursor lives: the pool's database, or `admin` for a cluster-wide stream.
        private var database: String? {
            if case .everyDatabase = scope { return "admin" }
            return nil
        }

        /// The `collection` of a `getMore` or `killCursors`.
        private var cursorCollection: String {
            switch scope {
            case .collection(let collection): collection
            case .everyDatabase: "$cmd.aggregate"
            }
        }

        private var connection: MongoConnection { MongoConnection(client: client, session: session, database: pool.database) }

        /// Waits up to `maxAwait` for changes; returns the database of each (the pool's for a
        /// stream over one collection).
        public func nextDatabases(maxAwait: Duration) throws -> [String] {
            guard cursorId != 0 else { throw BSONError("the change stream's cursor was closed by the server") }
            let reply = try connection.runCommand(
                ["getMore": .int64(cursorId), "collection": .string(cursorCollection), "maxTimeMS": .int64(maxAwait.milliseconds)],
                database: database)
            let cursor = reply["cursor"]?.documentValue
            cursorId = Int64(cursor?["id"]?.intValue ?? 0)
            return (cursor?["nextBatch"]?.arrayValue ?? []).map { change in
                change.documentValue?["ns"]?.documentValue?["db"]?.stringValue ?? pool.database
            }
        }

        public func close() {
            if cursorId != 0 {
                _ = try? connection.runCommand(["killCursors": .string(cursorCollection), "cursors": [.int64(cursorId)]], database: database)
            }
            release()
        }

        private func release() {
            mongoc_client_session_destroy(session)
            mongoc_client_pool_push(pool.pool, client)
        }
    }
}
