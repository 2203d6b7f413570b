import Foundation
import Outbox
import OutboxMongo
import OutboxOps

/// What an action applies to: events by id, or a group (events of a status sharing a
/// `lastError`), narrowed by type or aggregate. Never everything by accident: an empty selection is
/// refused.
public struct EventSelection: Sendable, Equatable {
    public var ids: [String] = []
    public var status: String?
    public var lastError: String?
    public var type: String?
    public var aggregateId: String?

    public init(ids: [String] = [], status: String? = nil, lastError: String? = nil, type: String? = nil, aggregateId: String? = nil) {
        self.ids = ids
        self.status = status
        self.lastError = lastError
        self.type = type
        self.aggregateId = aggregateId
    }

    public var isEmpty: Bool { ids.isEmpty && lastError == nil && type == nil && aggregateId == nil }

    var filter: EventFilter { EventFilter(ids: ids, status: status, type: type, aggregateId: aggregateId, lastError: lastError) }

    /// As the audit trail keeps it.
    var audited: Document {
        var document = ids.isEmpty ? Document() : AuditTrail.selection(ids: ids)
        for (key, value) in [("status", status), ("lastError", lastError), ("type", type), ("aggregateId", aggregateId)] {
            if let value { document[key] = .string(value) }
        }
        return document
    }
}

/// The console's actions. Each one, dry run or not, is written to the audit trail.
public enum ConsoleAction: String, Sendable, CaseIterable {
    /// Pending events due now, backoff reset.
    case retry
    /// Pending or scheduled events set aside with a reason.
    case park
    /// Parked events back to pending, due now, with a fresh attempt count.
    case unpark
    /// Scheduled events never published (by id only).
    case cancel
    /// Delivered events older than a duration deleted.
    case purge

    /// What the result says was done to the events, e.g. "unparked".
    public var pastTense: String {
        switch self {
        case .retry: "retried"
        case .park: "parked"
        case .unpark: "unparked"
        case .cancel: "cancelled"
        case .purge: "purged"
        }
    }
}

/// One action as asked for.
public struct ActionRequest: Sendable, Equatable {
    public var action: ConsoleAction
    public var selection: EventSelection
    public var dryRun: Bool
    /// A park's reason.
    public var reason: String?
    /// A purge's age of delivered events.
    public var olderThan: Duration?

    public init(action: ConsoleAction, selection: EventSelection, dryRun: Bool, reason: String? = nil, olderThan: Duration? = nil) {
        self.action = action
        self.selection = selection
        self.dryRun = dryRun
        self.reason = reason
        self.olderThan = olderThan
    }

    /// Why it cannot be done as asked, or nil.
    public var problem: String? {
        switch action {
        case .purge: olderThan == nil ? "purge needs olderThan, e.g. \"30d\"" : nil
        case .cancel: selection.ids.isEmpty ? "cancel selects events by ids" : nil
        case .retry, .park, .unpark:
            selection.isEmpty ? "select events: ids, or a group's lastError (with status), type or aggregateId" : nil
        }
    }
}

extension Console {
    /// Does (or with a dry run previews) an action and records it in the audit trail.
    public func perform(_ request: ActionRequest, by principal: ConsolePrincipal, via: String) async throws -> ChangeResult {
        if let problem = request.problem { throw ConsoleError(.badRequest, problem) }
        guard principal.role >= .operator else { throw ConsoleError.viewerOnly }
        let filter = request.selection.filter
        let result: ChangeResult
        switch request.action {
        case .retry: result = try await admin.retry(filter, dryRun: request.dryRun)
        case .park:
            let reason = request.reason.flatMap { $0.isEmpty ? nil : $0 } ?? "in the console by \(principal.name)"
            result = try await admin.park(filter, reason: reason, dryRun: request.dryRun)
        case .unpark: result = try await admin.unpark(filter, dryRun: request.dryRun)
        case .cancel: result = try await admin.cancel(ids: request.selection.ids, dryRun: request.dryRun)
        case .purge: result = try await admin.purge(olderThan: request.olderThan!, dryRun: request.dryRun)
        }
        var selection = request.selection.audited
        if let reason = request.reason, request.action == .park { selection["reason"] = .string(reason) }
        if let olderThan = request.olderThan, request.action == .purge { selection["olderThanSeconds"] = .int64(olderThan.components.seconds) }
        try await audit.record(
            AuditEntry(
                actor: principal.name, role: principal.role.rawValue, action: request.action.rawValue, selection: selection,
                matched: result.matched, changed: result.changed, dryRun: request.dryRun, via: via))
        logger.notice(
            "\(request.dryRun ? "previewed" : "done"): \(request.action.rawValue)",
            metadata: [
                "actor": .string(principal.name), "matched": .stringConvertible(result.matched), "changed": .stringConvertible(result.changed),
            ])
        return result
    }
}
