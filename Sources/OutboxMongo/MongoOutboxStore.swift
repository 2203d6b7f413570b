import Foundation
import Logging
import Metrics
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

        public init(
            collection: String = OutboxSchema.defaultCollection, maxBodyBytes: Int = 1 << 20,
            partitions: Int = OutboxSchema.defaultPartitions, routing: EventRouting = EventRouting(),
            body: MessageBodyOptions = MessageBodyOptions(), sweepInterval: Duration = .seconds(60)
        ) {
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

    private let pool: MongoClientPool
    private let options: Options
    /// The relay whose leases fence this store's writes.
    private let owner: String
    private let logger: Logger
    private let scan = Mutex(ScanState())
    /// Store keys of documents that could be neither marked nor parked (see `quarantine`).
    private let quarantined = Mutex<Set<[UInt8]>>([])

    /// Documents returned by the relay's fetch queries, next to events delivered: the read cost
    /// of the relay per event.
    static let documentsRead = Counter(label: "outbox_documents_read_total")
    private let documentsReadCount = Atomic<Int>(0)
    /// What `outbox_documents_read_total` counted for this store (e.g. for a final summary).
    public var documentsReadTotal: Int { documentsReadCount.load(ordering: .relaxed) }

    public init(pool: MongoClientPool, owner: String, options: Options = Options(), logger: Logger) {
        self.pool = pool
        self.owner = owner
        self.options = options
        self.logger = logger
    }

    /// Events due now in the whole outbox, whoever's partition they are in: pending ones whose
    /// retry time has come, and documents no relay has seen yet.
    public func dueCount() async throws -> Int {
        let collection = options.collection
        return try await pool.withConnection { connection in
            let outbox = connection.collection(collection)
            return try outbox.countDocuments(["status": .string(OutboxSchema.Status.pending), "nextAttemptAt": ["$lte": .date(Date())]])
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
        var lastSweep: ContinuousClock.Instant?

        /// The key of `known` for the one scan over every partition.
        static let allPartitions = -1
    }

    /// What one fetch found and what it has to write besides publishing.
    struct Fetch {
        var heads: [OutboxMessage] = []
        /// Malformed documents to park: raw id, partition (nil for a new document), reason, new?
        var malformed: [(id: BSON, partition: Int, reason: String, isNew: Bool)] = []
        /// New documents of partitions this relay does not own, to stamp as pending for their owners.
        var handOver: [OutboxMessage] = []
        /// Pending events with a scan id but no partition, to complete.
        var incomplete: [OutboxMessage] = []
        /// Pending documents whose partition is out of range, to move to their partition.
        var rehome: [(id: BSON, from: BSON, to: Int)] = []
        var read = 0
        var state = ScanState()
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
        let start = state
        let fetch = try await pool.withConnection { connection in
            try Self.fetch(connection.collection(options.collection), limit: limit, owned: owned, adopt: isAdopter, sweep: sweep, from: start, options: options)
        }
        Self.documentsRead.increment(by: fetch.read)
        documentsReadCount.add(fetch.read, ordering: .relaxed)
        if !fetch.malformed.isEmpty { try await park(fetch.malformed, leases: leases) }
        if !fetch.handOver.isEmpty || !fetch.incomplete.isEmpty || !fetch.rehome.isEmpty {
            try await stamp(handOver: fetch.handOver, incomplete: fetch.incomplete, rehome: fetch.rehome)
        }
        // Only once the hand-overs are written: a failed one is read again, before the later
        // events of its aggregate, which would otherwise get earlier scan ids than it.
        scan.withLock { $0 = fetch.state }
        let skipped = quarantined.withLock { $0 }
        return skipped.isEmpty ? fetch.heads : fetch.heads.filter { !skipped.contains($0.storeKey) }
    }

    static func fetch(
        _ outbox: MongoCollection, limit: Int, owned: Set<Int>, adopt: Bool, sweep: Bool, from start: ScanState, options: Options
    ) throws -> Fetch {
        let decoding = options.decoding
        let now = Date()
        var fetch = Fetch(state: start)
        var candidates: [Candidate] = []

        // Known pending events of the owned partitions, due now.
        let known = try scanKnown(outbox, state: &fetch.state, limit: limit, owned: owned, partitions: options.partitions)
        fetch.read += known.read
        for document in known.documents {
            switch OutboxDocument.decode(document, options: decoding, isNew: false) {
            case .success(let message): candidates.append(Candidate(message: message, sid: document["sid"]?.stringValue ?? ""))
            case .failure(let failure):
                let partition = document["partition"]?.intValue ?? -1
                if (0..<options.partitions).contains(partition) {
                    fetch.malformed.append((document["_id"] ?? .null, partition, failure.reason, false))
                } else {
                    // Written under another partition count: moved to its partition.
                    fetch.rehome.append((document["_id"] ?? .null, document["partition"] ?? .null, OutboxDocument.partition(of: document, partitions: options.partitions)))
                }
            }
        }

        // New documents, read by the adopter in the order they were written. An eighth of every
        // batch is kept for them, so a backlog of known events that cannot drain (the broker
        // away) does not leave them unseen: malformed ones are parked, those of other partitions
        // handed over. Known events left out for them are read again (the scan's next rewind).
        var newOwned: [Candidate] = []
        var handOver: [Candidate] = []
        var firstSight: [(document: Document, pendingFormat: Bool)] = []
        let firstSightLimit = max(limit - candidates.count, limit / 8, 1)
        if adopt {
            let (new, nextNew) = try scanNew(outbox, status: .null, from: start.new, limit: firstSightLimit)
            fetch.read += new.read
            fetch.state.new = nextNew
            firstSight = new.documents.map { ($0, false) }
        }
        if adopt && firstSight.count < firstSightLimit {
            let found = try scanPendingFormat(outbox, state: &fetch.state, limit: firstSightLimit - firstSight.count)
            fetch.read += found.read
            firstSight += found.documents.map { ($0, true) }
        }
        for (document, pendingFormat) in firstSight {
            switch OutboxDocument.decode(document, options: decoding, isNew: true, now: now) {
            case .success(let message):
                let candidate = Candidate(message: message, sid: nil, timestamp: message.occurredAt, pendingFormat: pendingFormat)
                if owned.contains(message.partition) { newOwned.append(candidate) } else { handOver.append(candidate) }
            case .failure(let failure):
                fetch.malformed.append((document["_id"] ?? .null, OutboxDocument.partition(of: document, partitions: options.partitions), failure.reason, true))
            }
        }
        // The two scans of first sights each read in the order written; together, too.
        newOwned = newOwned.enumerated().sorted { ($0.element.timestamp ?? 0, $0.offset) < ($1.element.timestamp ?? 0, $1.offset) }.map(\.element)
        handOver = handOver.enumerated().sorted { ($0.element.timestamp ?? 0, $0.offset) < ($1.element.timestamp ?? 0, $1.offset) }.map(\.element)
        if candidates.count + newOwned.count > limit { candidates.removeLast(candidates.count + newOwned.count - limit) }
        if sweep {
            try sweepUnreachable(outbox, into: &fetch, limit: max(limit, 1), options: options, now: now)
        }

        // A hand-over gets its scan id now, which orders it for its owner: not before an earlier
        // event of its aggregate that is still to be seen (one a scan passed over, or whose
        // hand-over could not be written). It waits, still new, and is read again.
        let unseen = try firstUnseen(of: handOver.filter { $0.message.aggregateVersion == nil }.map(\.message.aggregateId), outbox: outbox)
        var handedOver = Set<AggregateKey>()
        var heldBack: [Candidate] = []
        var heldBackKeys = Set<AggregateKey>()
        for candidate in handOver {
            let key = AggregateKey(candidate.message)
            let waits = heldBackKeys.contains(key) || (
                candidate.message.aggregateVersion == nil && !handedOver.contains(key) && unseen[key].map { first in
                    (try? OutboxDocument.bson(storeKey: candidate.message.storeKey)).map { writtenBefore(first, (candidate.message.occurredAt, $0)) } ?? false
                } ?? false)
            if waits {
                heldBack.append(candidate)
                heldBackKeys.insert(key)
            } else {
                handedOver.insert(key)
                fetch.handOver.append(candidate.message)
            }
        }
        var heads = try headsOfAggregates(candidates + newOwned, outbox: outbox)
        let colliding = try collidingMessageIds(heads.map(\.message), outbox: outbox)
        if !colliding.isEmpty {
            heads.removeAll { colliding[$0.message.storeKey] != nil }
            for (key, reason) in colliding {
                fetch.malformed.append(((try? OutboxDocument.bson(storeKey: key)) ?? .null, newOwned.first { $0.message.storeKey == key }?.message.partition ?? 0, reason, true))
            }
        }
        fetch.heads = heads.map(\.message)
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
            fetch.state.known = fetch.state.known.mapValues { ScanPosition(from: nil, seconds: $0.seconds, below: $0.from ?? $0.below) }
        }
        return fetch
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
        let alternates = firstSight.filter { !$0.storeKeyIsObjectId }.map { OutboxDocument.idCandidates($0.id) }.filter { $0.count > 1 }.flatMap { $0 }
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
                let yields = status == OutboxSchema.Status.delivered || (status == OutboxSchema.Status.pending && !otherIsNew)
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

    struct Candidate {
        var message: OutboxMessage
        /// The scan id of a known event.
        var sid: String?
        /// When a new document was written (ms), for the next scan's start.
        var timestamp: Int64? = nil
        /// Read by the scan of the status-pending format (see `scanPendingFormat`).
        var pendingFormat = false
    }

    struct Read {
        var documents: [Document] = []
        /// Documents the queries returned, including those filtered out here.
        var read = 0
    }

    /// Where the pending scan goes on: a lower bound on `sid` and a window length in seconds of
    /// ObjectId time.
    struct ScanPosition: Sendable {
        var from: String?
        var seconds: UInt32 = 4
        /// When the scan last started from the lowest pending id.
        var rewound: ContinuousClock.Instant?
        /// Where the scan stood when it was sent back to the lowest pending id: it goes on from here
        /// unless a pending event lies below, so the lookup reads only what lies below (on some
        /// servers a sorted, limited query reads every document it matches: each look read the
        /// partition's whole backlog to return one id).
        var below: String?

        /// How often a scan that reached the newest events starts again from the lowest pending
        /// id (events rescheduled, put back by an operator, or committed late with an older id);
        /// in between it goes on from its last window, which saves a query per fetch.
        static let rewindInterval = Duration.seconds(1)
    }

    /// Finds due pending events of the owned partitions, at most `limit`: with one scan when the
    /// relay owns every partition; otherwise partition by partition, each with a scan position of
    /// its own, starting after the partition the last fetch ended on, until the batch is full.
    ///
    /// So a relay asks only for its own partitions, each query an equality on the partition
    /// (which every server serves from the partition index), and with a backlog a batch usually
    /// comes from one partition in one query: the store's work per event stays the same whatever
    /// the number of relays.
    static func scanKnown(_ outbox: MongoCollection, state: inout ScanState, limit: Int, owned: Set<Int>, partitions: Int) throws -> Read {
        guard owned.count < partitions else {
            let key = ScanState.allPartitions
            let (read, next) = try scanWindows(outbox, from: state.known[key] ?? ScanPosition(), limit: limit, partition: nil)
            state.known = [key: next]
            return read
        }
        // A partition taken again later starts from its lowest pending event.
        state.known = state.known.filter { owned.contains($0.key) }
        let order = owned.sorted()
        let first = order.firstIndex { $0 > state.lastPartition } ?? 0
        var read = Read()
        for step in 0..<order.count {
            let partition = order[(first + step) % order.count]
            let (found, next) = try scanWindows(
                outbox, from: state.known[partition] ?? ScanPosition(), limit: limit - read.documents.count, partition: partition)
            state.known[partition] = next
            state.lastPartition = partition
            read.read += found.read
            read.documents += found.documents
            if read.documents.count >= limit { break }
        }
        return read
    }

    /// Finds due pending events (of one partition, or of all) by walking `sid` windows.
    ///
    /// A query bounded on both sides of `sid` (with `status`, and the partition) reads only that
    /// window's documents, whatever the backlog, where an open-ended "pending, sorted, limited"
    /// query may read every pending document first. `sid` is an ObjectId in hex (the event id for
    /// events written by `OutboxWriter`, made by the relay for others), so windows are spans of
    /// ObjectId time. The window adapts to the density of events; at the end of the backlog the
    /// scan rewinds to the lowest pending id (at most once per `rewindInterval`), so rescheduled
    /// events are seen again. Each window is asked for what the batch still lacks and one more
    /// (which tells a dense window), so what is read is what is published, and one document per
    /// query.
    static func scanWindows(_ outbox: MongoCollection, from position: ScanPosition, limit: Int, partition: Int?) throws -> (Read, ScanPosition) {
        var position = position
        var read = Read()
        guard limit > 0 else { return (read, position) }
        if position.from == nil {
            // The lowest pending id, or where the scan stood if none lies below it: from there up
            // the windows find every pending event.
            // A range on a string matches strings only: a pending document without a scan id
            // (written in the status-pending format, not yet seen) sorts first and would hide
            // every event.
            let below = position.below
            let lowest = try findPending(
                outbox, partition: partition, sid: below.map { ["$gte": "", "$lt": .string($0)] } ?? ["$gte": ""], limit: 1, projection: ["sid": 1])
            read.read += lowest.count
            guard let from = lowest.first?["sid"]?.stringValue ?? below else { return (read, ScanPosition(seconds: position.seconds)) }
            position.from = from
            position.below = nil
            position.rewound = .now
        }
        let start = position.from
        let now = Date()
        let nowSeconds = UInt32(now.timeIntervalSince1970)
        func isDue(_ document: Document) -> Bool {
            (document["nextAttemptAt"]?.dateValue).map { $0 <= now } ?? true
        }
        for _ in 0..<16 {
            let wanted = limit - read.documents.count
            let lower = position.from!
            // A scan id that is not ObjectId hex cannot be windowed: read the rest of the backlog once.
            let lowerSeconds = UInt32(lower.prefix(8), radix: 16).flatMap { lower.utf8.count == 24 ? $0 : nil }
            var sidRange: Document = ["$gte": .string(lower)]
            var upperSeconds = UInt32.max
            if let lowerSeconds {
                upperSeconds = lowerSeconds &+ position.seconds
                // A window that reaches past now is left open at the top, so ids from a clock
                // ahead of ours are read with it (normally there are none).
                if upperSeconds <= nowSeconds {
                    sidRange["$lt"] = .string(String(format: "%08x", upperSeconds) + String(repeating: "0", count: 16))
                }
            }
            let window = try findPending(outbox, partition: partition, sid: .document(sidRange), limit: wanted + 1)
            read.read += window.count
            read.documents += window.prefix(wanted).filter(isDue)
            if window.count > wanted {
                // Dense: look at less next time.
                position.seconds = max(position.seconds / 2, 1)
                if read.documents.count >= limit { break }  // stay here: this batch gets delivered
                // What was read is mostly not due: page on through the window from the first one not taken.
                position.from = window[wanted]["sid"]?.stringValue ?? lower
                continue
            }
            if sidRange["$lt"] == nil {
                // Reached the newest events: the next fetch reads what this one read again, from
                // where it started (what was published is no longer pending; what was not, e.g. a
                // later version or an event cut at the byte budget, is read again), or starts from
                // the lowest pending id.
                if let rewound = position.rewound, .now - rewound < ScanPosition.rewindInterval {
                    position.from = start
                    break
                }
                position = ScanPosition(from: nil, seconds: position.seconds, below: start)
                break
            }
            if read.documents.count >= limit { break }
            position.from = String(format: "%08x", upperSeconds) + String(repeating: "0", count: 16)
            position.seconds = min(position.seconds * 2, 1 << 20)
        }
        return (read, position)
    }

    /// Pending events (of one partition, or of all; with `sid` in a range, if given), in `sid`
    /// order, at most `limit`.
    static func findPending(
        _ outbox: MongoCollection, partition: Int?, sid: BSON? = nil, limit: Int, projection: Document? = nil
    ) throws -> [Document] {
        var filter: Document = ["status": .string(OutboxSchema.Status.pending)]
        if let partition { filter["partition"] = .int32(Int32(partition)) }
        if let sid { filter["sid"] = sid }
        var options: Document = ["sort": ["sid": 1], "limit": .int64(Int64(limit))]
        if let projection { options["projection"] = .document(projection) }
        return try outbox.find(filter, options: options)
    }

    /// How often the adopter looks for documents in the status-pending format while it found
    /// none (on some servers the look reads every pending event).
    static let pendingFormatLookInterval = Duration.seconds(5)

    /// Documents written with `status: "pending"` and no scan id, in the order written: the same
    /// windows as `scanNew` over `status: "pending"`, keeping those without a string scan id. A
    /// condition on `sid` turns some servers away from the status-and-timestamp index (measured on
    /// SecantusDB: 25 ms against 900 ms for a window of 500 among 25,000), so the known events a
    /// window holds are read and left out here; the scan runs only while a look (every
    /// `pendingFormatLookInterval`, and at every sweep) found such documents, until it reaches the
    /// newest and finds none.
    static func scanPendingFormat(_ outbox: MongoCollection, state: inout ScanState, limit: Int) throws -> Read {
        var read = Read()
        if !state.pendingFormatFound {
            let now = ContinuousClock.now
            guard state.lastPendingFormatLook.map({ now - $0 >= pendingFormatLookInterval }) ?? true else { return read }
            state.lastPendingFormatLook = now
            let look = try outbox.find(
                ["status": .string(OutboxSchema.Status.pending), "sid": OutboxSchema.firstSight["sid"]!], options: ["limit": 1, "projection": ["_id": 1]])
            read.read += look.count
            guard !look.isEmpty else { return read }
            state.pendingFormatFound = true
        }
        let (found, next) = try scanNew(
            outbox, status: .string(OutboxSchema.Status.pending), from: state.pendingFormat, limit: limit, keep: { $0["sid"]?.stringValue == nil })
        state.pendingFormat = next
        read = found
        // Reached the newest with none left: back to looking now and then.
        if next.from == nil && read.documents.isEmpty { state.pendingFormatFound = false }
        return read
    }

    /// Where the scan of new documents goes on: a lower bound on `timestamp` (ms) and a window
    /// length in ms.
    struct NewScanPosition: Sendable {
        var from: Int64?
        var span: Int64 = 4000
        /// How many documents of the window at `from` to pass over: those a scan leaves out
        /// (`keep`) stay where they are, and a window denser than a batch is paged through.
        var skip = 0
    }

    /// Finds documents of `status` (none: new documents; or `pending`, see `scanPendingFormat`) in
    /// the order they were written: by `timestamp` windows, the same way as `scanWindows`, then
    /// those without a timestamp by `_id`. Only an equality on `status` beside the range, which
    /// every server serves from the status-and-timestamp index.
    /// Documents `keep` refuses are read but not returned, and do not count toward `limit`.
    static func scanNew(
        _ outbox: MongoCollection, status: BSON, from position: NewScanPosition, limit: Int, keep: (Document) -> Bool = { _ in true }
    ) throws -> (Read, NewScanPosition) {
        var position = position
        var read = Read()
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        if position.from == nil {
            // Usually there is none: one look for any tells, before the scan's own queries.
            let any = try outbox.find(["status": status], options: ["limit": 1, "projection": ["_id": 1]])
            read.read += any.count
            guard !any.isEmpty else { return (read, position) }
            // A range on a date matches dates only: the lowest timestamp of a new document.
            let lowest = try outbox.find(
                ["status": status, "timestamp": ["$gte": OutboxSchema.anyDate]],
                options: ["sort": ["timestamp": 1], "limit": 1, "projection": ["timestamp": 1]])
            read.read += lowest.count
            if case .datetime(let ms)? = lowest.first?["timestamp"] { position.from = ms }
        }
        if var lower = position.from {
            for _ in 0..<16 {
                let upper = lower &+ position.span
                var options: Document = ["sort": ["timestamp": 1, "_id": 1], "limit": .int64(Int64(limit + 1))]
                if position.skip > 0 { options["skip"] = .int64(Int64(position.skip)) }
                let window = try outbox.find(
                    ["status": status, "timestamp": ["$gte": .datetime(lower), "$lt": .datetime(upper)]], options: options)
                read.read += window.count
                let taken = min(window.count, limit - read.documents.count)
                let kept = window.prefix(taken).filter(keep)
                read.documents += kept
                if kept.count < taken && taken < window.count {
                    // Some were left out and stay: page on through this window past them.
                    position.skip += taken
                    if read.documents.count >= limit { break }
                    continue
                }
                position.skip = 0
                if window.count > limit {
                    position.span = max(position.span / 2, 1)
                    break  // dense: this batch is full; it goes out and the next scan starts here again
                }
                if taken < window.count {
                    // Full before the window's end: the next scan starts at the first one not taken.
                    if case .datetime(let ms)? = window[taken]["timestamp"] { position.from = ms }
                    break
                }
                if upper > nowMs {
                    // Reached the newest: the next scan starts again from the lowest.
                    position = NewScanPosition(from: nil, span: position.span)
                    break
                }
                lower = upper
                position.from = upper
                position.span = min(position.span * 2, 1 << 40)
            }
        }
        if read.documents.count < limit {
            // Documents written without a timestamp: in `_id` order (an ObjectId's is its time).
            let untimed = try outbox.find(
                ["status": status, "timestamp": .null], options: ["sort": ["_id": 1], "limit": .int64(Int64(limit - read.documents.count))])
            read.read += untimed.count
            read.documents += untimed.filter(keep)
        }
        return (read, position)
    }

    /// Documents no scan reaches, looked for every `sweepInterval` by the adopter: an unknown
    /// `status`, a new document whose `timestamp` is not a date (parked, naming the field), a
    /// pending event with a scan id but no partition (completed), and a partition out of range
    /// (moved to its partition, e.g. after the partition count changed).
    static func sweepUnreachable(_ outbox: MongoCollection, into fetch: inout Fetch, limit: Int, options: Options, now: Date) throws {
        let known: [BSON] = [.null, .string(OutboxSchema.Status.pending)] + OutboxSchema.Status.final.map { .string($0) }
        // Only the fields a reason names: the documents' data is not read.
        let small: Document = ["status": 1, "aggregateId": 1, "timestamp": 1]
        let unknownStatus = try outbox.find(["status": ["$nin": .array(known)]], options: ["limit": 1000, "projection": .document(small)])
        for document in unknownStatus {
            let status = document["status"].map { ExtendedJSON.render($0) } ?? "?"
            fetch.malformed.append((
                document["_id"] ?? .null, OutboxDocument.partition(of: document, partitions: options.partitions),
                "status must be absent when an event is written (the relay sets it), found \(status)", true
            ))
        }
        let badTimestamp = try [BSON.null, .string(OutboxSchema.Status.pending)].flatMap { status in
            try outbox.find(
                ["status": status, "timestamp": ["$exists": true, "$ne": .null, "$not": ["$type": "date"]]],
                options: ["limit": 1000, "projection": .document(small.merging(["sid": 1]))]
            ).filter { $0["sid"]?.stringValue == nil }
        }
        for document in badTimestamp {
            fetch.malformed.append((
                document["_id"] ?? .null, OutboxDocument.partition(of: document, partitions: options.partitions),
                "timestamp must be a date (BSON datetime), found \(typeName(document["timestamp"] ?? .null))", true
            ))
        }
        // Pending without a scan id are read by the scan of new documents; these have one but no partition.
        let incomplete = try outbox.find(
            ["status": .string(OutboxSchema.Status.pending), "partition": .null, "sid": ["$type": "string"]], options: ["limit": .int64(Int64(limit))])
        for document in incomplete {
            switch OutboxDocument.decode(document, options: options.decoding, isNew: true, now: now) {
            case .success(let message): fetch.incomplete.append(message)
            case .failure(let failure):
                fetch.malformed.append((document["_id"] ?? .null, OutboxDocument.partition(of: document, partitions: options.partitions), failure.reason, true))
            }
        }
        let valid: [BSON] = (0..<options.partitions).map { .int32(Int32($0)) }
        let outOfRange = try outbox.find(
            ["status": .string(OutboxSchema.Status.pending), "sid": ["$exists": true], "partition": ["$exists": true, "$nin": .array(valid)]],
            options: ["limit": 1000, "projection": ["aggregateId": 1, "partition": 1]])
        for document in outOfRange {
            fetch.rehome.append((
                document["_id"] ?? .null, document["partition"] ?? .null, OutboxDocument.partition(of: document, partitions: options.partitions)
            ))
        }
        fetch.read += unknownStatus.count + badTimestamp.count + incomplete.count + outOfRange.count
    }

    /// Keeps, per aggregate, only the event that goes first, so event n+1 is never published
    /// before event n was confirmed or parked (I5). Events with versions go in version order;
    /// others in the order the relay first saw them: known events (in scan order) before new
    /// documents (in the order they were written).
    static func headsOfAggregates(_ candidates: [Candidate], outbox: MongoCollection) throws -> [Candidate] {
        guard !candidates.isEmpty else { return [] }
        // The first candidate per aggregate, in the order described above.
        var first: [AggregateKey: Candidate] = [:]
        var order: [AggregateKey] = []
        for candidate in candidates {
            let key = AggregateKey(candidate.message)
            guard let current = first[key] else {
                first[key] = candidate
                order.append(key)
                continue
            }
            if let a = candidate.message.aggregateVersion, let b = current.message.aggregateVersion, a < b { first[key] = candidate }
        }
        var heads = order.map { first[$0]! }

        // Earlier versions still pending (or new) block a versioned event. Version 1 has no
        // predecessor; only later versions need the check.
        let later = heads.filter { ($0.message.aggregateVersion ?? 1) > 1 }
        if !later.isEmpty {
            let earlier = try eventsOf(aggregates: later.map(\.message.aggregateId), outbox: outbox)
            var lowest: [AggregateKey: Int] = [:]
            for document in earlier {
                let status = document["status"]?.stringValue
                guard status == nil || status == OutboxSchema.Status.pending else { continue }
                guard let id = document["aggregateId"]?.stringValue, let version = document["aggregateVersion"]?.intValue else { continue }
                let key = AggregateKey(type: document["aggregateType"]?.stringValue ?? "", id: id)
                lowest[key] = min(lowest[key] ?? version, version)
            }
            heads.removeAll { head in
                guard let version = head.message.aggregateVersion, let lower = lowest[AggregateKey(head.message)] else { return false }
                return lower < version
            }
        }

        // Events without versions wait for known pending events of their aggregate seen before
        // them: any such event for a new document, one with a lower scan id for a known event.
        // A new document also waits for an event of its aggregate not seen yet that was written
        // before it (by timestamp, then id): one a scan passed over, or whose first sight could
        // not be written.
        let unversioned = heads.filter { $0.message.aggregateVersion == nil }
        if !unversioned.isEmpty {
            // Pending and new events without versions of these aggregates: normally only those
            // that failed and wait for a retry, or were handed over.
            let waiting = try unversionedWaiting(of: unversioned.map(\.message.aggregateId), outbox: outbox)
            var lowestSid: [AggregateKey: String] = [:]
            for document in waiting {
                guard let id = document["aggregateId"]?.stringValue, let sid = document["sid"]?.stringValue,
                      document["status"]?.stringValue == OutboxSchema.Status.pending else { continue }
                let key = AggregateKey(type: document["aggregateType"]?.stringValue ?? "", id: id)
                lowestSid[key] = min(lowestSid[key] ?? sid, sid)
            }
            let firstUnseen = firstUnseen(in: waiting)
            heads.removeAll { head in
                guard head.message.aggregateVersion == nil else { return false }
                let key = AggregateKey(head.message)
                guard let sid = head.sid else {
                    // A new document: a known pending one goes first, and one written before it.
                    if lowestSid[key] != nil { return true }
                    guard let unseen = firstUnseen[key], let raw = try? OutboxDocument.bson(storeKey: head.message.storeKey) else { return false }
                    return writtenBefore(unseen, (head.message.occurredAt, raw))
                }
                // A known event goes by scan ids alone (also between clocks that disagree: a
                // written-before rule for them could make two events wait for each other); events
                // get theirs in the order written (hand-overs wait for earlier unseen ones).
                return lowestSid[key].map { $0 < sid } ?? false
            }
        }
        return heads
    }

    /// The pending and new events without versions of these aggregates.
    static func unversionedWaiting(of aggregates: [String], outbox: MongoCollection) throws -> [Document] {
        guard !aggregates.isEmpty else { return [] }
        return try eventsOf(aggregates: aggregates, outbox: outbox).filter {
            let status = $0["status"]?.stringValue
            return (status == nil || status == OutboxSchema.Status.pending) && $0["aggregateVersion"] == nil
        }
    }

    /// Per aggregate, the earliest written of these events no relay has seen yet (no scan id).
    static func firstUnseen(in events: [Document]) -> [AggregateKey: (timestamp: Int64, id: BSON)] {
        var first: [AggregateKey: (timestamp: Int64, id: BSON)] = [:]
        for document in events where document["sid"]?.stringValue == nil {
            guard let id = document["aggregateId"]?.stringValue, case .datetime(let ms)? = document["timestamp"], let raw = document["_id"] else { continue }
            let key = AggregateKey(type: document["aggregateType"]?.stringValue ?? "", id: id)
            if let current = first[key], !writtenBefore((ms, raw), current) { continue }
            first[key] = (ms, raw)
        }
        return first
    }

    static func firstUnseen(of aggregates: [String], outbox: MongoCollection) throws -> [AggregateKey: (timestamp: Int64, id: BSON)] {
        firstUnseen(in: try unversionedWaiting(of: aggregates, outbox: outbox))
    }

    /// Whether a document was written before another: an earlier timestamp, or the same one and a
    /// lower id of the same type (the order the scans of first sights read them in). Ids of
    /// different types tell nothing.
    static func writtenBefore(_ a: (timestamp: Int64, id: BSON), _ b: (timestamp: Int64, id: BSON)) -> Bool {
        guard a.timestamp == b.timestamp else { return a.timestamp < b.timestamp }
        switch (a.id, b.id) {
        case (.string(let x), .string(let y)): return x < y
        case (.objectId(let x), .objectId(let y)): return x.hex < y.hex
        case (.int32, _), (.int64, _), (.double, _): return a.id.intValue.flatMap { x in b.id.intValue.map { x < $0 } } ?? false
        default: return false
        }
    }

    /// Every event of the given aggregates (order fields and `status` only), through the aggregate
    /// index: an `$in` of aggregate ids alone, in small groups. Versions and `status` are compared
    /// by the caller, as a condition beside the `$in` (or a long `$in`) turns some servers to a
    /// scan of the whole collection, delivered events included.
    static func eventsOf(aggregates: [String], outbox: MongoCollection) throws -> [Document] {
        let ids = Set(aggregates).sorted()
        var events: [Document] = []
        for start in stride(from: 0, to: ids.count, by: 40) {
            events += try outbox.find(
                ["aggregateId": ["$in": .array(ids[start..<min(start + 40, ids.count)].map { .string($0) })]],
                options: ["projection": ["aggregateType": 1, "aggregateId": 1, "aggregateVersion": 1, "status": 1, "sid": 1, "timestamp": 1]])
        }
        return events
    }

    public func markDelivered(_ messages: [OutboxMessage], leases: [PartitionLease]) async throws -> Set<Int> {
        // An update document, not a pipeline: the same for every event, so the events of a
        // partition share statements; `$currentDate` is the database's clock.
        let update: BSON = [
            "$set": ["status": .string(OutboxSchema.Status.delivered)], "$currentDate": ["deliveredAt": true],
            "$inc": ["attempts": 1], "$unset": ["lastError": "", "nextAttemptAt": ""],
        ]
        return try await fencedUpdate(
            messages.map { message in
                // A first sight sets the count instead of adding to it: a writer's model may have
                // written the field as null, which `$inc` refuses.
                guard message.isFirstSight else { return FencedWrite(message: message, update: update) }
                let first: BSON = [
                    "$set": ["status": .string(OutboxSchema.Status.delivered), "attempts": .int32(Int32(clamping: message.attempts + 1))],
                    "$currentDate": ["deliveredAt": true], "$unset": ["lastError": "", "nextAttemptAt": ""],
                ]
                return FencedWrite(message: message, update: first)
            }, leases: leases)
    }

    public func markFailed(_ failures: [FailedDelivery], leases: [PartitionLease]) async throws -> Set<Int> {
        let now = Date()
        let writes: [FencedWrite] = failures.map { failure in
            var fields: Document = ["attempts": .int32(Int32(failure.attempts)), "lastError": .string(failure.error)]
            switch failure.decision {
            case .retry(let delay):
                fields["status"] = .string(OutboxSchema.Status.pending)
                fields["nextAttemptAt"] = .date(now.addingTimeInterval(Double(delay.milliseconds) / 1000))
            case .park:
                fields["status"] = .string(OutboxSchema.Status.parked)
                fields["parkedAt"] = .date(now)
            }
            return FencedWrite(key: failure.storeKey, id: failure.id, partition: failure.partition, isNew: failure.isFirstSight, update: ["$set": .document(fields)])
        }
        return try await fencedUpdate(writes, leases: leases)
    }

    /// Parks documents the relay cannot publish, with the reason, so they never block the rest.
    /// New documents are parked by a conditional update on their still having no state.
    private func park(_ malformed: [(id: BSON, partition: Int, reason: String, isNew: Bool)], leases: [PartitionLease]) async throws {
        for item in malformed.prefix(20) {
            logger.error("parking malformed outbox document", metadata: [LogKey.outboxEventID: "\(ExtendedJSON.render(item.id))", LogKey.reason: "\(item.reason)"])
        }
        if malformed.count > 20 { logger.error("parking \(malformed.count - 20) more malformed outbox documents") }
        let now = Date()
        func fields(_ item: (id: BSON, partition: Int, reason: String, isNew: Bool)) -> Document {
            [
                "status": .string(OutboxSchema.Status.parked), "lastError": .string("malformed: \(item.reason)"), "parkedAt": .date(now),
                "partition": .int32(Int32(item.partition)),
            ]
        }
        let known = malformed.filter { !$0.isNew }
        _ = try await fencedUpdate(
            known.map { FencedWrite(id: $0.id, partition: $0.partition, isNew: false, update: ["$set": .document(fields($0))]) }, leases: leases)
        let new = malformed.filter(\.isNew)
        guard !new.isEmpty else { return }
        let collection = options.collection
        let statements: [(filter: Document, update: BSON, multi: Bool)] = new.map { item in
            // Whatever non-final status it was found with (none, unknown, or pending without state).
            (["_id": item.id, "status": ["$nin": .array(OutboxSchema.Status.final.map { .string($0) })], "sid": OutboxSchema.firstSight["sid"]!], ["$set": .document(fields(item))], false)
        }
        let refused = try await pool.withConnection { try Self.writeIsolated($0.collection(collection), statements).refused }
        quarantine(refused)
    }

    /// Gives new documents of other relays' partitions (and pending ones written without state)
    /// the relay's state, so their owners' scans find them, in the order they were read; moves
    /// pending events whose partition is out of range to their partition.
    private func stamp(handOver: [OutboxMessage], incomplete: [OutboxMessage], rehome: [(id: BSON, from: BSON, to: Int)]) async throws {
        let now = Date()
        var statements: [(filter: Document, update: BSON, multi: Bool)] = []
        var partitionOf: [String: Int] = [:]
        for (message, isNew) in handOver.map({ ($0, true) }) + incomplete.map({ ($0, false) }) {
            let id = try OutboxDocument.bson(storeKey: message.storeKey)
            let filter = (["_id": id] as Document).merging(
                isNew ? OutboxSchema.firstSight : ["status": .string(OutboxSchema.Status.pending), "partition": .null])
            statements.append((filter, ["$set": .document(Self.relayState(for: message, now: now, status: OutboxSchema.Status.pending))], false))
            partitionOf[ExtendedJSON.render(id)] = message.partition
        }
        for item in rehome {
            statements.append((["_id": item.id, "status": .string(OutboxSchema.Status.pending), "partition": item.from], ["$set": ["partition": .int32(Int32(item.to))]], false))
            partitionOf[ExtendedJSON.render(item.id)] = item.to
        }
        let collection = options.collection
        let all = statements
        let (matched, refused) = try await pool.withConnection { try Self.writeIsolated($0.collection(collection), all) }
        logger.debug("stamped outbox documents for their partitions", metadata: [LogKey.outboxStamped: "\(matched)"])
        try await parkUnwritable(refused, partitionOf: partitionOf)
    }

    /// The relay's state for a document seen for the first time: its partition and a scan id in
    /// the order seen (an ObjectId, so it sorts with the ids `OutboxWriter` uses).
    static func relayState(for message: OutboxMessage, now: Date, status: String) -> Document {
        [
            "status": .string(status), "partition": .int32(Int32(message.partition)), "sid": .string(ObjectId().hex),
            "attempts": .int32(Int32(message.attempts)), "nextAttemptAt": .date(now), "seenAt": .date(now),
        ]
    }

    /// Runs update statements in one unordered command; a refused statement that names several
    /// documents is run again one document at a time, so a document whose fields the update
    /// cannot apply to fails alone. Returns the documents matched and those refused, with the
    /// server's message.
    static func writeIsolated(
        _ outbox: MongoCollection, _ statements: [(filter: Document, update: BSON, multi: Bool)]
    ) throws -> (matched: Int, refused: [(id: BSON, message: String)]) {
        var (result, errors) = try outbox.bulkUpdateEach(statements)
        var matched = result.matched
        var refused: [(id: BSON, message: String)] = []
        var singles: [(filter: Document, update: BSON, multi: Bool)] = []
        for error in errors where statements.indices.contains(error.index) {
            let statement = statements[error.index]
            let ids = Self.ids(of: statement.filter)
            guard ids.count > 1 else {
                refused.append((ids.first ?? .null, error.message))
                continue
            }
            for id in ids {
                var filter = statement.filter
                filter["_id"] = id
                singles.append((filter, statement.update, false))
            }
        }
        guard !singles.isEmpty else { return (matched, refused) }
        (result, errors) = try outbox.bulkUpdateEach(singles)
        matched += result.matched
        for error in errors where singles.indices.contains(error.index) {
            refused.append((singles[error.index].filter["_id"] ?? .null, error.message))
        }
        return (matched, refused)
    }

    /// The `_id`s a statement's filter names: one, or those of an `$in`.
    static func ids(of filter: Document) -> [BSON] {
        guard let id = filter["_id"] else { return [] }
        return id.documentValue?["$in"]?.arrayValue ?? [id]
    }

    /// Settles documents the relay could not write its state to (a relay field a writer set to a
    /// value the update cannot apply to) with plain `$set`s that replace the relay's fields: an
    /// event the broker confirmed is marked delivered, any other parked, each with a reason
    /// naming the fields; what cannot be written either is set aside (`quarantine`). Fenced by
    /// the lease when one is given. `intended`: the status each write meant to set, by `_id`.
    private func parkUnwritable(
        _ refused: [(id: BSON, message: String)], partitionOf: [String: Int], intended: [String: String] = [:],
        leases: [PartitionLease]? = nil
    ) async throws {
        guard !refused.isEmpty else { return }
        let collection = options.collection
        let epochs = Dictionary((leases ?? []).map { ($0.partition, $0.epoch) }, uniquingKeysWith: max)
        let ids = refused.map(\.id)
        let found = try await pool.withConnection { connection in
            try connection.collection(collection).find(["_id": ["$in": .array(ids)]], options: ["projection": ["data": 0]])
        }
        let documents = Dictionary(found.map { (ExtendedJSON.render($0["_id"] ?? .null), $0) }, uniquingKeysWith: { a, _ in a })
        let now = Date()
        var statements: [(filter: Document, update: BSON, multi: Bool)] = []
        for item in refused {
            let key = ExtendedJSON.render(item.id)
            let problems = documents[key].map(OutboxDocument.relayFieldProblems) ?? []
            let reason = problems.isEmpty
                ? "the relay could not record the event's state: \(item.message)"
                : "relay field \(problems.joined(separator: ", ")) (the relay sets these; leave them out): \(item.message)"
            let delivered = intended[key] == OutboxSchema.Status.delivered
            logger.error(
                delivered ? "outbox document delivered, its relay fields replaced" : "parking outbox document the relay cannot update",
                metadata: [LogKey.outboxEventID: "\(key)", LogKey.reason: "\(reason)"])
            var filter: Document = ["_id": item.id, "status": ["$nin": .array(OutboxSchema.Status.final.map { .string($0) })]]
            let attempts = max(documents[key]?["attempts"]?.intValue ?? 0, 0) + (delivered ? 1 : 0)
            var fields: Document =
                delivered
                ? ["status": .string(OutboxSchema.Status.delivered), "lastError": .string(reason), "deliveredAt": .date(now), "nextAttemptAt": .null]
                : ["status": .string(OutboxSchema.Status.parked), "lastError": .string("malformed: \(reason)"), "parkedAt": .date(now)]
            fields["attempts"] = .int32(Int32(clamping: attempts))
            if let partition = partitionOf[key] {
                fields["partition"] = .int32(Int32(partition))
                if let epoch = epochs[partition] {
                    filter["fence"] = Self.notAbove(epoch)
                    fields["fence"] = .int64(epoch)
                }
            }
            statements.append((filter, ["$set": .document(fields)], false))
        }
        let all = statements
        let stillRefused = try await pool.withConnection { try Self.writeIsolated($0.collection(collection), all).refused }
        Self.parkedUnwritable.increment(by: refused.count - stillRefused.count)
        quarantine(stillRefused)
    }

    /// Documents that could be neither marked nor parked: this relay publishes them no more
    /// (each would go out again at every fetch) and reports them; another relay, or an operator
    /// who mends the document, picks them up.
    private func quarantine(_ refused: [(id: BSON, message: String)]) {
        guard !refused.isEmpty else { return }
        for item in refused.prefix(20) {
            logger.error(
                "outbox document can be neither marked nor parked; this relay skips it",
                metadata: [LogKey.outboxEventID: "\(ExtendedJSON.render(item.id))", LogKey.error: "\(item.message)"])
        }
        let count = quarantined.withLock { set in
            for item in refused { set.insert(OutboxDocument.storeKey(of: item.id)) }
            return set.count
        }
        Self.unwritable.record(count)
    }

    /// Documents settled (delivered or parked) with plain sets after a write of the relay's state
    /// was refused.
    static let parkedUnwritable = Counter(label: "outbox_unwritable_settled_total")
    /// Documents this relay skips because they can be neither marked nor parked.
    static let unwritable = Gauge(label: "outbox_unwritable_documents")

    struct FencedWrite {
        var id: BSON
        var partition: Int
        var isNew: Bool
        var update: BSON

        init(id: BSON, partition: Int, isNew: Bool, update: BSON) {
            self.id = id
            self.partition = partition
            self.isNew = isNew
            self.update = update
        }

        /// The store key when there is one, else the message id as a string `_id`.
        init(key: [UInt8], id: String, partition: Int, isNew: Bool, update: BSON) {
            let raw = key.isEmpty ? nil : try? OutboxDocument.bson(storeKey: key)
            self.init(id: raw ?? .string(id), partition: partition, isNew: isNew, update: update)
        }

        init(message: OutboxMessage, update: BSON) {
            self.init(key: message.storeKey, id: message.id, partition: message.partition, isNew: message.isFirstSight, update: update)
        }
    }

    /// Applies each update to its event only while the event's `fence` is not above this relay's
    /// epoch for the event's partition, and raises the fence to that epoch: the event refuses any
    /// write with an older token than the newest it has seen. Once a relay that took the
    /// partition over has written to an event, the previous owner's writes no longer match. The
    /// check is the write itself, atomic, with no transaction (so no lock outlives a killed
    /// relay). A new document's write also gives it the relay's state (partition, and a scan id if
    /// it stays pending), and applies only while it still has none. Returns the partitions for
    /// which writes were refused.
    private func fencedUpdate(_ writes: [FencedWrite], leases: [PartitionLease]) async throws -> Set<Int> {
        guard !writes.isEmpty else { return [] }
        let epochs = Dictionary(leases.map { ($0.partition, $0.epoch) }, uniquingKeysWith: max)
        let refused = Set(writes.map(\.partition).filter { epochs[$0] == nil })
        let allowed = writes.filter { epochs[$0.partition] != nil }
        let collection = options.collection
        let statements = Self.fencedStatements(allowed, epochs: epochs, now: Date())
        let (matched, unwritable) = try await pool.withConnection { try Self.writeIsolated($0.collection(collection), statements) }
        if !unwritable.isEmpty {
            let partitionOf = Dictionary(allowed.map { (ExtendedJSON.render($0.id), $0.partition) }, uniquingKeysWith: { a, _ in a })
            let intended = Dictionary(
                allowed.compactMap { write in write.update.documentValue?["$set"]?.documentValue?["status"]?.stringValue.map { (ExtendedJSON.render(write.id), $0) } },
                uniquingKeysWith: { a, _ in a })
            try await parkUnwritable(unwritable, partitionOf: partitionOf, intended: intended, leases: leases)
        }
        guard matched + unwritable.count < allowed.count else { return refused }
        // Some writes did not apply: those whose fence is above our epoch were fenced out (the
        // others were no longer pending, e.g. parked by an operator meanwhile).
        let ids: [BSON] = allowed.map(\.id)
        let fenced = try await pool.withConnection { connection in
            try connection.collection(collection).find(["_id": ["$in": .array(ids)]], options: ["projection": ["partition": 1, "fence": 1]])
        }
        var lost = refused
        for document in fenced {
            guard let partition = document["partition"]?.intValue, let epoch = epochs[partition],
                let fence = document["fence"]?.intValue, Int64(fence) > epoch
            else { continue }
            lost.insert(partition)
        }
        return lost
    }

    /// The statements of fenced writes: events that get the same update under the same epoch
    /// share statements on their ids (`idsPerStatement` each: a mark of a whole batch is a few
    /// statements in one command, which costs the store far less than a statement per event).
    /// A new document's first write also gives it the relay's state: those of a partition that
    /// leave it delivered or parked share statements too (only pending events are scanned, so
    /// they need no scan id); one that leaves it pending gets its own scan id, in a statement of
    /// its own.
    static func fencedStatements(_ writes: [FencedWrite], epochs: [Int: Int64], now: Date) -> [(filter: Document, update: BSON, multi: Bool)] {
        struct Shared: Hashable {
            var epoch: Int64
            var update: BSON
            /// The partition of new documents (their state), nil for known events.
            var newIn: Int?
        }
        var statements: [(filter: Document, update: BSON, multi: Bool)] = []
        var shared: [Shared: [BSON]] = [:]
        var order: [Shared] = []
        for write in writes {
            let epoch = epochs[write.partition]!
            if write.isNew && !Self.leavesFinal(write.update) {
                let filter = (["_id": write.id] as Document).merging(OutboxSchema.firstSight).merging(["fence": Self.notAbove(epoch)])
                let update = Self.addingState(write.update, partition: write.partition, scanId: true, now: now)
                statements.append((filter, Self.raisingFence(update, to: epoch), false))
                continue
            }
            let key = Shared(epoch: epoch, update: write.update, newIn: write.isNew ? write.partition : nil)
            if shared[key] == nil { order.append(key) }
            shared[key, default: []].append(write.id)
        }
        for key in order {
            let all = shared[key]!
            var update = key.update
            if let partition = key.newIn { update = Self.addingState(update, partition: partition, scanId: false, now: now) }
            update = Self.raisingFence(update, to: key.epoch)
            for start in stride(from: 0, to: all.count, by: idsPerStatement) {
                let ids = all[start..<min(start + idsPerStatement, all.count)]
                // `_id` first: the clause every server looks the documents up by. New documents
                // are written only while they still have no state.
                let filter = (["_id": ids.count == 1 ? ids.first! : ["$in": .array(Array(ids))]] as Document)
                    .merging(key.newIn == nil ? ["status": .string(OutboxSchema.Status.pending)] : OutboxSchema.firstSight)
                    .merging(["fence": Self.notAbove(key.epoch)])
                statements.append((filter, update, ids.count > 1))
            }
        }
        return statements
    }

    /// Whether an update document sets a final status (delivered, parked).
    static func leavesFinal(_ update: BSON) -> Bool {
        guard let status = update.documentValue?["$set"]?.documentValue?["status"]?.stringValue else { return false }
        return OutboxSchema.Status.final.contains(status)
    }

    /// Event ids per shared statement. Some servers match every document a statement finds
    /// against its whole `$in` list, so the cost of one statement grows with the square of its
    /// ids: measured on SecantusDB, statements of 50 ids mark 1.5 times as fast as one of 500, or
    /// one per event.
    public static let idsPerStatement = 50

    /// Adds the relay's state of a first write (partition, first seen, and a scan id if it stays
    /// pending) to an update.
    static func addingState(_ update: BSON, partition: Int, scanId: Bool, now: Date) -> BSON {
        var state: Document = ["partition": .int32(Int32(partition)), "seenAt": .date(now)]
        if scanId { state["sid"] = .string(ObjectId().hex) }
        switch update {
        case .array(let stages):
            return .array(stages + [["$set": .document(state)]])
        case .document(var document):
            var set = document["$set"]?.documentValue ?? Document()
            for (key, value) in state.fields { set[key] = value }
            document["$set"] = .document(set)
            return .document(document)
        default:
            return update
        }
    }

    /// The fence clause of a write under `epoch`: no higher epoch has touched the event (a
    /// document without a fence yet matches too).
    static func notAbove(_ epoch: Int64) -> BSON { ["$not": ["$gt": .int64(epoch)]] }

    /// Adds "fence := max(fence, epoch)" to an update document or pipeline.
    static func raisingFence(_ update: BSON, to epoch: Int64) -> BSON {
        switch update {
        case .array(let stages):
            return .array(stages + [["$set": ["fence": ["$max": [["$ifNull": ["$fence", 0]], .int64(epoch)]]]]])
        case .document(var document):
            document["$max"] = ["fence": .int64(epoch)]
            return .document(document)
        default:
            return update
        }
    }
}

struct AggregateKey: Hashable {
    var type: String
    var id: String

    init(type: String, id: String) {
        self.type = type
        self.id = id
    }

    init(_ message: OutboxMessage) {
        self.init(type: message.aggregateType, id: message.aggregateId)
    }
}

private func typeName(_ value: BSON) -> String {
    switch value {
    case .double: "double"
    case .string: "string"
    case .document: "document"
    case .array: "array"
    case .binary: "binary"
    case .objectId: "objectId"
    case .bool: "bool"
    case .datetime: "date"
    case .null: "null"
    case .regex: "regex"
    case .int32: "int"
    case .timestamp: "timestamp"
    case .int64: "long"
    case .decimal128: "decimal"
    case .minKey: "minKey"
    case .maxKey: "maxKey"
    }
}

extension OutboxMessage {
    /// Whether the event's `_id` is an ObjectId (the store key holds its BSON type, 0x07).
    var storeKeyIsObjectId: Bool { storeKey.count > 4 && storeKey[4] == 0x07 }
}

/// Turns a stored outbox document into a publishable message, or says why it cannot be one.
///
/// The writer's contract (`schema/outbox-event.schema.json`): `type` (string), `aggregateId`
/// (string) and `data` (document) are required. `_id` may be any of string, ObjectId, UUID (or
/// other binary), integer; the message id is its text (a string as is, an ObjectId in hex, a UUID
/// in its canonical form, an integer in decimal). `timestamp` defaults to the ObjectId's time or
/// the time the relay first saw the event; `aggregateType` to none; `exchange` to the relay's
/// routing; `routingKey` to the dotted form of the type.
public enum OutboxDocument {
    public struct Malformed: Error, Equatable {
        public let reason: String
    }

    public struct Options: Sendable {
        public var maxBodyBytes: Int
        public var partitions: Int
        public var routing: EventRouting
        public var body: MessageBodyOptions

        public init(
            maxBodyBytes: Int = 1 << 20, partitions: Int = OutboxSchema.defaultPartitions, routing: EventRouting = EventRouting(),
            body: MessageBodyOptions = MessageBodyOptions()
        ) {
            self.maxBodyBytes = maxBodyBytes
            self.partitions = partitions
            self.routing = routing
            self.body = body
        }
    }

    /// Decodes a document. `isNew`: the document has no relay state yet, so its partition is
    /// computed here from the aggregate id (and `now` stands in for a missing timestamp).
    public static func decode(_ document: Document, options: Options, isNew: Bool, now: Date = Date()) -> Result<OutboxMessage, Malformed> {
        func fail(_ reason: String) -> Result<OutboxMessage, Malformed> { .failure(Malformed(reason: reason)) }
        guard let rawId = document["_id"] else { return fail("_id is missing") }
        guard let id = messageId(of: rawId) else {
            return fail("_id of type \(typeName(rawId)) cannot be a message id (use a string, ObjectId, UUID or integer)")
        }
        guard let type = document["type"]?.stringValue, !type.isEmpty, type.utf8.count <= 255 else {
            return fail("type must be a non-empty string of at most 255 bytes, found \(describe(document["type"]))")
        }
        guard let aggregateId = document["aggregateId"]?.stringValue, !aggregateId.isEmpty else {
            return fail("aggregateId must be a non-empty string, found \(describe(document["aggregateId"]))")
        }
        guard let data = document["data"]?.documentValue else { return fail("data must be a document, found \(describe(document["data"]))") }
        var aggregateType = ""
        if let raw = document["aggregateType"], raw != .null {
            guard let value = raw.stringValue else { return fail("aggregateType must be a string, found \(typeName(raw))") }
            aggregateType = value
        }
        var version: Int?
        if let raw = document["aggregateVersion"], raw != .null {
            guard let value = raw.intValue, value >= 1 else { return fail("aggregateVersion must be a positive integer, found \(describe(raw))") }
            version = value
        }
        let timestamp: Int64
        switch document["timestamp"] {
        case .datetime(let ms)?: timestamp = ms
        case nil, .null?:
            if case .objectId(let oid) = rawId {
                timestamp = Int64(oid.timestamp.timeIntervalSince1970 * 1000)
            } else {
                timestamp = Int64((document["seenAt"]?.dateValue ?? now).timeIntervalSince1970 * 1000)
            }
        case let other?: return fail("timestamp must be a date (BSON datetime), found \(typeName(other))")
        }
        let exchange: String
        if let raw = document["exchange"], raw != .null {
            guard let value = raw.stringValue, value.utf8.count <= 255 else { return fail("exchange must be a string of at most 255 bytes") }
            exchange = value
        } else {
            exchange = options.routing.exchange(type: type, aggregateType: aggregateType)
        }
        let routingKey: String
        if let raw = document["routingKey"], raw != .null {
            guard let value = raw.stringValue, value.utf8.count <= 255 else { return fail("routingKey must be a string of at most 255 bytes") }
            routingKey = value
        } else {
            routingKey = EventNaming.routingKey(forType: type)
        }
        var headers: [String: HeaderValue] = [:]
        if let raw = document["headers"], raw != .null {
            guard let doc = raw.documentValue else { return fail("headers must be a document") }
            for (key, value) in doc.fields {
                switch value {
                case .string(let s): headers[key] = .string(s)
                case .int32(let i): headers[key] = .int(Int64(i))
                case .int64(let i): headers[key] = .int(i)
                default: return fail("headers.\(key) must be a string or an integer")
                }
            }
        }
        var correlationId: String?
        if let raw = document["correlationId"], raw != .null {
            guard let value = raw.stringValue else { return fail("correlationId must be a string") }
            correlationId = value
        }
        let partition: Int
        if isNew {
            partition = EventNaming.partition(ofAggregate: aggregateId, partitions: options.partitions)
        } else {
            guard let stored = document["partition"]?.intValue, (0..<options.partitions).contains(stored) else {
                return fail("partition must be an integer from 0 to \(options.partitions - 1)")
            }
            partition = stored
        }
        var message = OutboxMessage(
            id: id, type: type, aggregateType: aggregateType, aggregateId: aggregateId, aggregateVersion: version,
            exchange: exchange, routingKey: routingKey, occurredAt: timestamp, correlationId: correlationId, headers: headers,
            body: [], attempts: max(document["attempts"]?.intValue ?? 0, 0), partition: partition, storeKey: storeKey(of: rawId),
            isFirstSight: isNew)
        do { try MessageBody.render(&message, data: data, document: document, options: options.body) } catch { return .failure(error) }
        guard message.body.count <= options.maxBodyBytes else {
            return fail("body of \(message.body.count) bytes exceeds the limit of \(options.maxBodyBytes) bytes")
        }
        return .success(message)
    }

    /// The relay's fields a writer set to a value of the wrong type (null included), e.g.
    /// `attempts is null`: what makes the relay's updates fail on a document.
    public static func relayFieldProblems(_ document: Document) -> [String] {
        let expected: [(String, Set<String>)] = [
            ("status", ["string"]), ("partition", ["int", "long", "double"]), ("sid", ["string"]), ("fence", ["int", "long", "double"]),
            ("attempts", ["int", "long", "double"]), ("nextAttemptAt", ["date"]), ("lastError", ["string"]),
            ("deliveredAt", ["date"]), ("parkedAt", ["date"]), ("seenAt", ["date"]),
        ]
        return expected.compactMap { field, types in
            guard let value = document[field] else { return nil }
            let type = typeName(value)
            return types.contains(type) ? nil : "\(field) is \(type)"
        }
    }

    /// The partition a document belongs to by its aggregate id (0 when it has none).
    static func partition(of document: Document, partitions: Int) -> Int {
        guard let aggregateId = document["aggregateId"]?.stringValue else { return 0 }
        return EventNaming.partition(ofAggregate: aggregateId, partitions: partitions)
    }

    /// The message id of an `_id`: a string as is, an ObjectId in hex, a UUID in its canonical
    /// form (other binary in hex), an integer in decimal. Nil for other types.
    public static func messageId(of id: BSON) -> String? {
        switch id {
        case .string(let s): return s.isEmpty ? nil : s
        case .objectId(let oid): return oid.hex
        case .int32(let i): return String(i)
        case .int64(let i): return String(i)
        case .double(let d) where d.rounded() == d && abs(d) < 9.0e15: return String(Int64(d))
        case .decimal128(let d): return d.description
        case .binary(let subtype, let bytes) where (subtype == 3 || subtype == 4) && bytes.count == 16:
            let hex = bytes.map { String(format: "%02x", $0) }.joined()
            let parts = [hex.prefix(8), hex.dropFirst(8).prefix(4), hex.dropFirst(12).prefix(4), hex.dropFirst(16).prefix(4), hex.dropFirst(20)]
            return parts.joined(separator: "-")
        case .binary(_, let bytes) where !bytes.isEmpty:
            return bytes.map { String(format: "%02x", $0) }.joined()
        default: return nil
        }
    }

    /// The `_id` as opaque bytes for the core, and back.
    static func storeKey(of id: BSON) -> [UInt8] { Document([("k", id)]).bsonBytes() }

    static func bson(storeKey: [UInt8]) throws -> BSON {
        guard let value = try Document(bsonBytes: storeKey)["k"] else { throw BSONError("empty store key") }
        return value
    }

    /// The `_id` values an operator's text may mean: the string itself, and the ObjectId, integer
    /// or UUID it spells.
    public static func idCandidates(_ text: String) -> [BSON] {
        var candidates: [BSON] = [.string(text)]
        if text.utf8.count == 24, let oid = ObjectId(text) { candidates.append(.objectId(oid)) }
        if let i = Int64(text) {
            candidates.append(.int64(i))
            if let small = Int32(exactly: i) { candidates.append(.int32(small)) }
        }
        let hex = text.replacingOccurrences(of: "-", with: "")
        if text.utf8.count == 36, hex.utf8.count == 32, let bytes = hexBytes(hex) { candidates.append(.binary(subtype: 4, bytes: bytes)) }
        return candidates
    }

    private static func hexBytes(_ hex: String) -> [UInt8]? {
        var bytes: [UInt8] = []
        var iterator = hex.makeIterator()
        while let high = iterator.next() {
            guard let low = iterator.next(), let byte = UInt8(String([high, low]), radix: 16) else { return nil }
            bytes.append(byte)
        }
        return bytes
    }

    private static func describe(_ value: BSON?) -> String {
        guard let value else { return "none" }
        if case .string(let s) = value, s.isEmpty { return "an empty string" }
        return typeName(value)
    }
}
