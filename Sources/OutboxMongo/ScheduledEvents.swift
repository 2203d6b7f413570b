import Foundation
import Outbox

/// Scheduled delivery: events with a `deliverAt` still to come wait as `scheduled`, out of the
/// pending scan, with `dueAt` set and a scan id that sorts by it; each fetch takes those of the owned partitions that have come
/// due into its batch (they are marked from `scheduled`, under the partition's fence), and notes
/// the earliest due soon so the relay wakes for it instead of waiting for its next poll. An
/// operator cancels only what is due more than a second later (`OutboxAdmin.cancel`), so a
/// cancel and a publish never both happen.
extension MongoOutboxStore {
    /// What the look at scheduled events found.
    struct Schedule {
        /// Scheduled events come due: candidates of this fetch.
        var due: [Candidate] = []
        /// The earliest due time after now among the owned partitions' scheduled events within
        /// the look-ahead.
        var next: Date?
        /// Whether this fetch queried for due ones (scheduled events were seen lately, so the
        /// order checks look for them too).
        var active = false
        /// Whether it found any.
        var seen = false
    }

    /// How often a relay that has seen no scheduled event lately looks for one.
    static let scheduledLookInterval = Duration.seconds(1)
    /// How long after the last sign of scheduled events a relay queries for due ones at every
    /// fetch (after that, it only looks for one now and then).
    static let scheduledActiveFor = Duration.seconds(600)

    /// Reads the scheduled events of the `owned` partitions (nil: every partition) due within
    /// `lookahead`, earliest first (at most `limit`): those due now, decoded, and when the next
    /// comes due. One query, an equality on `status` and a range on the scan id, which for a
    /// scheduled event sorts by its due time (`OutboxSchema.scheduledScanId`): the index every
    /// pending scan uses serves it, and it reads only what is due soon (with the look-ahead twice
    /// the poll interval, a few of the next ones). An index of its own on `dueAt` cost every
    /// write of every event 15–20 % more on SecantusDB, scheduling or not.
    ///
    /// A relay that has seen no sign of scheduled events for `scheduledActiveFor` only looks for
    /// one every `scheduledLookInterval` (a deployment that never schedules pays one cheap query
    /// a second); once it has seen one, it queries at every fetch.
    static func dueScheduled(
        _ outbox: MongoCollection, owned: Set<Int>?, epochs: [Int: Int64], limit: Int, lookahead: Duration, into fetch: inout Fetch,
        options: Options, now: Date, instant: ContinuousClock.Instant
    ) throws -> Schedule {
        var schedule = Schedule()
        if fetch.state.scheduledSeen.map({ instant - $0 >= scheduledActiveFor }) ?? true {
            guard fetch.state.lastScheduledLook.map({ instant - $0 >= scheduledLookInterval }) ?? true else { return schedule }
            fetch.state.lastScheduledLook = instant
            guard try anyScheduled(outbox, read: &fetch.read) else { return schedule }
            fetch.state.scheduledSeen = instant
        }
        let horizon = now.addingTimeInterval(Double(lookahead.milliseconds) / 1000)
        let upper = OutboxSchema.scheduledScanId(dueAt: Int64((horizon.timeIntervalSince1970 * 1000).rounded()), upTo: true)
        var filter: Document = ["status": .string(OutboxSchema.Status.scheduled), "sid": ["$gte": "", "$lte": .string(upper)]]
        if let owned { filter["partition"] = ["$in": .array(owned.sorted().map { .int32(Int32($0)) })] }
        let soon = try outbox.find(filter, options: ["sort": ["sid": 1], "limit": .int64(Int64(max(limit, 1)))])
        fetch.read += soon.count
        let dueNow = soon.filter { ($0["dueAt"]?.dateValue).map { $0 <= now } ?? false }
        schedule.next = soon.compactMap { $0["dueAt"]?.dateValue }.filter { $0 > now }.min()
        schedule.active = true
        schedule.seen = !soon.isEmpty
        // Those that no longer decode (expired meanwhile, or changed by hand) are settled from `scheduled`.
        var refused = Fetch()
        schedule.due = decodeKnown(
            dueNow.filter { $0["partition"]?.intValue.map { epochs[$0] != nil } ?? false }, into: &refused, options: options, now: now)
        fetch.scheduledMalformed = refused.malformed
        fetch.scheduledExpired = refused.expired
        return schedule
    }

    /// Of these store keys, those of scheduled events this relay took into a batch, forgotten
    /// here: their marks are written from `scheduled`.
    func takeScheduled(_ keys: [[UInt8]]) -> Set<[UInt8]> {
        scheduledInFlight.withLock { inFlight in
            guard !inFlight.isEmpty else { return [] }
            var taken = Set<[UInt8]>()
            for key in keys where inFlight.remove(key) != nil { taken.insert(key) }
            return taken
        }
    }

    /// Whether the outbox holds any scheduled event: looked at after the scans, so an event
    /// scheduled before one they read is seen (the order checks then include scheduled events).
    static func anyScheduled(_ outbox: MongoCollection, read: inout Int) throws -> Bool {
        let found = try outbox.find(["status": .string(OutboxSchema.Status.scheduled)], options: ["limit": 1, "projection": ["_id": 1]])
        read += found.count
        return !found.isEmpty
    }

    /// Whether a message is not to be published yet at `now`.
    static func isScheduled(_ message: OutboxMessage, now: Date) -> Bool {
        message.deliverAt.map { $0 > Int64(now.timeIntervalSince1970 * 1000) } ?? false
    }

    /// The relay state of a scheduled event: out of the pending scan until `deliverAt`.
    static func scheduledState(deliverAt: Int64) -> Document {
        let at = BSON.datetime(deliverAt)
        return ["status": .string(OutboxSchema.Status.scheduled), "nextAttemptAt": at, "dueAt": at]
    }
}
