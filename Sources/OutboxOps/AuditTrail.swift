import Foundation
import Outbox
import OutboxMongo

/// One operator action as the audit trail keeps it.
public struct AuditEntry: Sendable, Equatable {
    public var at: Date
    /// Who: the token's name (never the token).
    public var actor: String
    public var role: String
    /// `retry`, `park`, `unpark`, `cancel`, `purge`…
    public var action: String
    /// What was selected: ids (the first `AuditTrail.idsKept`), a group's error, filters.
    public var selection: Document
    public var matched: Int
    public var changed: Int
    public var dryRun: Bool
    /// Where the action came from: `console api`, `console page`.
    public var via: String

    public init(
        at: Date = Date(), actor: String, role: String, action: String, selection: Document, matched: Int, changed: Int, dryRun: Bool,
        via: String
    ) {
        self.at = at
        self.actor = actor
        self.role = role
        self.action = action
        self.selection = selection
        self.matched = matched
        self.changed = changed
        self.dryRun = dryRun
        self.via = via
    }

    /// As `outbox_audit` stores it and the API and `outboxctl audit --json` show it.
    public var document: Document {
        [
            "at": .date(at), "actor": .string(actor), "role": .string(role), "action": .string(action), "selection": .document(selection),
            "matched": .int64(Int64(matched)), "changed": .int64(Int64(changed)), "dryRun": .bool(dryRun), "via": .string(via),
        ]
    }
}

/// The `outbox_audit` collection beside the outbox: every operator action of the console, dry runs
/// included, newest last.
public struct AuditTrail: Sendable {
    public static let collection = "outbox_audit"
    /// How many of a selection's ids an entry keeps; the count says how many there were.
    public static let idsKept = 100

    public let pool: MongoClientPool

    public init(pool: MongoClientPool) { self.pool = pool }

    public func record(_ entry: AuditEntry) async throws {
        let document = entry.document
        try await pool.withConnection { try $0.collection(Self.collection).insertOne(document) }
    }

    /// The latest `limit` entries, newest first; only `action`'s when given.
    public func recent(limit: Int = 50, action: String? = nil) async throws -> [AuditEntry] {
        var query = Document()
        if let action { query["action"] = .string(action) }
        let filter = query
        let documents = try await pool.withConnection { connection in
            try connection.collection(Self.collection).find(filter, options: ["sort": ["_id": -1], "limit": .int64(Int64(limit))])
        }
        return documents.map { d in
            AuditEntry(
                at: d["at"]?.dateValue ?? Date(timeIntervalSince1970: 0), actor: d["actor"]?.stringValue ?? "", role: d["role"]?.stringValue ?? "",
                action: d["action"]?.stringValue ?? "", selection: d["selection"]?.documentValue ?? [:], matched: d["matched"]?.intValue ?? 0,
                changed: d["changed"]?.intValue ?? 0, dryRun: d["dryRun"]?.boolValue ?? false, via: d["via"]?.stringValue ?? "")
        }
    }

    /// A selection of ids as an entry keeps it.
    public static func selection(ids: [String]) -> Document {
        ["ids": .array(ids.prefix(idsKept).map { .string($0) }), "idCount": .int64(Int64(ids.count))]
    }
}
