import Foundation
import Outbox
import OutboxMongo

/// Events of one status that share a `lastError`: one line of the console's failure groups.
public struct EventGroup: Sendable, Equatable {
    /// The error they share; empty for events without one.
    public var lastError: String
    public var count: Int
    /// Their event types, sorted, at most `EventGroup.typesShown`.
    public var types: [String]
    /// When the oldest and the newest of them occurred.
    public var oldest: Date?
    public var newest: Date?

    public static let typesShown = 5
}

/// The pending backlog counted by event type and by partition (`nil`: not yet assigned by a
/// relay), and its events that failed grouped by their error.
public struct BacklogBreakdown: Sendable, Equatable {
    public var byType: [(type: String, count: Int)]
    public var byPartition: [(partition: Int?, count: Int)]
    /// Pending events with a `lastError` (they failed and wait for a retry), by error.
    public var failing: [EventGroup]

    public static func == (lhs: BacklogBreakdown, rhs: BacklogBreakdown) -> Bool {
        lhs.byType.elementsEqual(rhs.byType) { $0 == $1 } && lhs.byPartition.elementsEqual(rhs.byPartition) { $0 == $1 }
            && lhs.failing == rhs.failing
    }
}

extension OutboxAdmin {
    /// Events of `status` grouped by `lastError`, largest group first, at most `limit` groups.
    /// One pass over the status's entries of the `status_sid` index; no document is returned but
    /// the groups.
    public func groups(status: String = OutboxSchema.Status.parked, limit: Int = 100) async throws -> [EventGroup] {
        let collection = self.collection
        let match = EventFilter(status: status).query()
        let pipeline: [BSON] = [
            ["$match": .document(match)],
            [
                "$group": [
                    "_id": "$lastError", "count": ["$sum": 1], "types": ["$addToSet": "$type"], "oldest": ["$min": "$timestamp"],
                    "newest": ["$max": "$timestamp"],
                ]
            ],
            ["$sort": ["count": -1, "_id": 1]],
            ["$limit": .int64(Int64(limit))],
        ]
        let rows = try await pool.withConnection { try $0.collection(collection).aggregate(pipeline) }
        return rows.map { row in
            EventGroup(
                lastError: row["_id"]?.stringValue ?? "", count: row["count"]?.intValue ?? 0,
                types: Array((row["types"]?.arrayValue ?? []).compactMap(\.stringValue).sorted().prefix(EventGroup.typesShown)),
                oldest: row["oldest"]?.dateValue, newest: row["newest"]?.dateValue)
        }
    }

    /// The pending backlog by type (largest first, at most `limit` types), by partition, and its
    /// failed events by error: one pass over the pending events, grouped by type, partition and
    /// error together (a few hundred rows at most in practice; at most `rows`).
    public func backlog(limit: Int = 50, rows: Int = 10_000) async throws -> BacklogBreakdown {
        let collection = self.collection
        let pipeline: [BSON] = [
            ["$match": .document(EventFilter(status: OutboxSchema.Status.pending).query())],
            [
                "$group": [
                    "_id": ["type": "$type", "partition": "$partition", "error": "$lastError"], "count": ["$sum": 1],
                    "oldest": ["$min": "$timestamp"], "newest": ["$max": "$timestamp"],
                ]
            ],
            ["$limit": .int64(Int64(rows))],
        ]
        let found = try await pool.withConnection { try $0.collection(collection).aggregate(pipeline) }
        var types: [String: Int] = [:]
        var partitions: [Int?: Int] = [:]
        var failing: [String: EventGroup] = [:]
        for row in found {
            let key = row["_id"]?.documentValue ?? [:]
            let count = row["count"]?.intValue ?? 0
            let type = key["type"]?.stringValue ?? ""
            types[type, default: 0] += count
            partitions[key["partition"]?.intValue, default: 0] += count
            guard let error = key["error"]?.stringValue, !error.isEmpty else { continue }
            var group = failing[error] ?? EventGroup(lastError: error, count: 0, types: [], oldest: nil, newest: nil)
            group.count += count
            if !group.types.contains(type) { group.types.append(type) }
            group.oldest = [group.oldest, row["oldest"]?.dateValue].compactMap { $0 }.min()
            group.newest = [group.newest, row["newest"]?.dateValue].compactMap { $0 }.max()
            failing[error] = group
        }
        return BacklogBreakdown(
            byType: types.sorted { ($0.value, $1.key) > ($1.value, $0.key) }.prefix(limit).map { (type: $0.key, count: $0.value) },
            byPartition: partitions.sorted { ($0.key ?? -1) < ($1.key ?? -1) }.map { (partition: $0.key, count: $0.value) },
            failing: failing.values.map { group in
                var group = group
                group.types = Array(group.types.sorted().prefix(EventGroup.typesShown))
                return group
            }.sorted { ($0.count, $1.lastError) > ($1.count, $0.lastError) })
    }
}
