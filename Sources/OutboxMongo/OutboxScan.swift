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
    /// ObjectId time (a fraction of a second spans part of the ObjectIds of one second).
    struct ScanPosition: Sendable {
        var from: String?
        var width: Double = 1.0 / 64
        /// When the scan last started from the lowest pending id.
        var rewound: ContinuousClock.Instant?
        /// Where the scan stood when it was sent back to the lowest pending id: it goes on from here
        /// unless a pending event lies below, so the lookup reads only what lies below (on some
        /// servers a sorted, limited query reads every document it matches: each look read the
        /// partition's whole backlog to return one id).
        var below: String?
        /// Whether the scan over every partition, with nowhere to go on from, looks for the lowest
        /// pending id a partition at a time: at a relay's start, when nothing says how large the
        /// backlog is, one query per partition instead of one that may read all of it (on such a
        /// server it holds every other command meanwhile). After a look found nothing, one query
        /// asks for all.
        var lookUpByPartition = true

        /// How often a scan that reached the newest events starts again from the lowest pending
        /// id (events rescheduled, put back by an operator, or committed late with an older id);
        /// in between it goes on from its last window, which saves a query per fetch.
        static let rewindInterval = Duration.seconds(1)
        /// The narrowest window: one ObjectId of a second's 2^64.
        static let minimumWidth = 0x1p-64
        static let maximumWidth = Double(1 << 20)

        /// The position sent back to the lowest pending id, going on from `below` if none lies
        /// below it.
        func restarted(below: String?) -> ScanPosition {
            ScanPosition(width: width, below: below, lookUpByPartition: lookUpByPartition)
        }
    }

    /// A scan id as a number, for windows of any width: an ObjectId's seconds and the 8 bytes after
    /// them. Within a second, the ids one process makes differ in their last 3 bytes (a counter),
    /// so a window narrower than a second still holds a part of a dense second.
    struct ScanPoint: Comparable {
        var seconds: UInt32
        var rest: UInt64

        /// Nil for a scan id that is not ObjectId hex.
        init?(_ sid: String) {
            // Lower-case hex only: what `hex` gives back sorts as the scan id does.
            guard sid.utf8.count == 24, sid.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }),
                let seconds = UInt32(sid.prefix(8), radix: 16), let rest = UInt64(sid.suffix(16), radix: 16)
            else { return nil }
            (self.seconds, self.rest) = (seconds, rest)
        }

        init(seconds: UInt32, rest: UInt64 = 0) { (self.seconds, self.rest) = (seconds, rest) }

        var hex: String {
            let (high, low) = (String(seconds, radix: 16), String(rest, radix: 16))
            return String(repeating: "0", count: 8 - high.count) + high + String(repeating: "0", count: 16 - low.count) + low
        }

        /// `width` seconds on; nil past the last second an ObjectId holds.
        func advanced(by width: Double) -> ScanPoint? {
            let whole = width.rounded(.down)
            let ticks = ((width - whole) * 0x1p64).rounded(.up)
            let (rest, carry) = rest.addingReportingOverflow(ticks >= 0x1p64 ? .max : UInt64(ticks))
            let seconds = UInt64(seconds) + UInt64(whole) + (carry ? 1 : 0)
            return seconds > UInt64(UInt32.max) ? nil : ScanPoint(seconds: UInt32(seconds), rest: rest)
        }

        /// Seconds from here to `other`.
        func distance(to other: ScanPoint) -> Double {
            guard self <= other else { return -other.distance(to: self) }
            // Borrowed from the seconds, so the bytes after them are exact however close.
            let borrow: Int64 = other.rest >= rest ? 0 : 1
            return Double(Int64(other.seconds) - Int64(seconds) - borrow) + Double(other.rest &- rest) * 0x1p-64
        }

        static func < (a: ScanPoint, b: ScanPoint) -> Bool { (a.seconds, a.rest) < (b.seconds, b.rest) }
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
            let (read, next) = try scanWindows(
                outbox, from: state.known[key] ?? ScanPosition(), limit: limit, partition: nil, partitions: partitions, now: now)
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
                outbox, from: state.known[partition] ?? ScanPosition(), limit: limit - read.documents.count, partition: partition,
                partitions: partitions, now: now)
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
        _ outbox: MongoCollection, from position: ScanPosition, limit: Int, partition: Int?, partitions: Int, now: Date
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
            let range: BSON = below.map { ["$gte": "", "$lt": .string($0)] } ?? ["$gte": ""]
            let lookUps: [Int?] = partition == nil && below == nil && position.lookUpByPartition ? Array(0..<partitions) : [partition]
            var lowest: String?
            for part in lookUps {
                let found = try findPending(outbox, partition: part, sid: range, limit: 1, projection: ["sid": 1])
                read.read += found.count
                if let sid = found.first?["sid"]?.stringValue { lowest = min(lowest ?? sid, sid) }
            }
            guard let from = lowest ?? below else { return (read, ScanPosition(width: position.width, lookUpByPartition: false)) }
            position.from = from
            position.below = nil
            position.rewound = .now
        }
        let start = position.from
        let newest = ScanPoint(seconds: UInt32(clamping: Int64(now.timeIntervalSince1970)))
        func isDue(_ document: Document) -> Bool {
            (document["nextAttemptAt"]?.dateValue).map { $0 <= now } ?? true
        }
        for _ in 0..<16 {
            let wanted = limit - read.documents.count
            let lower = position.from!
            // A scan id that is not ObjectId hex cannot be windowed: read the rest of the backlog once.
            let lowerPoint = ScanPoint(lower)
            var sidRange: Document = ["$gte": .string(lower)]
            var upper: ScanPoint?
            // A window that reaches past now is left open at the top, so ids from a clock ahead of
            // ours are read with it (normally there are none).
            if let end = lowerPoint?.advanced(by: position.width), end <= newest {
                upper = end
                sidRange["$lt"] = .string(end.hex)
            }
            let window = try findPending(outbox, partition: partition, sid: .document(sidRange), limit: wanted + 1)
            read.read += window.count
            read.documents += window.prefix(wanted).filter(isDue)
            if window.count > wanted {
                // Dense: next time a window as wide as the part of this one that held what was
                // wanted (some servers sort a whole window before they apply the limit).
                let next = window[wanted]["sid"]?.stringValue
                if let lowerPoint, let nextPoint = next.flatMap(ScanPoint.init) {
                    position.width = max(lowerPoint.distance(to: nextPoint), ScanPosition.minimumWidth)
                } else {
                    position.width = max(position.width / 2, ScanPosition.minimumWidth)
                }
                if read.documents.count >= limit { break }  // stay here: this batch gets delivered
                // What was read is mostly not due: page on through the window from the first one not taken.
                position.from = next ?? lower
                continue
            }
            guard let upper else {
                // Reached the newest events: the next fetch reads what this one read again, from
                // where it started (what was published is no longer pending; what was not, e.g. a
                // later version or an event cut at the byte budget, is read again), or starts from
                // the lowest pending id.
                if let rewound = position.rewound, .now - rewound < ScanPosition.rewindInterval {
                    position.from = start
                    break
                }
                position = position.restarted(below: start)
                break
            }
            if read.documents.count >= limit { break }
            position.from = upper.hex
            // Wider while windows hold less than wanted; fast over an empty stretch (the ids of
            // another process, or of a later second).
            position.width = min(position.width * (window.isEmpty ? 4 : 2), ScanPosition.maximumWidth)
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
    /// against 1.3 ms among 20,000, holding every other command meanwhile), as `FullQuestions`
    /// says.
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
            let full = state.pendingFormatLooks.nextIsFull(caughtUp: state.caughtUp)
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

    /// How often a sweep also asks what no index answers (see `sweepUnreachable` and
    /// `FullQuestions`).
    static let sweepFullEvery = 10

    /// Documents no scan reaches, looked for every `sweepInterval` by the adopter: an unknown
    /// `status`, a new document whose `timestamp` is not a date (parked, naming the field), a
    /// pending event with a scan id but no partition (completed), and a partition out of range
    /// (moved to its partition, e.g. after the partition count changed).
    ///
    /// Some servers answer a question no index answers by reading every document it could match
    /// (SecantusDB: 0.3–0.8 s each among 20,000 pending events, holding every other command
    /// meanwhile), so a sweep asks them only when they are cheap or due:
    /// - a status of any type the relay does not know: on a `full` sweep (it reads the whole
    ///   collection, delivered events too); otherwise a status that is a string other than the
    ///   relay's, a number or a boolean, which the status index answers;
    /// - a timestamp that is not a date, and a partition of any value out of range: on a full
    ///   sweep, and whenever the relay has `caughtUp` (they read the new and pending documents,
    ///   few then); otherwise a partition below zero, at or above the count, a string or a
    ///   boolean.
    /// So a relay draining a backlog does not hold the store with them.
    static func sweepUnreachable(
        _ outbox: MongoCollection, into fetch: inout Fetch, limit: Int, full: Bool, caughtUp: Bool, options: Options, now: Date
    ) throws {
        let known: [BSON] = [.null] + OutboxSchema.Status.known.map { .string($0) }
        // Only the fields a reason names: the documents' data is not read.
        let small: Document = ["status": 1, "aggregateId": 1, "timestamp": 1]
        var unknownStatus: [Document] = []
        if full {
            unknownStatus = try outbox.find(["status": ["$nin": .array(known)]], options: ["limit": 1000, "projection": .document(small)])
        } else {
            // The strings between the relay's (a range on a string matches strings only), numbers and booleans.
            let names = OutboxSchema.Status.known.sorted()
            var ranges: [BSON] = zip([""] + names.map { $0 + "\u{0}" }, names.map(Optional.some) + [nil]).map { lower, upper in
                var range: Document = ["$gte": .string(lower)]
                if let upper { range["$lt"] = .string(upper) }
                return .document(range)
            }
            ranges += [["$gte": .double(-.infinity), "$lte": .double(.infinity)], ["$in": [true, false]]]
            for range in ranges {
                unknownStatus += try outbox.find(["status": range], options: ["limit": 1000, "projection": .document(small)])
            }
        }
        for document in unknownStatus {
            let status = document["status"].map { ExtendedJSON.render($0) } ?? "?"
            fetch.malformed.append(
                (
                    document["_id"] ?? .null, OutboxDocument.partition(of: document, partitions: options.partitions),
                    "status must be absent when an event is written (the relay sets it), found \(status)", true
                ))
        }
        let badTimestamp =
            full || caughtUp
            ? try [BSON.null, .string(OutboxSchema.Status.pending)].flatMap { status in
                try outbox.find(
                    ["status": status, "timestamp": ["$exists": true, "$ne": .null, "$not": ["$type": "date"]]],
                    options: ["limit": 1000, "projection": .document(small.merging(["sid": 1]))]
                ).filter { $0["sid"]?.stringValue == nil }
            } : []
        for document in badTimestamp {
            fetch.malformed.append(
                (
                    document["_id"] ?? .null, OutboxDocument.partition(of: document, partitions: options.partitions),
                    "timestamp must be a date (BSON datetime), found \(typeName(document["timestamp"] ?? .null))", true
                ))
        }
        // Pending without a scan id are read by the scan of new documents; these have one but no partition.
        // (A range on a string, as a type would not be asked of the index.)
        let incomplete = try outbox.find(
            ["status": .string(OutboxSchema.Status.pending), "partition": .null, "sid": ["$gte": ""]], options: ["limit": .int64(Int64(limit))]
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
        let projection: Document = ["aggregateId": 1, "partition": 1, "sid": 1]
        let outOfRange: [Document]
        if full || caughtUp {
            outOfRange = try outbox.find(
                ["status": .string(OutboxSchema.Status.pending), "sid": ["$exists": true], "partition": ["$exists": true, "$nin": .array(valid)]],
                options: ["limit": 1000, "projection": .document(projection)])
        } else {
            let ranges: [BSON] = [["$lt": 0], ["$gte": .int32(Int32(options.partitions))], ["$gte": ""], ["$in": [true, false]]]
            outOfRange = try ranges.flatMap { range in
                try outbox.find(
                    ["status": .string(OutboxSchema.Status.pending), "partition": range],
                    options: ["limit": 1000, "projection": .document(projection)])
            }.filter { $0["sid"] != nil }
        }
        for document in outOfRange {
            fetch.rehome.append(
                (
                    document["_id"] ?? .null, document["partition"] ?? .null, OutboxDocument.partition(of: document, partitions: options.partitions)
                ))
        }
        fetch.read += unknownStatus.count + badTimestamp.count + incomplete.count + outOfRange.count
    }
}
