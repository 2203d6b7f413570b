import Foundation
import Outbox

/// The scans of a fetch: known events by partition and scan id, new documents in the order they
/// were written, documents in the older status-pending format, and the sweep of what no scan reaches.
extension MongoOutboxStore {
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
    static func scanKnown(_ outbox: MongoCollection, state: inout ScanState, limit: Int, owned: Set<Int>, partitions: Int, now: Date) throws -> Read {
        guard owned.count < partitions else {
            let key = ScanState.allPartitions
            let (read, next) = try scanWindows(outbox, from: state.known[key] ?? ScanPosition(), limit: limit, partition: nil, now: now)
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
                outbox, from: state.known[partition] ?? ScanPosition(), limit: limit - read.documents.count, partition: partition, now: now)
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
    static func scanWindows(
        _ outbox: MongoCollection, from position: ScanPosition, limit: Int, partition: Int?, now: Date
    ) throws -> (Read, ScanPosition) {
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
    /// none. The look asks for a missing or null scan id, which the status-and-scan-id index
    /// answers; every `pendingFormatFullLookEvery`th look asks for any scan id that is not a
    /// string, which some servers answer by reading every pending event (SecantusDB: 550 ms
    /// against 1.3 ms among 20,000, holding every other command meanwhile).
    static let pendingFormatLookInterval = Duration.seconds(5)
    static let pendingFormatFullLookEvery = 12

    /// Documents written with `status: "pending"` and no scan id, in the order written: the same
    /// windows as `scanNew` over `status: "pending"`, keeping those without a string scan id. A
    /// condition on `sid` turns some servers away from the status-and-timestamp index (measured on
    /// SecantusDB: 25 ms against 900 ms for a window of 500 among 25,000), so the known events a
    /// window holds are read and left out here; the scan runs only while a look (every
    /// `pendingFormatLookInterval`) found such documents, until it reaches the
    /// newest and finds none.
    static func scanPendingFormat(_ outbox: MongoCollection, state: inout ScanState, limit: Int, now: Date) throws -> Read {
        var read = Read()
        if !state.pendingFormatFound {
            let instant = ContinuousClock.now
            guard state.lastPendingFormatLook.map({ instant - $0 >= pendingFormatLookInterval }) ?? true else { return read }
            state.lastPendingFormatLook = instant
            state.pendingFormatLooks += 1
            let full = state.pendingFormatLooks % pendingFormatFullLookEvery == 1
            let look = try outbox.find(
                ["status": .string(OutboxSchema.Status.pending), "sid": full ? OutboxSchema.firstSight["sid"]! : .null],
                options: ["limit": 1, "projection": ["_id": 1]])
            read.read += look.count
            guard !look.isEmpty else { return read }
            state.pendingFormatFound = true
        }
        let (found, next) = try scanNew(
            outbox, status: .string(OutboxSchema.Status.pending), from: state.pendingFormat, limit: limit, now: now,
            keep: { $0["sid"]?.stringValue == nil })
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
        _ outbox: MongoCollection, status: BSON, from position: NewScanPosition, limit: Int, now: Date, keep: (Document) -> Bool = { _ in true }
    ) throws -> (Read, NewScanPosition) {
        var position = position
        var read = Read()
        let nowMs = Int64(now.timeIntervalSince1970 * 1000)
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
        let known: [BSON] = [.null] + OutboxSchema.Status.known.map { .string($0) }
        // Only the fields a reason names: the documents' data is not read.
        let small: Document = ["status": 1, "aggregateId": 1, "timestamp": 1]
        let unknownStatus = try outbox.find(["status": ["$nin": .array(known)]], options: ["limit": 1000, "projection": .document(small)])
        for document in unknownStatus {
            let status = document["status"].map { ExtendedJSON.render($0) } ?? "?"
            fetch.malformed.append(
                (
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
            fetch.malformed.append(
                (
                    document["_id"] ?? .null, OutboxDocument.partition(of: document, partitions: options.partitions),
                    "timestamp must be a date (BSON datetime), found \(typeName(document["timestamp"] ?? .null))", true
                ))
        }
        // Pending without a scan id are read by the scan of new documents; these have one but no partition.
        let incomplete = try outbox.find(
            ["status": .string(OutboxSchema.Status.pending), "partition": .null, "sid": ["$type": "string"]], options: ["limit": .int64(Int64(limit))]
        )
        for document in incomplete {
            switch OutboxDocument.decode(document, options: options.decoding, isNew: true, now: now) {
            case .success(let message): fetch.incomplete.append(message)
            case .failure(let failure):
                fetch.refuse(
                    failure, id: document["_id"] ?? .null, partition: OutboxDocument.partition(of: document, partitions: options.partitions),
                    isNew: true)
            }
        }
        let valid: [BSON] = (0..<options.partitions).map { .int32(Int32($0)) }
        let outOfRange = try outbox.find(
            ["status": .string(OutboxSchema.Status.pending), "sid": ["$exists": true], "partition": ["$exists": true, "$nin": .array(valid)]],
            options: ["limit": 1000, "projection": ["aggregateId": 1, "partition": 1]])
        for document in outOfRange {
            fetch.rehome.append(
                (
                    document["_id"] ?? .null, document["partition"] ?? .null, OutboxDocument.partition(of: document, partitions: options.partitions)
                ))
        }
        fetch.read += unknownStatus.count + badTimestamp.count + incomplete.count + outOfRange.count
    }
}
