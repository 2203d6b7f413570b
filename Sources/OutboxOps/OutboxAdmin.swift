import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo

/// Which events an operator command applies to. Empty criteria match everything of the status.
public struct EventFilter: Sendable, Equatable {
    public var ids: [String] = []
    public var status: String?
    public var type: String?
    public var aggregateId: String?
    /// Events whose `lastError` is exactly this: one group of parked events.
    public var lastError: String?
    /// Events that occurred before now minus this.
    public var olderThan: Duration?
    /// Events that occurred at or after / before these instants.
    public var since: Date?
    public var until: Date?

    public init(
        ids: [String] = [], status: String? = nil, type: String? = nil, aggregateId: String? = nil, lastError: String? = nil,
        olderThan: Duration? = nil, since: Date? = nil, until: Date? = nil
    ) {
        self.ids = ids
        self.status = status
        self.type = type
        self.aggregateId = aggregateId
        self.lastError = lastError
        self.olderThan = olderThan
        self.since = since
        self.until = until
    }

    public var isEmpty: Bool { self == EventFilter(status: status) }

    /// The MongoDB query; `defaultStatus` applies when the filter names none.
    public func query(defaultStatus: String? = nil, now: Date = Date()) -> Document {
        var query = Document()
        if !ids.isEmpty { query["_id"] = ["$in": .array(ids.flatMap { OutboxDocument.idCandidates($0) })] }
        if let status = status ?? defaultStatus {
            // Pending includes documents the relay has not seen yet (no status of their own), not
            // scheduled ones (their own status).
            query["status"] =
                status == OutboxSchema.Status.pending
                ? ["$nin": .array((OutboxSchema.Status.final + [OutboxSchema.Status.scheduled]).map { .string($0) })] : .string(status)
        }
        if let type { query["type"] = .string(type) }
        if let aggregateId { query["aggregateId"] = .string(aggregateId) }
        // An empty error selects the events without one (the console's "(no error)" group).
        if let lastError { query["lastError"] = lastError.isEmpty ? ["$in": [.null, ""]] : .string(lastError) }
        var timestamp = Document()
        if let olderThan { timestamp["$lt"] = .date(now.addingTimeInterval(-Double(olderThan.milliseconds) / 1000)) }
        if let since { timestamp["$gte"] = .date(since) }
        if let until {
            let bound = BSON.date(until)
            if let existing = timestamp["$lt"], case .datetime(let a) = existing, case .datetime(let b) = bound, a < b {
                // keep the earlier bound
            } else {
                timestamp["$lt"] = bound
            }
        }
        if !timestamp.isEmpty { query["timestamp"] = .document(timestamp) }
        return query
    }
}

/// A document a relay could neither mark nor park, as it recorded it, with its status now.
public struct UnwritableDocument: Sendable {
    public var id: BSON
    public var relay: String
    public var at: Date?
    public var error: String
    /// Its status in the outbox now (`pending` for one no relay wrote; nil when it is gone).
    public var status: String?
}

/// What a changing command did (or, with a dry run, would do).
public struct ChangeResult: Sendable, Equatable {
    public var matched: Int
    public var changed: Int
    public var dryRun: Bool
    public var ids: [String]
}

/// What `outboxctl init` did (or, with a dry run, would do).
public struct InitResult: Sendable, Equatable {
    /// One line per change, in order; empty when the database was ready.
    public var actions: [String]
    public var dryRun: Bool
    /// With a validator: whether the server refused a document that breaks the contract (nil
    /// when not checked).
    public var validatorEnforced: Bool?
}

/// Operator actions on the outbox, used by `outboxctl` and its tests.
public struct OutboxAdmin: Sendable {
    public let pool: MongoClientPool
    public let collection: String

    public init(pool: MongoClientPool, collection: String = OutboxSchema.defaultCollection) {
        self.pool = pool
        self.collection = collection
    }

    /// Prepares a database for a service that writes the outbox: the collection, the relay's
    /// indexes and, with `validator`, a `$jsonSchema` validator of the writer's contract, so that
    /// a malformed insert fails inside the writer's own transaction. Idempotent; changes nothing
    /// with `dryRun`. With a validator it checks, in a scratch collection, that the server
    /// enforces it.
    public func initialize(validator: Bool, consoleIndexes: Bool = false, dryRun: Bool) async throws -> InitResult {
        let collection = self.collection
        return try await pool.withConnection { connection in
            var actions: [String] = []
            let existing = try connection.runCommand(["listCollections": 1, "filter": ["name": .string(collection)]])
            let info = existing["cursor"]?.documentValue?["firstBatch"]?.arrayValue?.first?.documentValue
            let rules: Document = ["validator": .document(OutboxSchema.validator), "validationLevel": "strict", "validationAction": "error"]
            if info == nil {
                actions.append("create collection \(collection)" + (validator ? " with the contract's validator" : ""))
                if !dryRun {
                    var command: Document = ["create": .string(collection)]
                    if validator { for (key, value) in rules.fields { command[key] = value } }
                    try connection.runCommand(command)
                }
            } else if validator, info?["options"]?.documentValue?["validator"] != .document(OutboxSchema.validator) {
                actions.append("set the contract's validator on \(collection)")
                if !dryRun {
                    var command: Document = ["collMod": .string(collection)]
                    for (key, value) in rules.fields { command[key] = value }
                    try connection.runCommand(command)
                }
            }
            var present = Set<String>()
            if info != nil {
                let indexes = try connection.runCommand(["listIndexes": .string(collection)])
                for index in indexes["cursor"]?.documentValue?["firstBatch"]?.arrayValue ?? [] {
                    if let name = index.documentValue?["name"]?.stringValue { present.insert(name) }
                }
            }
            let wanted = OutboxSchema.indexes + (consoleIndexes ? OutboxSchema.consoleIndexes : [])
            let missing = wanted.filter { !present.contains($0["name"]?.stringValue ?? "") }
            for index in missing { actions.append("create index \(index["name"]?.stringValue ?? "?") on \(collection)") }
            if !dryRun, !missing.isEmpty { try connection.collection(collection).createIndexes(missing) }

            var enforced: Bool?
            if validator && !dryRun {
                // Does the server enforce validators? Try a document the contract refuses, in a
                // scratch collection with the same rules.
                let scratch = "outboxctl_init_check_\(ObjectId().hex)"
                var command: Document = ["create": .string(scratch)]
                for (key, value) in rules.fields { command[key] = value }
                try connection.runCommand(command)
                defer { try? connection.collection(scratch).drop() }
                do {
                    try connection.collection(scratch).insertOne(["type": .int32(1)])
                    enforced = false
                } catch let error as MongoError where error.code == 121 {
                    enforced = true
                }
            }
            return InitResult(actions: actions, dryRun: dryRun, validatorEnforced: enforced)
        }
    }

    public func status() async throws -> OutboxStatus {
        let collection = self.collection
        return try await pool.withConnection { connection in
            let outbox = connection.collection(collection)
            // The database's clock, so ages and expiries do not depend on this machine's.
            let now = try connection.runCommand(["isMaster": 1], database: "admin")["localTime"]?.dateValue ?? Date()
            let scheduled = try outbox.countDocuments(["status": .string(OutboxSchema.Status.scheduled)])
            let pending = try outbox.countDocuments(OutboxSchema.notFinal) - scheduled
            // A scheduled event's scan id sorts by its due time.
            let nextScheduled = try outbox.find(
                ["status": .string(OutboxSchema.Status.scheduled)], options: ["sort": ["sid": 1], "limit": 1, "projection": ["dueAt": 1]]
            ).first?["dueAt"]?.dateValue
            let cancelled = try outbox.countDocuments(["status": .string(OutboxSchema.Status.cancelled)])
            let unseen = try outbox.countDocuments(OutboxSchema.unseen)
            let due = try outbox.countDocuments(["status": .string(OutboxSchema.Status.pending), "nextAttemptAt": ["$lte": .date(now)]]) + unseen
            let parked = try outbox.countDocuments(["status": .string(OutboxSchema.Status.parked)])
            let expired = try outbox.countDocuments(["status": .string(OutboxSchema.Status.expired)])
            let delivered = try outbox.countDocuments(["status": .string(OutboxSchema.Status.delivered)])
            let lastMinute = try outbox.countDocuments([
                "status": .string(OutboxSchema.Status.delivered), "deliveredAt": ["$gte": .date(now.addingTimeInterval(-60))],
            ])
            let oldest = try OutboxSchema.oldestPending(outbox)
            let leases = try connection.collection(MongoLeaseStore.leasesCollection).find([:], options: ["sort": ["_id": 1]]).map { lease in
                OutboxStatus.Lease(
                    partition: lease["_id"]?.intValue ?? -1, owner: lease["owner"]?.stringValue, epoch: lease["epoch"]?.intValue ?? 0,
                    expiresIn: (lease["expiresAt"]?.dateValue ?? .distantPast).timeIntervalSince(now))
            }
            let unwritable = try Self.unwritable(in: connection, collection: collection).filter {
                $0.status.map { !OutboxSchema.Status.final.contains($0) } ?? false
            }
            return OutboxStatus(
                pending: pending, unseen: unseen, due: due, parked: parked, expired: expired, scheduled: scheduled, nextScheduled: nextScheduled,
                cancelled: cancelled, delivered: delivered, deliveredLastMinute: lastMinute,
                oldestPendingAge: oldest.map { now.timeIntervalSince($0) }, leases: leases, databaseTime: now, unwritable: unwritable.count)
        }
    }

    /// The documents relays recorded as unwritable (neither marked nor parked), newest first,
    /// with their status now. An operator mends such a document (removes the field the server
    /// refuses to update, or the validator rule) and the next relay pass settles it.
    public func unwritable() async throws -> [UnwritableDocument] {
        let collection = self.collection
        return try await pool.withConnection { try Self.unwritable(in: $0, collection: collection) }
    }

    static func unwritable(in connection: MongoConnection, collection: String) throws -> [UnwritableDocument] {
        let records = try connection.collection(OutboxSchema.unwritableCollection(of: collection)).find(
            [:], options: ["sort": ["at": -1], "limit": 1000])
        guard !records.isEmpty else { return [] }
        let ids = records.compactMap { $0["_id"] }
        let statuses = try connection.collection(collection).find(["_id": ["$in": .array(ids)]], options: ["projection": ["status": 1]])
        let statusOf = Dictionary(
            statuses.map { (ExtendedJSON.render($0["_id"] ?? .null), $0["status"]?.stringValue ?? OutboxSchema.Status.pending) },
            uniquingKeysWith: { a, _ in a })
        return records.map { record in
            let id = record["_id"] ?? .null
            return UnwritableDocument(
                id: id, relay: record["relay"]?.stringValue ?? "", at: record["at"]?.dateValue, error: record["error"]?.stringValue ?? "",
                status: statusOf[ExtendedJSON.render(id)])
        }
    }

    /// Matching events without their `data`, `limit` of them after skipping `offset`.
    public func list(_ filter: EventFilter, limit: Int = 50, offset: Int = 0) async throws -> [Document] {
        let collection = self.collection
        let query = filter.query()
        // Scheduled events soonest first; the others in id order.
        let sort: Document = filter.status == OutboxSchema.Status.scheduled ? ["dueAt": 1, "_id": 1] : ["_id": 1]
        var options: Document = ["sort": .document(sort), "limit": .int64(Int64(limit)), "projection": ["data": 0]]
        if offset > 0 { options["skip"] = .int64(Int64(offset)) }
        let chosen = options
        return try await pool.withConnection { connection in
            try connection.collection(collection).find(query, options: chosen)
        }
    }

    /// Cancels scheduled events before they are due: they become `cancelled` (kept in the
    /// history, never published). Only while the event is due more than `margin` later on the
    /// database's clock: a relay publishes what is due by that clock, so one due sooner may be on
    /// its way (a relay reads it as scheduled and marks it from there).
    public func cancel(ids: [String], dryRun: Bool, margin: Duration = .seconds(1)) async throws -> ChangeResult {
        let collection = self.collection
        return try await pool.withConnection { connection in
            let outbox = connection.collection(collection)
            let now = try connection.runCommand(["isMaster": 1], database: "admin")["localTime"]?.dateValue ?? Date()
            let raw = BSON.array(ids.flatMap { OutboxDocument.idCandidates($0) })
            let later = BSON.document(["$gt": .date(now.addingTimeInterval(Double(margin.milliseconds) / 1000))])
            let unseen: Document = ["_id": ["$in": raw], "status": .null, "sid": OutboxSchema.firstSight["sid"]!, "deliverAt": later]
            let scheduled: Document = ["_id": ["$in": raw], "status": .string(OutboxSchema.Status.scheduled), "dueAt": later]
            let found = try (outbox.find(unseen, options: ["projection": ["_id": 1]]) + outbox.find(scheduled, options: ["projection": ["_id": 1]]))
                .compactMap { $0["_id"] }
            let foundIds = found.compactMap(OutboxDocument.messageId(of:))
            guard !dryRun, !found.isEmpty else { return ChangeResult(matched: found.count, changed: 0, dryRun: dryRun, ids: foundIds) }
            let update: Document = [
                "$set": ["status": .string(OutboxSchema.Status.cancelled), "cancelledAt": .date(now)], "$unset": ["dueAt": "", "nextAttemptAt": ""],
            ]
            // The unseen first: one a relay schedules meanwhile is cancelled by the second.
            let changed = try outbox.updateMany(unseen, update).modified + outbox.updateMany(scheduled, update).modified
            return ChangeResult(matched: found.count, changed: changed, dryRun: false, ids: foundIds)
        }
    }

    public func show(id: String) async throws -> Document? {
        let collection = self.collection
        return try await pool.withConnection { try $0.collection(collection).findOne(["_id": ["$in": .array(OutboxDocument.idCandidates(id))]]) }
    }

    /// An aggregate's events in version order: the event-store view.
    public func history(aggregateId: String, aggregateType: String? = nil) async throws -> [Document] {
        let collection = self.collection
        var query: Document = ["aggregateId": .string(aggregateId)]
        if let aggregateType { query["aggregateType"] = .string(aggregateType) }
        let filter = query
        return try await pool.withConnection { connection in
            try connection.collection(collection).find(filter, options: ["sort": ["aggregateVersion": 1]])
        }
    }

    /// Makes pending events due now (and resets their backoff). With `stuck`, the filter's
    /// `olderThan` selects pending events that have waited longer than that.
    public func retry(_ filter: EventFilter, dryRun: Bool) async throws -> ChangeResult {
        try await change(filter, defaultStatus: OutboxSchema.Status.pending, dryRun: dryRun, requiredStatus: .string(OutboxSchema.Status.pending)) {
            now in
            ["$set": ["nextAttemptAt": .date(now)]]
        }
    }

    /// Parks pending and scheduled events (including ones no relay has seen yet) so the relay
    /// leaves them alone.
    public func park(_ filter: EventFilter, reason: String, dryRun: Bool) async throws -> ChangeResult {
        try await change(filter, defaultStatus: OutboxSchema.Status.pending, dryRun: dryRun, requiredStatus: OutboxSchema.notFinal["status"]!) {
            now in
            [
                "$set": [
                    "status": .string(OutboxSchema.Status.parked), "lastError": .string("parked by operator: \(reason)"), "parkedAt": .date(now),
                ],
                "$unset": ["dueAt": ""],
            ]
        }
    }

    /// Returns parked events to pending, due now, with a fresh attempt count. (One parked before a
    /// relay gave it its state, e.g. as malformed, gets that state from the relay's next sweep.)
    public func unpark(_ filter: EventFilter, dryRun: Bool) async throws -> ChangeResult {
        try await change(filter, defaultStatus: OutboxSchema.Status.parked, dryRun: dryRun, requiredStatus: .string(OutboxSchema.Status.parked)) {
            now in
            [
                "$set": ["status": .string(OutboxSchema.Status.pending), "attempts": .int32(0), "nextAttemptAt": .date(now)],
                "$unset": ["parkedAt": ""],
            ]
        }
    }

    /// Deletes delivered events older than `olderThan` (by delivery time).
    public func purge(olderThan: Duration, dryRun: Bool) async throws -> ChangeResult {
        let collection = self.collection
        let cutoff = Date().addingTimeInterval(-Double(olderThan.milliseconds) / 1000)
        let query: Document = ["status": .string(OutboxSchema.Status.delivered), "deliveredAt": ["$lt": .date(cutoff)]]
        return try await pool.withConnection { connection in
            let outbox = connection.collection(collection)
            let matched = try outbox.countDocuments(query)
            guard !dryRun else { return ChangeResult(matched: matched, changed: 0, dryRun: true, ids: []) }
            let deleted = try outbox.deleteMany(query)
            return ChangeResult(matched: matched, changed: deleted, dryRun: false, ids: [])
        }
    }

    private func change(
        _ filter: EventFilter, defaultStatus: String, dryRun: Bool, requiredStatus: BSON, update: @escaping @Sendable (Date) -> Document
    ) async throws -> ChangeResult {
        let collection = self.collection
        var query = filter.query(defaultStatus: defaultStatus)
        // The command's own precondition wins over a --status given by mistake.
        query["status"] = requiredStatus
        let selection = query
        return try await pool.withConnection { connection in
            let outbox = connection.collection(collection)
            let raw = try outbox.find(selection, options: ["projection": ["_id": 1]]).compactMap { $0["_id"] }
            let ids = raw.compactMap(OutboxDocument.messageId(of:))
            guard !dryRun, !raw.isEmpty else { return ChangeResult(matched: raw.count, changed: 0, dryRun: dryRun, ids: ids) }
            var guarded = selection
            guarded["_id"] = ["$in": .array(raw)]
            let result = try outbox.updateMany(guarded, update(Date()))
            return ChangeResult(matched: raw.count, changed: result.modified, dryRun: false, ids: ids)
        }
    }

    /// Publishes matching events again, with their original message ids, to `exchange` with
    /// `routingKey` (or each event's own). The outbox is not changed.
    public func replay(
        _ filter: EventFilter, exchange: String?, routingKey: String?, amqp: AMQPConfiguration, dryRun: Bool, logger: Logger,
        limit: Int = 100_000, decoding: OutboxDocument.Options = .init(maxBodyBytes: 128 << 20)
    ) async throws -> ChangeResult {
        let collection = self.collection
        let query = filter.query()
        let documents = try await pool.withConnection { connection in
            try connection.collection(collection).find(query, options: ["sort": ["_id": 1], "limit": .int64(Int64(limit))])
        }
        var messages: [OutboxMessage] = []
        for document in documents {
            guard case .success(var message) = OutboxDocument.decode(document, options: decoding, isNew: true) else { continue }
            if let exchange { message.exchange = exchange }
            if let routingKey { message.routingKey = routingKey }
            messages.append(message)
        }
        guard !dryRun, !messages.isEmpty else {
            return ChangeResult(matched: messages.count, changed: 0, dryRun: dryRun, ids: messages.map(\.id))
        }
        let publisher = ConfirmPublisher(configuration: amqp, options: .init(appId: "outboxctl"), logger: logger)
        var acked = 0
        for chunk in stride(from: 0, to: messages.count, by: 1000) {
            let outcomes = await publisher.publish(Array(messages[chunk..<min(chunk + 1000, messages.count)]))
            acked += outcomes.filter(\.isDelivered).count
        }
        await publisher.close()
        return ChangeResult(matched: messages.count, changed: acked, dryRun: false, ids: messages.map(\.id))
    }
}

/// What `outboxctl repartition` did (or, with a dry run, would do).
public struct RepartitionResult: Sendable, Equatable {
    /// The partition count the outbox was set up for (nil: no relay has run on it yet).
    public var from: Int?
    public var to: Int
    /// Pending and parked events whose partition changes.
    public var moved: Int
    /// The epoch every partition's lease starts from: above every fence an event carries.
    public var epoch: Int64
    public var dryRun: Bool
}

/// `outboxctl repartition` refused: relays are running.
public struct RelaysRunning: Error, CustomStringConvertible {
    public var relays: [String]
    public var description: String {
        "\(relays.count) relay(s) are running (\(relays.joined(separator: ", "))): stop every relay first; "
            + "a stopped relay's heartbeat is gone at once, a killed one's within twice its lease TTL"
    }
}

extension OutboxAdmin {
    /// Changes the number of partitions while no relay runs: every pending and parked event moves to
    /// the partition of its aggregate under the new count (all of one aggregate's events stay
    /// together, so per-aggregate order holds), and the lease collection gets exactly `partitions`
    /// free leases whose epoch is above every fence in the outbox (the first owner of each fences
    /// out anything older). Then start the relays with the new `--partitions`. New documents (no
    /// state yet) and delivered events need nothing. Safe to run again after an interruption.
    public func repartition(to partitions: Int, dryRun: Bool) async throws -> RepartitionResult {
        let collection = self.collection
        return try await pool.withConnection { connection in
            let relays = connection.collection(MongoLeaseStore.relaysCollection)
            let live = try relays.find(["$expr": MongoLeaseStore.live], options: ["projection": ["_id": 1]]).compactMap { $0["_id"]?.stringValue }
            if !live.isEmpty && !dryRun { throw RelaysRunning(relays: live.sorted()) }

            let leases = connection.collection(MongoLeaseStore.leasesCollection)
            let existing = try leases.find([:], options: ["projection": ["epoch": 1]])
            let from = existing.isEmpty ? nil : existing.count
            // Fences never exceed the epoch of the lease that wrote them; events moved here from
            // any partition carry at most the highest epoch of all.
            let epoch = (existing.compactMap { $0["epoch"]?.intValue }.max()).map { Int64($0) + 1 } ?? 0

            let outbox = connection.collection(collection)
            var moves: [(filter: Document, update: BSON)] = []
            for status in [OutboxSchema.Status.pending, OutboxSchema.Status.scheduled, OutboxSchema.Status.parked] {
                let events = try outbox.find(["status": .string(status)], options: ["projection": ["aggregateId": 1, "partition": 1]])
                for event in events {
                    guard let id = event["_id"], let aggregateId = event["aggregateId"]?.stringValue else { continue }
                    let target = EventNaming.partition(ofAggregate: aggregateId, partitions: partitions)
                    guard event["partition"]?.intValue != target else { continue }
                    moves.append((["_id": id, "status": .string(status)], ["$set": ["partition": .int32(Int32(target))]]))
                }
            }
            guard !dryRun else { return RepartitionResult(from: from, to: partitions, moved: moves.count, epoch: epoch, dryRun: true) }

            for start in stride(from: 0, to: moves.count, by: 1000) {
                _ = try outbox.bulkUpdate(Array(moves[start..<min(start + 1000, moves.count)]))
            }
            _ = try leases.deleteMany(["_id": ["$gte": .int32(Int32(partitions))]])
            for partition in 0..<partitions {
                _ = try leases.updateOne(
                    ["_id": .int32(Int32(partition))], ["$set": ["owner": .null, "expiresAt": .datetime(0), "epoch": .int64(epoch)]], upsert: true)
            }
            return RepartitionResult(from: from, to: partitions, moved: moves.count, epoch: epoch, dryRun: false)
        }
    }
}
