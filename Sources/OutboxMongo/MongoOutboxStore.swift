import Foundation
import Logging
import Outbox
import Synchronization

/// The relay's view of the outbox collection in MongoDB.
///
/// Two kinds of documents are read. *Known* events carry the relay's state (`status: pending`, a
/// `partition`, a scan id `sid`): written by `OutboxWriter`, or seen by a relay before. *New*
/// documents are what any service writes by the contract (`type`, `aggregateId`, `data`, the rest
/// optional) and have no `status` yet. The relay holding partition 0's lease (the *adopter*) reads
/// new documents in the order they were written, publishes those of its own partitions directly,
/// and writes its state onto each one in the same conditional update that records the outcome;
/// new documents of other partitions it stamps as pending for their owners. A malformed document is
/// parked with a reason naming the field. So every document in the collection is pending (new or
/// known), delivered or parked.
public final class MongoOutboxStore: OutboxStore {
    public struct Options: Sendable {
        public var collection: String
        /// Largest message body the relay publishes; a larger event is parked.
        public var maxBodyBytes: Int
        /// Number of partitions (must match the lease store's).
        public var partitions: Int
        /// Exchanges of events whose document names none.
        public var routing: EventRouting
        public var body: MessageBodyOptions
        /// How often the adopter looks for documents no scan reaches (an unknown `status`, a
        /// `timestamp` that is not a date, pending without relay state, a partition out of range).
        public var sweepInterval: Duration
        /// How far ahead each fetch looks for scheduled events coming due, so the relay wakes for
        /// the earliest: at least the relay's longest wait between fetches (its poll interval; the
        /// relay gives twice that).
        public var scheduleLookahead: Duration
        /// The source the metrics are labelled with; nil: no `source` label.
        public var source: OutboxSource?

        public init(
            collection: String = OutboxSchema.defaultCollection, maxBodyBytes: Int = 1 << 20,
            partitions: Int = OutboxSchema.defaultPartitions, routing: EventRouting = EventRouting(),
            body: MessageBodyOptions = MessageBodyOptions(), sweepInterval: Duration = .seconds(60), scheduleLookahead: Duration = .milliseconds(400),
            source: OutboxSource? = nil
        ) {
            self.source = source
            self.scheduleLookahead = scheduleLookahead
            self.collection = collection
            self.maxBodyBytes = maxBodyBytes
            self.partitions = partitions
            self.routing = routing
            self.body = body
            self.sweepInterval = sweepInterval
        }

        var decoding: OutboxDocument.Options {
            OutboxDocument.Options(maxBodyBytes: maxBodyBytes, partitions: partitions, routing: routing, body: body)
        }
    }

    let pool: MongoClientPool
    let options: Options
    /// The relay whose leases fence this store's writes.
    let owner: String
    let logger: Logger
    let scan = Mutex(ScanState())
    /// The database's clock: what is due, retry times, first sights and scan ids.
    public let clock: DatabaseClock
    /// Store keys of documents that could be neither marked nor parked (see `quarantine`).
    let quarantined = Mutex<Set<[UInt8]>>([])
    /// When the next fetch is wanted (database clock): the earliest time a scheduled event of the
    /// owned partitions comes due, as the last fetch saw it, or the distant past for at once
    /// (that fetch scheduled first sights); nil: at the relay's next poll.
    let nextFetchAt = Mutex<Date?>(nil)
    /// Store keys of scheduled events taken into a batch, until they are marked.
    let scheduledInFlight = Mutex<Set<[UInt8]>>([])

    let metrics: StoreMetrics
    let documentsReadCount = Atomic<Int>(0)
    /// What `outbox_documents_read_total` counted for this store (e.g. for a final summary).
    public var documentsReadTotal: Int { documentsReadCount.load(ordering: .relaxed) }
    /// Removes the source's series from the metrics (a source no longer served).
    public func removeMetrics() { metrics.destroy() }

    public init(pool: MongoClientPool, owner: String, options: Options = Options(), clock: DatabaseClock = DatabaseClock(), logger: Logger) {
        self.pool = pool
        self.clock = clock
        self.owner = owner
        self.options = options
        self.logger = logger
        metrics = StoreMetrics(dimensions: options.source.map { [("source", $0.description)] } ?? [])
    }

    /// Events due now in the whole outbox, whoever's partition they are in: pending ones whose
    /// retry time has come, and documents no relay has seen yet.
    public func dueCount() async throws -> Int {
        let (collection, clock) = (options.collection, clock)
        return try await pool.withConnection { connection in
            try clock.measureIfStale(on: connection)
            let outbox = connection.collection(collection)
            return try outbox.countDocuments(["status": .string(OutboxSchema.Status.pending), "nextAttemptAt": ["$lte": .date(clock.now())]])
                + outbox.countDocuments(["status": .null])
        }
    }

    /// Creates the indexes the relay's queries need; idempotent.
    public func ensureIndexes() async throws {
        let name = options.collection
        try await pool.withConnection { connection in
            try connection.collection(name).createIndexes(OutboxSchema.indexes)
        }
    }

    /// Sets how long delivered events are kept (`nil`: for ever); see `OutboxSchema.applyRetention`.
    public func applyRetention(seconds: Int?) async throws -> OutboxSchema.RetentionChange {
        let name = options.collection
        return try await pool.withConnection { connection in
            try OutboxSchema.applyRetention(seconds: seconds, collection: name, connection: connection)
        }
    }

    struct ScanState: Sendable {
        /// Where the scan of known events goes on, by partition; `allPartitions` while the relay
        /// owns every partition (one scan for all of them).
        var known: [Int: ScanPosition] = [:]
        /// The partition the last fetch ended on: the next one starts with the partition after it.
        var lastPartition = -1
        var new = NewScanPosition()
        /// The scan of documents written with `status: "pending"` and no scan id (an older
        /// writer format), while a look found some.
        var pendingFormat = NewScanPosition()
        var pendingFormatFound = false
        var lastPendingFormatLook: ContinuousClock.Instant?
        /// When a look asks the full question (see `pendingFormatFullLookEvery`).
        var pendingFormatLooks = FullQuestions(every: pendingFormatFullLookEvery)
        var lastSweep: ContinuousClock.Instant?
        /// When a sweep is full (see `sweepFullEvery`).
        var sweeps = FullQuestions(every: sweepFullEvery)
        /// Whether the last fetch found less than it asked for: the relay has caught up.
        var caughtUp = false
        /// When the last sign of scheduled events was seen, and when the last look for one was
        /// made (see `dueScheduled`).
        var scheduledSeen: ContinuousClock.Instant?
        var lastScheduledLook: ContinuousClock.Instant?

        /// The key of `known` for the one scan over every partition.
        static let allPartitions = -1
    }

    /// What one fetch found and what it has to write besides publishing.
    struct Fetch {
        var heads: [OutboxMessage] = []
        /// Malformed documents to park: raw id, partition (nil for a new document), reason, new?
        var malformed: [(id: BSON, partition: Int, reason: String, isNew: Bool)] = []
        /// Documents past their `expiresAt`, to settle as expired, in the same shape.
        var expired: [(id: BSON, partition: Int, reason: String, isNew: Bool)] = []
        /// New documents of partitions this relay does not own, to stamp as pending for their
        /// owners, with the scan id each gets.
        var handOver: [(message: OutboxMessage, sid: String)] = []
        /// Pending events with a scan id but no partition, to complete.
        var incomplete: [OutboxMessage] = []
        /// Pending documents whose partition is out of range, to move to their partition.
        var rehome: [(id: BSON, from: BSON, to: Int)] = []
        /// Known pending events whose `deliverAt` is still to come, to set scheduled.
        var scheduleLater: [OutboxMessage] = []
        /// Store keys of the scheduled events come due in this fetch.
        var dueScheduled = Set<[UInt8]>()
        /// Scheduled events come due that no longer decode, to park or settle as expired.
        var scheduledMalformed: [(id: BSON, partition: Int, reason: String, isNew: Bool)] = []
        var scheduledExpired: [(id: BSON, partition: Int, reason: String, isNew: Bool)] = []
        /// When the next scheduled event of the owned partitions comes due, if soon.
        var nextDue: Date?
        var read = 0
        var state = ScanState()

        /// A document that did not decode: parked, or settled as expired.
        mutating func refuse(_ failure: OutboxDocument.Malformed, id: BSON, partition: Int, isNew: Bool) {
            if failure.expired {
                expired.append((id, partition, failure.reason, isNew))
            } else {
                malformed.append((id, partition, failure.reason, isNew))
            }
        }
    }

    public func fetchDue(limit: Int, leases: [PartitionLease]) async throws -> [OutboxMessage] {
        guard !leases.isEmpty else { return [] }
        let options = self.options
        let owned = Set(leases.map(\.partition))
        let isAdopter = owned.contains(0)
        var state = scan.withLock { $0 }
        let now = ContinuousClock.now
        let sweep = isAdopter && state.lastSweep.map { now - $0 >= options.sweepInterval } ?? isAdopter
        if sweep { state.lastSweep = now }
        let fullSweep = sweep && state.sweeps.nextIsFull(caughtUp: state.caughtUp)
        let (start, clock) = (state, clock)
        let epochs = Dictionary(leases.map { ($0.partition, $0.epoch) }, uniquingKeysWith: max)
        let fetch = try await pool.withConnection { connection in
            try clock.measureIfStale(on: connection)
            return try Self.fetch(
                connection.collection(options.collection), limit: limit, owned: owned, epochs: epochs, adopt: isAdopter, sweep: sweep,
                fullSweep: fullSweep, from: start, options: options, now: clock.now())
        }
        nextFetchAt.withLock { $0 = fetch.nextDue }
        metrics.documentsRead.increment(by: fetch.read)
        documentsReadCount.add(fetch.read, ordering: .relaxed)
        if !fetch.malformed.isEmpty { try await park(fetch.malformed, leases: leases) }
        if !fetch.expired.isEmpty { try await park(fetch.expired, leases: leases, expired: true) }
        let scheduled = OutboxSchema.Status.scheduled
        if !fetch.scheduledMalformed.isEmpty { try await park(fetch.scheduledMalformed, leases: leases, from: scheduled) }
        if !fetch.scheduledExpired.isEmpty { try await park(fetch.scheduledExpired, leases: leases, expired: true, from: scheduled) }
        if !fetch.dueScheduled.isEmpty {
            let taken = fetch.dueScheduled.intersection(fetch.heads.map(\.storeKey))
            scheduledInFlight.withLock { $0.formUnion(taken) }
        }
        if !fetch.scheduleLater.isEmpty {
            _ = try await fencedUpdate(
                fetch.scheduleLater.map { message in
                    FencedWrite(message: message, update: ["$set": .document(Self.scheduledState(deliverAt: message.deliverAt ?? 0))])
                }, leases: leases)
        }
        if !fetch.handOver.isEmpty || !fetch.incomplete.isEmpty || !fetch.rehome.isEmpty {
            try await stamp(handOver: fetch.handOver, incomplete: fetch.incomplete, rehome: fetch.rehome)
        }
        // Scheduled just now (first sights, or pending ones whose time is still to come): the
        // relay wakes for the earliest of its own.
        let stampedAt = clock.now()
        let scheduledNow = (fetch.handOver.map(\.message) + fetch.scheduleLater).filter {
            owned.contains($0.partition) && Self.isScheduled($0, now: stampedAt)
        }.compactMap(\.deliverAt)
        if let earliest = scheduledNow.min() {
            let at = Date(timeIntervalSince1970: Double(earliest) / 1000)
            nextFetchAt.withLock { $0 = min($0 ?? at, at) }
        }
        // First sights just scheduled (of any partition) are in no batch, so the pass looks idle;
        // more of them may wait (a pass reads only a few before the relay knows its body sizes),
        // and they have left the scan of new documents: read on at once instead of at the poll.
        if fetch.handOver.contains(where: { Self.isScheduled($0.message, now: stampedAt) }) {
            nextFetchAt.withLock { $0 = .distantPast }
        }
        // Only once the hand-overs are written: a failed one is read again, before the later
        // events of its aggregate, which would otherwise get earlier scan ids than it.
        scan.withLock { $0 = fetch.state }
        let skipped = quarantined.withLock { $0 }
        return skipped.isEmpty ? fetch.heads : fetch.heads.filter { !skipped.contains($0.storeKey) }
    }

    /// How long until the earliest scheduled event of the owned partitions comes due, as the
    /// last fetch saw it, or zero when that fetch scheduled first sights; nil: nothing soon.
    public func nextFetchIn() -> Duration? {
        guard let due = nextFetchAt.withLock({ $0 }) else { return nil }
        return .milliseconds(max(Int64(due.timeIntervalSince(clock.now()) * 1000), 0))
    }

    static func fetch(
        _ outbox: MongoCollection, limit: Int, owned: Set<Int>, epochs: [Int: Int64], adopt: Bool, sweep: Bool, fullSweep: Bool,
        from start: ScanState, options: Options, now: Date
    ) throws -> Fetch {
        var fetch = Fetch(state: start)

        // Scheduled events come due: first in the batch (they waited longest).
        let instant = ContinuousClock.now
        let schedule = try dueScheduled(
            outbox, owned: owned.count < options.partitions ? owned : nil, epochs: epochs, limit: limit, lookahead: options.scheduleLookahead,
            into: &fetch, options: options, now: now, instant: instant)
        fetch.nextDue = schedule.next

        // Known pending events of the owned partitions, due now.
        let known = try scanKnown(outbox, state: &fetch.state, limit: limit, owned: owned, partitions: options.partitions, now: now)
        fetch.read += known.read
        fetch.dueScheduled = Set(schedule.due.map(\.message.storeKey))
        var candidates = schedule.due + decodeKnown(known.documents, into: &fetch, options: options, now: now)
        // Pending, but written with a `deliverAt` still to come: scheduled instead.
        fetch.scheduleLater = candidates.map(\.message).filter { isScheduled($0, now: now) }
        if !fetch.scheduleLater.isEmpty { candidates.removeAll { isScheduled($0.message, now: now) } }

        // New documents, read by the adopter in the order they were written. An eighth of every
        // batch is kept for them, so a backlog of known events that cannot drain (the broker
        // away) does not leave them unseen: malformed ones are parked, those of other partitions
        // handed over. Known events left out for them are read again (the scan's next rewind).
        var newOwned: [Candidate] = []
        var handOver: [Candidate] = []
        if adopt {
            let firstSightLimit = max(limit - candidates.count, limit / 8, 1)
            (newOwned, handOver) = try readFirstSights(outbox, limit: firstSightLimit, owned: owned, into: &fetch, options: options, now: now)
        }
        if candidates.count + newOwned.count > limit { candidates.removeLast(candidates.count + newOwned.count - limit) }
        if sweep {
            try sweepUnreachable(outbox, into: &fetch, limit: max(limit, 1), full: fullSweep, caughtUp: start.caughtUp, options: options, now: now)
        }
        // After the scans: an event scheduled before one they read is seen here.
        var seen = schedule.seen || !fetch.scheduleLater.isEmpty || handOver.contains { isScheduled($0.message, now: now) }
        if !seen && !schedule.active && !(handOver.isEmpty && candidates.isEmpty && newOwned.isEmpty) {
            seen = try anyScheduled(outbox, read: &fetch.read)
        }
        if seen { fetch.state.scheduledSeen = instant }
        let scheduled = seen || schedule.active
        let heldBack = try handOverInOrder(handOver, outbox: outbox, scheduled: scheduled, into: &fetch, now: now)
        var heads = try headsOfAggregates(candidates + newOwned, outbox: outbox, scheduled: scheduled, read: &fetch.read)
        let colliding = try collidingMessageIds(heads.map(\.message), outbox: outbox)
        if !colliding.isEmpty {
            heads.removeAll { colliding[$0.message.storeKey] != nil }
            for (key, reason) in colliding {
                fetch.malformed.append(
                    (
                        (try? OutboxDocument.bson(storeKey: key)) ?? .null, newOwned.first { $0.message.storeKey == key }?.message.partition ?? 0,
                        reason, true
                    ))
            }
        }
        fetch.heads = heads.map(\.message)
        fetch.state.caughtUp = heads.count < limit
        // The next scan of new documents starts again from the first one of the owned partitions
        // read here: those that must wait for an earlier event of their aggregate stay as they
        // are, and a head whose outcome could not be written (the store failing) is still new;
        // either is read again before the later events of its aggregate, so none is passed over
        // (what was delivered is no longer new and is not read again).
        // (A scan that reached the newest starts from the lowest anyway.)
        let readAgain = newOwned + heldBack
        if let first = readAgain.filter({ !$0.pendingFormat }).compactMap(\.timestamp).min(), let from = fetch.state.new.from {
            fetch.state.new.from = min(first, from)
        }
        if let first = readAgain.filter(\.pendingFormat).compactMap(\.timestamp).min(), let from = fetch.state.pendingFormat.from, first <= from {
            fetch.state.pendingFormat.from = first
            fetch.state.pendingFormat.skip = 0
        }
        // Nothing publishable among the known events (e.g. only later versions whose earlier ones
        // lie behind the scan position): start again from the lowest pending id, or the scan
        // could stay stuck.
        if heads.allSatisfy(\.message.isFirstSight) {
            fetch.state.known = fetch.state.known.mapValues { $0.restarted(below: $0.from ?? $0.below) }
        }
        return fetch
    }

    /// Known events as candidates; a malformed one is parked, one written under another
    /// partition count moved to its partition.
    static func decodeKnown(_ documents: [Document], into fetch: inout Fetch, options: Options, now: Date) -> [Candidate] {
        var candidates: [Candidate] = []
        for document in documents {
            switch OutboxDocument.decode(document, options: options.decoding, isNew: false, now: now) {
            case .success(let message): candidates.append(Candidate(message: message, sid: document["sid"]?.stringValue ?? ""))
            case .failure(let failure):
                let partition = document["partition"]?.intValue ?? -1
                if (0..<options.partitions).contains(partition) {
                    fetch.refuse(failure, id: document["_id"] ?? .null, partition: partition, isNew: false)
                } else {
                    // Written under another partition count: moved to its partition.
                    fetch.rehome.append(
                        (
                            document["_id"] ?? .null, document["partition"] ?? .null,
                            OutboxDocument.partition(of: document, partitions: options.partitions)
                        ))
                }
            }
        }
        return candidates
    }

    /// The adopter's first sights, up to `limit`: new documents, then documents in the
    /// status-pending format, split into those of owned partitions and those to hand over, each
    /// in the order written. Malformed ones are parked.
    static func readFirstSights(
        _ outbox: MongoCollection, limit: Int, owned: Set<Int>, into fetch: inout Fetch, options: Options, now: Date
    ) throws -> (owned: [Candidate], handOver: [Candidate]) {
        let (new, nextNew) = try scanNew(outbox, status: .null, from: fetch.state.new, limit: limit, now: now)
        fetch.read += new.read
        fetch.state.new = nextNew
        var firstSight = new.documents.map { (document: $0, pendingFormat: false) }
        if firstSight.count < limit {
            let found = try scanPendingFormat(outbox, state: &fetch.state, limit: limit - firstSight.count, now: now)
            fetch.read += found.read
            firstSight += found.documents.map { ($0, true) }
        }
        var newOwned: [Candidate] = []
        var handOver: [Candidate] = []
        for (document, pendingFormat) in firstSight {
            switch OutboxDocument.decode(document, options: options.decoding, isNew: true, now: now) {
            case .success(let message):
                let candidate = Candidate(message: message, sid: nil, timestamp: message.occurredAt, pendingFormat: pendingFormat)
                // Scheduled ones get their state (and their place in the aggregate's order) now,
                // like those of other partitions.
                if owned.contains(message.partition) && !isScheduled(message, now: now) {
                    newOwned.append(candidate)
                } else {
                    handOver.append(candidate)
                }
            case .failure(let failure):
                fetch.refuse(
                    failure, id: document["_id"] ?? .null, partition: OutboxDocument.partition(of: document, partitions: options.partitions),
                    isNew: true)
            }
        }
        // The two scans of first sights each read in the order written; together, too.
        func inOrderWritten(_ candidates: [Candidate]) -> [Candidate] {
            candidates.enumerated().sorted { ($0.element.timestamp ?? 0, $0.offset) < ($1.element.timestamp ?? 0, $1.offset) }.map(\.element)
        }
        return (inOrderWritten(newOwned), inOrderWritten(handOver))
    }

    /// Puts hand-overs in `fetch` and returns those held back. A hand-over gets its scan id now,
    /// which orders it for its owner: not before an earlier event of its aggregate that is still
    /// to be seen (one a scan passed over, or whose hand-over could not be written); it waits,
    /// still new, and is read again. And its scan id sorts after those of its aggregate's pending
    /// events, whichever relay's clock made them (an adopter whose clock is behind another's would
    /// otherwise give a later event a lower id).
    static func handOverInOrder(_ handOver: [Candidate], outbox: MongoCollection, scheduled: Bool, into fetch: inout Fetch, now: Date) throws
        -> [Candidate]
    {
        let waiting = try unversionedWaiting(
            of: handOver.filter { $0.message.aggregateVersion == nil }.map(\.message.aggregateId), outbox: outbox, scheduled: scheduled,
            read: &fetch.read)
        let unseen = unseenEvents(in: waiting)
        var floor = highestPendingSid(in: waiting)
        var handedOver = Set<[UInt8]>()
        var heldBack: [Candidate] = []
        var heldBackKeys = Set<AggregateKey>()
        for candidate in handOver {
            let key = AggregateKey(candidate.message)
            // Every unseen event of its aggregate written before it goes over first, in this batch
            // or an earlier one: one this read missed (a scan passed over it, or its read failed)
            // keeps it back, even when an earlier event of the aggregate goes over now.
            let waits =
                heldBackKeys.contains(key)
                || (candidate.message.aggregateVersion == nil
                    && (try? OutboxDocument.bson(storeKey: candidate.message.storeKey)).map { id in
                        (unseen[key] ?? []).contains { event in
                            !handedOver.contains(event.storeKey) && writtenBefore((event.timestamp, event.id), (candidate.message.occurredAt, id))
                        }
                    } ?? false)
            if waits {
                heldBack.append(candidate)
                heldBackKeys.insert(key)
            } else {
                handedOver.insert(candidate.message.storeKey)
                var sid = candidate.message.aggregateVersion == nil ? scanId(after: floor[key], now: now) : ObjectId(time: now).hex
                if isScheduled(candidate.message, now: now), let deliverAt = candidate.message.deliverAt {
                    // By its due time, and still after its aggregate's events seen before it.
                    sid = max(sid, OutboxSchema.scheduledScanId(dueAt: deliverAt))
                }
                if candidate.message.aggregateVersion == nil { floor[key] = sid }
                fetch.handOver.append((candidate.message, sid))
            }
        }
        return heldBack
    }

    /// First-sight events whose message id another document's `_id` also spells (the integer 42
    /// and the string "42"): consumers would take the second for a redelivery of the first and drop
    /// it. Within the batch the first keeps the id; against the store, an event yields to a
    /// document that is already known, or that sorts first. Returns the store keys to park, with
    /// the reason.
    static func collidingMessageIds(_ messages: [OutboxMessage], outbox: MongoCollection) throws -> [[UInt8]: String] {
        var colliding: [[UInt8]: String] = [:]
        var seen: [String: BSON] = [:]
        var firstSight: [OutboxMessage] = []
        for message in messages {
            guard let raw = try? OutboxDocument.bson(storeKey: message.storeKey) else { continue }
            if let other = seen[message.id] {
                colliding[message.storeKey] = Self.collisionReason(raw, other)
                continue
            }
            seen[message.id] = raw
            if message.isFirstSight { firstSight.append(message) }
        }
        // An ObjectId's twin would be a string of its hex: not looked for (one look per batch
        // costs some servers the square of its ids). Ids that spell another type are.
        let alternates = firstSight.filter { !$0.storeKeyIsObjectId }.map { OutboxDocument.idCandidates($0.id) }.filter { $0.count > 1 }.flatMap {
            $0
        }
        var found: [Document] = []
        for start in stride(from: 0, to: alternates.count, by: idsPerStatement) {
            found += try outbox.find(
                ["_id": ["$in": .array(Array(alternates[start..<min(start + idsPerStatement, alternates.count)]))]],
                options: ["projection": ["_id": 1, "status": 1, "sid": 1]])
        }
        let inBatch = Set(messages.map(\.storeKey))
        for document in found {
            guard let other = document["_id"], let id = OutboxDocument.messageId(of: other) else { continue }
            let otherKey = OutboxDocument.storeKey(of: other)
            // The batch's own documents were settled above, first come first served.
            guard !inBatch.contains(otherKey) else { continue }
            for message in firstSight where message.id == id {
                // Yield to a document delivered or on its way (or new and sorting first); not to
                // one parked, which may be parked for this very collision.
                let status = document["status"]?.stringValue
                let otherIsNew = (status == nil || status == OutboxSchema.Status.pending) && document["sid"]?.stringValue == nil
                let yields =
                    status == OutboxSchema.Status.delivered || (isKnownOpen(document) && !otherIsNew)
                    || (otherIsNew && otherKey.lexicographicallyPrecedes(message.storeKey))
                guard yields else { continue }
                colliding[message.storeKey] = Self.collisionReason((try? OutboxDocument.bson(storeKey: message.storeKey)) ?? .null, other)
            }
        }
        return colliding
    }

    static func collisionReason(_ id: BSON, _ other: BSON) -> String {
        "_id \(ExtendedJSON.render(id)) gives the same message id as the _id \(ExtendedJSON.render(other)) of another document; "
            + "message ids must be unique as text (consumers would drop one as a duplicate)"
    }
}
