import Foundation
import Outbox

/// Per-aggregate order (I5): which candidate of each aggregate may go out now.
extension MongoOutboxStore {
    /// Keeps, per aggregate, only the event that goes first, so event n+1 is never published
    /// before event n was confirmed or parked (I5). Events with versions go in version order;
    /// others in the order the relay first saw them: known events (in scan order) before new
    /// documents (in the order they were written). A scheduled event counts as pending (its
    /// aggregate's later events wait behind it); `scheduled`: whether any may exist (else the
    /// query for them is saved).
    static func headsOfAggregates(_ candidates: [Candidate], outbox: MongoCollection, scheduled: Bool, read: inout Int) throws -> [Candidate] {
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
            let earlier = try openEvents(of: later.map(\.message.aggregateId), outbox: outbox, scheduled: scheduled, read: &read)
            var lowest: [AggregateKey: Int] = [:]
            for document in earlier {
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
            let waiting = try unversionedWaiting(of: unversioned.map(\.message.aggregateId), outbox: outbox, scheduled: scheduled, read: &read)
            var lowestSid: [AggregateKey: String] = [:]
            for document in waiting {
                guard let id = document["aggregateId"]?.stringValue, let sid = document["sid"]?.stringValue, isKnownOpen(document) else { continue }
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
    static func unversionedWaiting(of aggregates: [String], outbox: MongoCollection, scheduled: Bool, read: inout Int) throws -> [Document] {
        guard !aggregates.isEmpty else { return [] }
        return try openEvents(of: aggregates, outbox: outbox, scheduled: scheduled, read: &read).filter { $0["aggregateVersion"] == nil }
    }

    /// A pending or scheduled event (one the relay knows that is still to be published).
    static func isKnownOpen(_ document: Document) -> Bool {
        let status = document["status"]?.stringValue
        return status == OutboxSchema.Status.pending || status == OutboxSchema.Status.scheduled
    }

    /// Per aggregate, the earliest written of these events no relay has seen yet (no scan id).
    static func firstUnseen(in events: [Document]) -> [AggregateKey: (timestamp: Int64, id: BSON)] {
        unseenEvents(in: events).compactMapValues { unseen in
            unseen.min { writtenBefore(($0.timestamp, $0.id), ($1.timestamp, $1.id)) }.map { ($0.timestamp, $0.id) }
        }
    }

    /// Per aggregate, these events that no relay has seen yet (no scan id).
    static func unseenEvents(in events: [Document]) -> [AggregateKey: [(timestamp: Int64, id: BSON, storeKey: [UInt8])]] {
        var unseen: [AggregateKey: [(timestamp: Int64, id: BSON, storeKey: [UInt8])]] = [:]
        for document in events where document["sid"]?.stringValue == nil {
            guard let id = document["aggregateId"]?.stringValue, case .datetime(let ms)? = document["timestamp"], let raw = document["_id"] else {
                continue
            }
            unseen[AggregateKey(type: document["aggregateType"]?.stringValue ?? "", id: id), default: []].append(
                (ms, raw, OutboxDocument.storeKey(of: raw)))
        }
        return unseen
    }

    /// Per aggregate, the highest scan id of these events that are pending or scheduled.
    static func highestPendingSid(in events: [Document]) -> [AggregateKey: String] {
        var highest: [AggregateKey: String] = [:]
        for document in events where isKnownOpen(document) {
            guard let id = document["aggregateId"]?.stringValue, let sid = document["sid"]?.stringValue else { continue }
            let key = AggregateKey(type: document["aggregateType"]?.stringValue ?? "", id: id)
            highest[key] = max(highest[key] ?? sid, sid)
        }
        return highest
    }

    /// A new scan id (an ObjectId's hex, at `now` on the database's clock) that sorts after
    /// `floor`: when that gives one that does not (a floor made by a clock ahead), the next id
    /// after `floor` (as a 96-bit number; a scan id that is not ObjectId hex gets a digit
    /// appended, which also sorts right after it).
    static func scanId(after floor: String?, now: Date) -> String {
        let fresh = ObjectId(time: now).hex
        guard let floor, fresh <= floor else { return fresh }
        let digits = Array("0123456789abcdef")
        var next = Array(floor)
        guard next.count == 24, next.allSatisfy({ digits.contains($0) }) else { return floor + "0" }
        for index in next.indices.reversed() {
            let value = digits.firstIndex(of: next[index])!
            if value < 15 {
                next[index] = digits[value + 1]
                return String(next)
            }
            next[index] = "0"
        }
        return floor + "0"  // all f: nothing above it in 24 digits
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

    /// The pending and new events of the given aggregates (order fields and `status` only), and
    /// the scheduled ones when `scheduled`, added to `read`. Only these are read, whatever an aggregate's delivered history: one query per
    /// status (an equality on `status` and an `$in` of aggregate ids, in small groups), which every
    /// server serves from the status-and-aggregate index; an `$in` of statuses, or of aggregate ids
    /// alone, reads the delivered events too on some servers (about a second for an aggregate
    /// with 50,000 delivered events, measured on SecantusDB).
    static func openEvents(of aggregates: [String], outbox: MongoCollection, scheduled: Bool, read: inout Int) throws -> [Document] {
        let ids = Set(aggregates).sorted()
        var events: [Document] = []
        let statuses = [BSON.string(OutboxSchema.Status.pending), .null] + (scheduled ? [.string(OutboxSchema.Status.scheduled)] : [])
        for start in stride(from: 0, to: ids.count, by: 40) {
            let group = BSON.array(ids[start..<min(start + 40, ids.count)].map { .string($0) })
            for status in statuses {
                events += try outbox.find(
                    ["status": status, "aggregateId": ["$in": group]],
                    options: ["projection": ["aggregateType": 1, "aggregateId": 1, "aggregateVersion": 1, "status": 1, "sid": 1, "timestamp": 1]])
            }
        }
        read += events.count
        return events
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
