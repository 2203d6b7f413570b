import CMongoC
import Logging
import NIOPosix
import Outbox
import ServiceLifecycle
import Synchronization

/// Watches the outbox with a change stream and signals `wake` whenever an event is inserted, so
/// the relay polls at once instead of at the end of its poll interval.
///
/// Only a hint: the relay's poll stays the source of truth, so a lost or restarted change stream
/// (no resume token is kept) loses nothing but latency. The watch blocks in libmongoc, so it runs
/// on a thread of its own with a client of its own, and checks for shutdown every `maxAwait`.
public final class ChangeStreamHint: Service {
    private let pool: MongoClientPool
    private let collection: String
    private let wake: WakeSignal
    private let logger: Logger
    private let maxAwait: Duration
    private let thread = NIOThreadPool(numberOfThreads: 1)
    private let stopping = Atomic<Bool>(false)

    public init(pool: MongoClientPool, collection: String = OutboxSchema.defaultCollection, wake: WakeSignal, logger: Logger, maxAwait: Duration = .milliseconds(500)) {
        self.pool = pool
        self.collection = collection
        self.wake = wake
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

    private func watchUntilStopped() async {
        await withGracefulShutdownHandler {
            var failures = 0
            while !stopping.load(ordering: .relaxed) && !Task.isCancelled {
                do {
                    try await thread.runIfActive { [self] in try watch() }
                    failures = 0
                } catch {
                    failures += 1
                    logger.warning("change stream failed; polling continues, retrying the watch", metadata: ["error": "\(error)"])
                    try? await Task.sleep(for: .milliseconds(min(250 << min(failures, 5), 5000)))
                }
            }
        } onGracefulShutdown: {
            self.stopping.store(true, ordering: .relaxed)
        }
    }

    /// One change stream, until shutdown or an error.
    private func watch() throws {
        let client = mongoc_client_pool_pop(pool.pool)!
        defer { mongoc_client_pool_push(pool.pool, client) }
        let handle = mongoc_client_get_collection(client, pool.database, collection)!
        defer { mongoc_collection_destroy(handle) }
        let pipeline: Document = ["pipeline": [["$match": ["operationType": "insert"]], ["$project": ["_id": 1]]]]
        let options: Document = ["maxAwaitTimeMS": .int64(maxAwait.milliseconds)]
        let stream = pipeline.withBSONPointer { p in options.withBSONPointer { o in mongoc_collection_watch(handle, p, o) } }!
        defer { mongoc_change_stream_destroy(stream) }
        logger.debug("change stream open", metadata: ["outbox.collection": "\(collection)"])
        var document: OpaquePointer? = nil
        while !stopping.load(ordering: .relaxed) {
            if mongoc_change_stream_next(stream, &document) {
                wake.signal()
                continue
            }
            var error = bson_error_t()
            var reply: OpaquePointer? = nil
            if mongoc_change_stream_error_document(stream, &error, &reply) {
                throw MongoError(operation: "change stream", error: error, reply: reply)
            }
        }
    }
}
