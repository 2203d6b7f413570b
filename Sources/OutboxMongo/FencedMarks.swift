import Foundation
import Logging
import Outbox

/// Every write of the relay's outcomes: delivered and failed marks, parks, hand-overs, under the
/// partitions' fences, one document at a time when a statement is refused.
extension MongoOutboxStore {
    public func markDelivered(_ messages: [OutboxMessage], leases: [PartitionLease]) async throws -> Set<Int> {
        let scheduled = takeScheduled(messages.map(\.storeKey))
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
                if scheduled.contains(message.storeKey) {
                    var write = FencedWrite(
                        message: message,
                        update: [
                            "$set": ["status": .string(OutboxSchema.Status.delivered)], "$currentDate": ["deliveredAt": true],
                            "$inc": ["attempts": 1], "$unset": ["lastError": "", "nextAttemptAt": "", "dueAt": ""],
                        ])
                    write.from = OutboxSchema.Status.scheduled
                    return write
                }
                guard message.isFirstSight else { return FencedWrite(message: message, update: update) }
                let first: BSON = [
                    "$set": ["status": .string(OutboxSchema.Status.delivered), "attempts": .int32(Int32(clamping: message.attempts + 1))],
                    "$currentDate": ["deliveredAt": true], "$unset": ["lastError": "", "nextAttemptAt": ""],
                ]
                return FencedWrite(message: message, update: first)
            }, leases: leases)
    }

    public func markFailed(_ failures: [FailedDelivery], leases: [PartitionLease]) async throws -> Set<Int> {
        let now = clock.now()
        let scheduled = takeScheduled(failures.map(\.storeKey))
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
            var write = FencedWrite(
                key: failure.storeKey, id: failure.id, partition: failure.partition, isNew: failure.isFirstSight, update: ["$set": .document(fields)])
            if scheduled.contains(failure.storeKey) {
                // Out of the schedule: a retry waits in the pending scan like any other.
                write.update = ["$set": .document(fields), "$unset": ["dueAt": ""]]
                write.from = OutboxSchema.Status.scheduled
            }
            return write
        }
        return try await fencedUpdate(writes, leases: leases)
    }

    /// Parks documents the relay cannot publish, with the reason, so they never block the rest;
    /// `expired`: settles events past their `expiresAt` as expired (not an error: counted in
    /// `outbox_expired_events_total`). New documents are settled by a conditional update on their
    /// still having no state; known ones while they have the status `from`.
    func park(
        _ malformed: [(id: BSON, partition: Int, reason: String, isNew: Bool)], leases: [PartitionLease], expired: Bool = false,
        from: String = OutboxSchema.Status.pending
    ) async throws {
        for item in malformed.prefix(20) {
            logger.log(
                level: expired ? .notice : .error, expired ? "outbox event expired before delivery" : "parking malformed outbox document",
                metadata: [LogKey.outboxEventID: "\(ExtendedJSON.render(item.id))", LogKey.reason: "\(item.reason)"])
        }
        if malformed.count > 20 { logger.log(level: expired ? .notice : .error, "\(malformed.count - 20) more outbox documents settled alike") }
        let now = clock.now()
        func fields(_ item: (id: BSON, partition: Int, reason: String, isNew: Bool)) -> Document {
            expired
                ? ["status": .string(OutboxSchema.Status.expired), "expiredAt": .date(now), "partition": .int32(Int32(item.partition))]
                : [
                    "status": .string(OutboxSchema.Status.parked), "lastError": .string("malformed: \(item.reason)"), "parkedAt": .date(now),
                    "partition": .int32(Int32(item.partition)),
                ]
        }
        if expired { metrics.expiredEvents.increment(by: malformed.count) }
        let known = malformed.filter { !$0.isNew }
        _ = try await fencedUpdate(
            known.map { item in
                var write = FencedWrite(id: item.id, partition: item.partition, isNew: false, update: ["$set": .document(fields(item))])
                if from == OutboxSchema.Status.scheduled { write.update = ["$set": .document(fields(item)), "$unset": ["dueAt": ""]] }
                write.from = from
                return write
            }, leases: leases)
        let new = malformed.filter(\.isNew)
        guard !new.isEmpty else { return }
        let collection = options.collection
        let statements: [(filter: Document, update: BSON, multi: Bool)] = new.map { item in
            // Whatever non-final status it was found with (none, unknown, or pending without state).
            (
                ["_id": item.id, "status": ["$nin": .array(OutboxSchema.Status.final.map { .string($0) })], "sid": OutboxSchema.firstSight["sid"]!],
                ["$set": .document(fields(item))], false
            )
        }
        let refused = try await pool.withConnection { try Self.writeIsolated($0.collection(collection), statements).refused }
        await quarantine(refused)
    }

    /// Gives new documents of other relays' partitions (and pending ones written without state)
    /// the relay's state, so their owners' scans find them, in the order they were read; moves
    /// pending events whose partition is out of range to their partition.
    func stamp(handOver: [(message: OutboxMessage, sid: String)], incomplete: [OutboxMessage], rehome: [(id: BSON, from: BSON, to: Int)]) async throws
    {
        let now = clock.now()
        var statements: [(filter: Document, update: BSON, multi: Bool)] = []
        var partitionOf: [String: Int] = [:]
        for (message, sid, isNew) in handOver.map({ ($0.message, $0.sid, true) }) + incomplete.map({ ($0, ObjectId(time: now).hex, false) }) {
            let id = try OutboxDocument.bson(storeKey: message.storeKey)
            let filter = (["_id": id] as Document).merging(
                isNew ? OutboxSchema.firstSight : ["status": .string(OutboxSchema.Status.pending), "partition": .null])
            var state = Self.relayState(for: message, now: now, status: OutboxSchema.Status.pending, sid: sid)
            if Self.isScheduled(message, now: now) {
                for (key, value) in Self.scheduledState(deliverAt: message.deliverAt ?? 0).fields { state[key] = value }
            }
            statements.append((filter, ["$set": .document(state)], false))
            partitionOf[ExtendedJSON.render(id)] = message.partition
        }
        for item in rehome {
            statements.append(
                (
                    ["_id": item.id, "status": .string(OutboxSchema.Status.pending), "partition": item.from],
                    ["$set": ["partition": .int32(Int32(item.to))]], false
                ))
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
    static func relayState(for message: OutboxMessage, now: Date, status: String, sid: String) -> Document {
        [
            "status": .string(status), "partition": .int32(Int32(message.partition)), "sid": .string(sid),
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
    func parkUnwritable(
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
        let now = clock.now()
        var statements: [(filter: Document, update: BSON, multi: Bool)] = []
        for item in refused {
            let key = ExtendedJSON.render(item.id)
            let problems = documents[key].map(OutboxDocument.relayFieldProblems) ?? []
            let reason =
                problems.isEmpty
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
        metrics.parkedUnwritable.increment(by: refused.count - stillRefused.count)
        await quarantine(stillRefused)
    }

    /// Documents that could be neither marked nor parked: this relay publishes them no more
    /// (each would go out again at every fetch) and reports them, in its log, in
    /// `outbox_unwritable_documents`, and in the outbox's `_unwritable` collection, which
    /// `outboxctl unwritable` and `status` read. Another relay, or an operator who mends the
    /// document, picks them up.
    func quarantine(_ refused: [(id: BSON, message: String)]) async {
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
        metrics.unwritable.record(count)
        let (collection, owner, now) = (OutboxSchema.unwritableCollection(of: options.collection), owner, clock.now())
        do {
            try await pool.withConnection { connection in
                let records = connection.collection(collection)
                for item in refused {
                    _ = try records.updateOne(
                        ["_id": item.id],
                        ["$set": ["relay": .string(owner), "at": .date(now), "error": .string(item.message)], "$inc": ["times": 1]],
                        upsert: true)
                }
            }
        } catch {
            // The log line and the gauge still say it.
            logger.warning(
                "could not record the unwritable documents", metadata: [LogKey.outboxCollection: "\(collection)", LogKey.error: "\(error)"])
        }
    }

    struct FencedWrite {
        var id: BSON
        var partition: Int
        var isNew: Bool
        var update: BSON
        /// The status a known event is written from: pending, or scheduled for one published
        /// when it came due.
        var from = OutboxSchema.Status.pending

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
    func fencedUpdate(_ writes: [FencedWrite], leases: [PartitionLease]) async throws -> Set<Int> {
        guard !writes.isEmpty else { return [] }
        let epochs = Dictionary(leases.map { ($0.partition, $0.epoch) }, uniquingKeysWith: max)
        let refused = Set(writes.map(\.partition).filter { epochs[$0] == nil })
        let allowed = writes.filter { epochs[$0.partition] != nil }
        let collection = options.collection
        let statements = Self.fencedStatements(allowed, epochs: epochs, now: clock.now())
        let (matched, unwritable) = try await pool.withConnection { try Self.writeIsolated($0.collection(collection), statements) }
        if !unwritable.isEmpty {
            let partitionOf = Dictionary(allowed.map { (ExtendedJSON.render($0.id), $0.partition) }, uniquingKeysWith: { a, _ in a })
            let intended = Dictionary(
                allowed.compactMap { write in
                    write.update.documentValue?["$set"]?.documentValue?["status"]?.stringValue.map { (ExtendedJSON.render(write.id), $0) }
                },
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
            var from: String
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
            let key = Shared(epoch: epoch, update: write.update, newIn: write.isNew ? write.partition : nil, from: write.from)
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
                    .merging(key.newIn == nil ? ["status": .string(key.from)] : OutboxSchema.firstSight)
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
        if scanId { state["sid"] = .string(ObjectId(time: now).hex) }
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
