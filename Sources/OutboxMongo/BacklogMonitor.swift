import Foundation
import Logging
import Metrics
import Outbox
import ServiceLifecycle
import Synchronization

/// Samples the outbox every `interval` into gauges: the pending backlog (every document not
/// delivered or parked, including those no relay has seen yet), the age of the oldest pending
/// event, parked events, stuck events (due for longer than `stuckAfter` and still not delivered,
/// or written that long ago and not seen by a relay) and partitions without a live owner; and
/// whether the database answered.
///
/// Every sample counts the backlog, which reads each document counted on some servers; relays
/// sharing an outbox take turns: with N live relays each samples every N intervals, so the store
/// counts once per interval whatever the number of relays (the alert rules take the `max` over
/// relays, which is never older than about one interval).
public final class BacklogMonitor: Service {
    private let pool: MongoClientPool
    private let collection: String
    private let partitions: Int
    private let interval: Duration
    private let stuckAfter: Duration
    private let relays: @Sendable () -> Int
    private let clock: DatabaseClock
    private let logger: Logger

    private let gauges: Gauges
    private let missing = Mutex(false)
    /// Whether the next sample counts partition by partition (the last one took long). The
    /// first does: nothing says yet how large the backlog is.
    private let splitCounts = Mutex(true)
    static let splitAfter = Duration.milliseconds(100)
    public static let databaseUp = Gauge(label: "outbox_connection_up", dimensions: [("target", "database")])

    public init(
        pool: MongoClientPool, collection: String = OutboxSchema.defaultCollection, partitions: Int = OutboxSchema.defaultPartitions,
        interval: Duration = .seconds(15), stuckAfter: Duration = .seconds(60), relays: @escaping @Sendable () -> Int = { 1 },
        clock: DatabaseClock = DatabaseClock(), source: OutboxSource? = nil, logger: Logger
    ) {
        gauges = Gauges(dimensions: source.map { [("source", $0.description)] } ?? [])
        self.relays = relays
        self.clock = clock
        self.pool = pool
        self.collection = collection
        self.partitions = partitions
        self.interval = interval
        self.stuckAfter = stuckAfter
        self.logger = logger
    }

    public struct Sample: Sendable, Equatable {
        public var pending: Int
        public var oldestPendingAge: Double
        public var parked: Int
        public var scheduled: Int
        public var stuck: Int
        public var partitionsWithoutOwner: Int
        /// False once the collection was dropped or renamed (a writer's next insert creates it again).
        public var collectionExists: Bool
    }

    /// Whether the last sample found the collection gone (dropped or renamed); false before one.
    public var collectionMissing: Bool { missing.withLock { $0 } }

    /// Reads the figures once and updates the gauges. At first, and after a sample that took
    /// longer than `splitAfter`, the pending events are read partition by partition (a few fields each,
    /// along the partition's index) and counted here, a short store command each instead of a few
    /// long ones: on a store that serves one command at a time, one count over a large backlog holds every
    /// source's commands meanwhile (two seconds for 20,000 pending events on SecantusDB). Split,
    /// a pending document whose partition is not a number is left out until the relay's sweep
    /// moves it to its partition (within a minute).
    @discardableResult
    public func sample() async throws -> Sample {
        let started = ContinuousClock.now
        let sample = try await sample(split: splitCounts.withLock { $0 })
        splitCounts.withLock { $0 = ContinuousClock.now - started > Self.splitAfter }
        return sample
    }

    /// One sample, `split` by partition or not, into the gauges.
    func sample(split: Bool) async throws -> Sample {
        let collection = self.collection
        let (stuckAfter, clock) = (self.stuckAfter, self.clock)
        let pending = OutboxSchema.Status.pending
        let (exists, now) = try await pool.withConnection { connection -> (Bool, Date) in
            let exists = try connection.collectionExists(collection)
            // Ages on the database's clock, as the relay's due times.
            try clock.measureIfStale(on: connection)
            return (exists, clock.now())
        }
        let cutoff = now.addingTimeInterval(-Double(stuckAfter.milliseconds) / 1000)
        // Pending counts the pending events and the documents no relay has seen yet (no status),
        // by equality on `status` (indexed everywhere). A document with a status the relay does
        // not know is parked by the relay's sweep within a minute.
        var (pendingCount, stuck) = (0, 0)
        var oldest: [Date] = []
        for scope in split ? Self.partitionScopes(partitions) : [[:]] {
            let (count, late, first) = try await pool.withConnection { connection -> (Int, Int, Date?) in
                let outbox = connection.collection(collection)
                let filter = (["status": .string(pending)] as Document).merging(scope)
                guard split else {
                    return (
                        try outbox.countDocuments(filter), try outbox.countDocuments(filter.merging(["nextAttemptAt": ["$lt": .date(cutoff)]])),
                        try OutboxSchema.oldestKnown(outbox)
                    )
                }
                // One partition's events, a few fields each, read along its index and counted
                // here: asked for separately, the stuck ones are read by the server without it.
                let events = try outbox.find(filter, options: ["projection": ["_id": 0, "sid": 1, "timestamp": 1, "seenAt": 1, "nextAttemptAt": 1]])
                let late = events.count { ($0["nextAttemptAt"]?.dateValue).map { $0 < cutoff } ?? false }
                let lowest = events.min { ($0["sid"]?.stringValue ?? "") < ($1["sid"]?.stringValue ?? "") }
                return (events.count, late, lowest.flatMap { $0["timestamp"]?.dateValue ?? $0["seenAt"]?.dateValue })
            }
            pendingCount += count
            stuck += late
            oldest += [first].compactMap { $0 }
        }
        let (counted, late, known, partitions) = (pendingCount, stuck, oldest, self.partitions)
        let sample = try await pool.withConnection { connection -> Sample in
            let outbox = connection.collection(collection)
            let new = try outbox.countDocuments(["status": .null])
            let oldestNew = try OutboxSchema.oldestNew(outbox)
            let parked = try outbox.countDocuments(["status": .string(OutboxSchema.Status.parked)])
            let scheduled = try outbox.countDocuments(["status": .string(OutboxSchema.Status.scheduled)])
            let stuckNew = try outbox.countDocuments(["status": .null, "timestamp": ["$gte": OutboxSchema.anyDate, "$lt": .date(cutoff)]])
            let live = try connection.collection(MongoLeaseStore.leasesCollection).countDocuments([
                "owner": ["$ne": .null], "$expr": MongoLeaseStore.live,
            ])
            let first = (known + [oldestNew].compactMap { $0 }).min()
            return Sample(
                pending: counted + new, oldestPendingAge: first.map { max(now.timeIntervalSince($0), 0) } ?? 0, parked: parked,
                scheduled: scheduled, stuck: late + stuckNew, partitionsWithoutOwner: max(partitions - live, 0), collectionExists: exists)
        }
        gauges.pending.record(sample.pending)
        gauges.oldestPendingAge.record(sample.oldestPendingAge)
        gauges.parked.record(sample.parked)
        gauges.scheduled.record(sample.scheduled)
        gauges.stuck.record(sample.stuck)
        gauges.unowned.record(sample.partitionsWithoutOwner)
        let wasMissing = missing.withLock { missing in
            defer { missing = !sample.collectionExists }
            return missing
        }
        if wasMissing != !sample.collectionExists {
            if sample.collectionExists {
                logger.notice("the outbox collection is back", metadata: [LogKey.outboxCollection: "\(collection)"])
            } else {
                logger.warning(
                    "the outbox collection does not exist (dropped or renamed?); this source is degraded until it is back",
                    metadata: [LogKey.outboxCollection: "\(collection)"])
            }
        }
        return sample
    }

    /// The pending events of each partition, then those whose partition is missing or out of
    /// range.
    static func partitionScopes(_ partitions: Int) -> [Document] {
        (0..<partitions).map { ["partition": .int32(Int32($0))] } + [
            ["partition": .null], ["partition": ["$gte": .int32(Int32(partitions))]], ["partition": ["$lt": 0]],
        ]
    }

    /// The most of the store's time the samples take: a sample that took longer than this share
    /// of the interval spaces the next one out. Counting a large backlog reads every document
    /// counted on some servers (two seconds for 20,000 pending events on SecantusDB, which serves
    /// one command at a time and so holds every relay's commands meanwhile).
    static let storeShare = 0.02

    public func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let started = ContinuousClock.now
            do {
                try await sample()
                Self.databaseUp.record(1)
            } catch {
                Self.databaseUp.record(0)
                logger.warning("backlog sample failed", metadata: [LogKey.error: "\(error)"])
            }
            // Cut short by a graceful shutdown: a turn of several intervals must not hold it up.
            let turn = Self.pause(interval: interval, relays: relays(), took: ContinuousClock.now - started)
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: turn) }
        }
    }

    /// The pause after a sample that took `took`: the interval times the relays sharing the
    /// outbox (they take turns), or longer when the sample took more than `storeShare` of that.
    static func pause(interval: Duration, relays: Int, took: Duration) -> Duration {
        max(interval * max(relays, 1), took * (1 / storeShare))
    }
}

extension BacklogMonitor {
    /// Removes the source's gauges from the backend (a source no longer served).
    public func removeGauges() { gauges.destroy() }

    /// The gauges of one source.
    struct Gauges: Sendable {
        let pending: Gauge
        let oldestPendingAge: Gauge
        let parked: Gauge
        /// Events waiting for their `deliverAt` (not backlog: they are not due).
        let scheduled: Gauge
        let stuck: Gauge
        let unowned: Gauge

        init(dimensions: [(String, String)]) {
            pending = Gauge(label: "outbox_pending_events", dimensions: dimensions)
            oldestPendingAge = Gauge(label: "outbox_oldest_pending_age_seconds", dimensions: dimensions)
            parked = Gauge(label: "outbox_parked_events", dimensions: dimensions)
            scheduled = Gauge(label: "outbox_scheduled_events", dimensions: dimensions)
            stuck = Gauge(label: "outbox_stuck_events", dimensions: dimensions)
            unowned = Gauge(label: "outbox_partitions_without_owner", dimensions: dimensions)
        }

        func destroy() {
            for gauge in [pending, oldestPendingAge, parked, scheduled, stuck, unowned] { gauge.destroy() }
        }
    }
}
