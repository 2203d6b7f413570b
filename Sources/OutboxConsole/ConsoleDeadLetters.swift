import Foundation
import HTTPTypes
import Hummingbird
import Outbox
import OutboxMongo
import OutboxOps

/// The consumers' dead letters: each configured queue's dead-letter queue grouped by reason, and
/// requeue or purge per message or per group, previewed first and audited like the outbox actions.
public enum DeadLetterAction: String, Sendable, CaseIterable {
    /// Back to the consumer's queue, removed from the dead-letter queue after the broker's confirm.
    case requeue
    /// Removed.
    case purge

    /// The audit trail's name of the action.
    public var audited: String { "dlq \(rawValue)" }
    public var pastTense: String { self == .requeue ? "requeued" : "purged" }
}

/// Dead letters of one reason in one queue.
public struct DeadLetterGroup: Sendable, Equatable {
    public var reason: String
    public var count: Int
    public var types: [String]
    public var oldest: Date?
    public var newest: Date?
}

/// One queue's dead letters, or why they could not be read.
public struct DeadLetterQueueView: Sendable {
    public var queue: String
    public var deadLetterQueue: String
    public var total: Int
    public var groups: [DeadLetterGroup]
    public var problem: String?
}

extension Console {
    /// The most dead letters a view reads from one queue.
    static let deadLettersRead = 10_000

    /// Every configured queue's dead letters grouped by reason, largest group first.
    func deadLetterViews() async -> [DeadLetterQueueView] {
        var views: [DeadLetterQueueView] = []
        for queue in deadLetterQueues {
            do {
                let letters = try await queue.list(DeadLetterFilter(limit: Self.deadLettersRead)).letters
                let groups = Dictionary(grouping: letters) { $0.reason ?? "" }.map { reason, letters in
                    let times = letters.compactMap(\.deadLetteredAt)
                    return DeadLetterGroup(
                        reason: reason, count: letters.count,
                        types: Array(Set(letters.compactMap(\.type)).sorted().prefix(EventGroup.typesShown)), oldest: times.min(), newest: times.max()
                    )
                }.sorted { ($0.count, $1.reason) > ($1.count, $0.reason) }
                views.append(
                    DeadLetterQueueView(
                        queue: queue.queue, deadLetterQueue: queue.deadLetterQueue, total: letters.count, groups: groups, problem: nil))
            } catch {
                views.append(
                    DeadLetterQueueView(queue: queue.queue, deadLetterQueue: queue.deadLetterQueue, total: 0, groups: [], problem: "\(error)"))
            }
        }
        return views
    }

    /// Requeues or purges (or previews) the selected dead letters of a configured queue and
    /// records it in the audit trail.
    func perform(
        _ action: DeadLetterAction, queue name: String, ids: [String], reason: String?, dryRun: Bool, by principal: ConsolePrincipal, via: String
    ) async throws -> DeadLetterResult {
        guard principal.role >= .operator else { throw ConsoleError.viewerOnly }
        guard let queue = deadLetterQueues.first(where: { $0.queue == name }) else {
            let known = deadLetterQueues.map(\.queue).joined(separator: ", ")
            throw ConsoleError(
                .badRequest, "queue '\(name)' is not one of the console's (\(known.isEmpty ? "none: set OUTBOX_CONSOLE_QUEUES" : known))")
        }
        guard !ids.isEmpty || reason != nil else { throw ConsoleError(.badRequest, "select dead letters: ids, or a group's reason") }
        let filter = DeadLetterFilter(ids: ids, exactReason: reason)
        let result: DeadLetterResult
        do {
            result = try await action == .requeue ? queue.requeue(filter, dryRun: dryRun) : queue.purge(filter, dryRun: dryRun)
        } catch {
            throw ConsoleError(.serviceUnavailable, "the broker: \(error)")
        }
        var selection: Document = ["queue": .string(name)]
        for field in ids.isEmpty ? [] : AuditTrail.selection(ids: ids).fields { selection[field.key] = field.value }
        if let reason { selection["reason"] = .string(reason) }
        try await audit.record(
            AuditEntry(
                actor: principal.name, role: principal.role.rawValue, action: action.audited, selection: selection, matched: result.selected.count,
                changed: result.changed, dryRun: dryRun, via: via))
        logger.notice(
            "\(dryRun ? "previewed" : "done"): \(action.audited)",
            metadata: ["actor": .string(principal.name), "queue": .string(name), "changed": .stringConvertible(result.changed)])
        return result
    }

    static func deadLetterResultDocument(_ result: DeadLetterResult) -> Document {
        [
            "matched": .int64(Int64(result.selected.count)), "changed": .int64(Int64(result.changed)), "dryRun": .bool(result.dryRun),
            "ids": .array(result.selected.prefix(AuditTrail.idsKept).compactMap { $0.messageId.map { .string($0) } }),
            "failures": .array(result.failures.map { ["id": $0.messageId.map { .string($0) } ?? .null, "reason": .string($0.reason)] }),
            "interrupted": result.interrupted.map { .string($0) } ?? .null,
        ]
    }

    static func deadLetterViewDocument(_ view: DeadLetterQueueView) -> BSON {
        [
            "queue": .string(view.queue), "deadLetterQueue": .string(view.deadLetterQueue), "count": .int64(Int64(view.total)),
            "groups": .array(
                view.groups.map { group in
                    [
                        "reason": .string(group.reason), "count": .int64(Int64(group.count)), "types": .array(group.types.map { .string($0) }),
                        "oldest": group.oldest.map { .date($0) } ?? .null, "newest": group.newest.map { .date($0) } ?? .null,
                    ]
                }),
            "error": view.problem.map { .string($0) } ?? .null,
        ]
    }
}
