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

/// The pending backlog counted by event type and by partition (`nil`: not yet assigned by a relay).
public struct BacklogBreakdown: Sendable, Equatable {
    public var byType: [(type: String, count: Int)]
    public var byPartition: [(partition: Int?, count: Int)]

    public static func == (lhs: BacklogBreakdown, rhs: BacklogBreakdown) -> Bool {
        lhs.byType.elementsEqual(rhs.byType) { $0 == $1 } && lhs.byPartition.elementsEqual(rhs.byPartition) { $0 == $1 }
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

    /// The pending backlog by type (largest first, at most `limit` types) and by partition.
    public func backlog(limit: Int = 50) async throws -> BacklogBreakdown {
        let collection = self.collection
        let match = BSON.document(EventFilter(status: OutboxSchema.Status.pending).query())
        func counted(by field: String, limit: Int) -> [BSON] {
            [
                ["$match": match], ["$group": ["_id": .string("$\(field)"), "count": ["$sum": 1]]], ["$sort": ["count": -1, "_id": 1]],
                ["$limit": .int64(Int64(limit))],
            ]
        }
        let byType = counted(by: "type", limit: limit)
        let byPartition = counted(by: "partition", limit: 1024)
        return try await pool.withConnection { connection in
            let outbox = connection.collection(collection)
            let types = try outbox.aggregate(byType).map { (type: $0["_id"]?.stringValue ?? "", count: $0["count"]?.intValue ?? 0) }
            let partitions = try outbox.aggregate(byPartition).map { (partition: $0["_id"]?.intValue, count: $0["count"]?.intValue ?? 0) }
                .sorted { ($0.partition ?? -1) < ($1.partition ?? -1) }
            return BacklogBreakdown(byType: types, byPartition: partitions)
        }
    }
}
