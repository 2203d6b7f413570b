import Logging
import Synchronization
import Testing

@testable import Outbox
@testable import OutboxAMQP

/// In-memory outbox with the same contract as the MongoDB store.
final class MemoryStore: OutboxStore {
    struct Row {
        var message: OutboxMessage
        var status = "pending"
        var lastError: String?
        var due = true
    }

    let rows: Mutex<[Row]>

    init(_ messages: [OutboxMessage]) { rows = Mutex(messages.map { Row(message: $0) }) }

    func fetchDue(limit: Int, leases: [PartitionLease]) async throws -> [OutboxMessage] {
        rows.withLock { rows in
            var seen = Set<String>()
            var lowest: [String: Int] = [:]
            for row in rows where row.status == "pending" {
                lowest[row.message.aggregateId] = min(lowest[row.message.aggregateId] ?? .max, row.message.aggregateVersion ?? 1)
            }
            return Array(
                rows.filter { $0.status == "pending" && $0.due }.map(\.message).filter {
                    lowest[$0.aggregateId] == ($0.aggregateVersion ?? 1) && seen.insert($0.aggregateId).inserted
                }.prefix(limit))
        }
    }

    func markDelivered(_ messages: [OutboxMessage], leases: [PartitionLease]) async throws -> Set<Int> {
        let ids = Set(messages.map(\.id))
        rows.withLock { rows in
            for i in rows.indices where ids.contains(rows[i].message.id) { rows[i].status = "delivered" }
        }
        return []
    }

    func markFailed(_ failures: [FailedDelivery], leases: [PartitionLease]) async throws -> Set<Int> {
        rows.withLock { rows in
            for failure in failures {
                guard let i = rows.firstIndex(where: { $0.message.id == failure.id }) else { continue }
                rows[i].message.attempts = failure.attempts
                rows[i].lastError = failure.error
                if failure.decision == .park { rows[i].status = "parked" }
            }
        }
        return []
    }

    func status(_ id: String) -> String { rows.withLock { $0.first { $0.message.id == id }!.status } }
    func attempts(_ id: String) -> Int { rows.withLock { $0.first { $0.message.id == id }!.message.attempts } }
}

/// Holds one partition's lease for ever.
struct StaticLeases: LeaseProvider {
    var current: [PartitionLease] { [PartitionLease(partition: 0, epoch: 1)] }
    func lost(_ partitions: Set<Int>) {}
}

/// A broker that answers each message with a scripted outcome and records the publish order.
final class ScriptedPublisher: ConfirmingPublisher {
    let script: @Sendable (OutboxMessage) -> PublishOutcome
    let published = Mutex<[String]>([])

    init(_ script: @escaping @Sendable (OutboxMessage) -> PublishOutcome) { self.script = script }

    func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome] {
        published.withLock { $0.append(contentsOf: messages.map(\.id)) }
        return messages.map(script)
    }
}

func event(_ id: String, aggregate: String = "a", version: Int = 1) -> OutboxMessage {
    OutboxMessage(
        id: id, type: "OrderCreated", aggregateType: "Order", aggregateId: aggregate, aggregateVersion: version,
        exchange: "orders", routingKey: "order.created", occurredAt: 0, body: Array("{}".utf8))
}

/// A store whose marks fail a given number of times before they work (a flaky database).
final class FlakyMarkStore: OutboxStore {
    let inner: MemoryStore
    let failuresLeft: Mutex<Int>
    let markCalls = Mutex(0)

    init(_ inner: MemoryStore, failures: Int) {
        self.inner = inner
        failuresLeft = Mutex(failures)
    }

    struct StoreDown: Error {}

    func fetchDue(limit: Int, leases: [PartitionLease]) async throws -> [OutboxMessage] { try await inner.fetchDue(limit: limit, leases: leases) }

    func markDelivered(_ messages: [OutboxMessage], leases: [PartitionLease]) async throws -> Set<Int> {
        markCalls.withLock { $0 += 1 }
        if failuresLeft.withLock({ left in
            defer { left -= 1 }; return left > 0
        }) {
            throw StoreDown()
        }
        return try await inner.markDelivered(messages, leases: leases)
    }

    func markFailed(_ failures: [FailedDelivery], leases: [PartitionLease]) async throws -> Set<Int> {
        try await inner.markFailed(failures, leases: leases)
    }
}

/// A lease store that fails a given number of rounds, then renews what it is given.
final class FlakyLeaseStore: LeaseStore {
    let failuresLeft = Mutex(0)

    struct Down: Error {}

    func round(owner: String, held: [PartitionLease], release: [PartitionLease], want: Int, ttl: Duration) async throws -> LeaseRound {
        if failuresLeft.withLock({ left in
            defer { left = max(left - 1, 0) }; return left > 0
        }) {
            throw Down()
        }
        return LeaseRound(held: held.isEmpty ? [PartitionLease(partition: 0, epoch: 1)] : held, activeRelays: 1)
    }

    func resign(owner: String, leases: [PartitionLease]) async throws {}
}

/// Partition leases shared by the managers of a test, as one store would hold them (no expiry).
final class SharedLeaseStore: LeaseStore {
    struct State {
        var owners: [String?]
        var epochs: [Int64]
        var relays: Set<String> = []
    }

    let state: Mutex<State>

    init(partitions: Int) { state = Mutex(State(owners: Array(repeating: nil, count: partitions), epochs: Array(repeating: 0, count: partitions))) }

    func held(by owner: String) -> Int { state.withLock { $0.owners.filter { $0 == owner }.count } }
    func epoch(of partition: Int) -> Int64 { state.withLock { $0.epochs[partition] } }

    func round(owner: String, held: [PartitionLease], release: [PartitionLease], want: Int, ttl: Duration) async throws -> LeaseRound {
        state.withLock { s in
            s.relays.insert(owner)
            for lease in release where s.owners[lease.partition] == owner && s.epochs[lease.partition] == lease.epoch {
                s.owners[lease.partition] = nil
            }
            let released = Set(release.map(\.partition))
            var kept = held.filter { !released.contains($0.partition) && s.owners[$0.partition] == owner && s.epochs[$0.partition] == $0.epoch }
            for partition in s.owners.indices
            where s.owners[partition] == nil && !released.contains(partition) && kept.count < held.count - released.count + want {
                s.owners[partition] = owner
                s.epochs[partition] += 1
                kept.append(PartitionLease(partition: partition, epoch: s.epochs[partition]))
            }
            let others = s.owners.filter { $0 != nil && $0 != owner }.count
            return LeaseRound(held: kept, activeRelays: s.relays.count, heldByOthers: others, rank: s.relays.filter { $0 < owner }.count)
        }
    }

    func resign(owner: String, leases: [PartitionLease]) async throws {
        state.withLock { s in
            for lease in leases where s.owners[lease.partition] == owner { s.owners[lease.partition] = nil }
            s.relays.remove(owner)
        }
    }
}

/// A store whose fetch takes `perEvent` for every event asked for (and finds none); records the
/// limits asked.
final class SlowStore: OutboxStore {
    let perEvent: Duration
    let asked = Mutex<[Int]>([])

    init(perEvent: Duration) { self.perEvent = perEvent }

    func fetchDue(limit: Int, leases: [PartitionLease]) async throws -> [OutboxMessage] {
        asked.withLock { $0.append(limit) }
        try await Task.sleep(for: perEvent * limit)
        return []
    }

    func markDelivered(_ messages: [OutboxMessage], leases: [PartitionLease]) async throws -> Set<Int> { [] }
    func markFailed(_ failures: [FailedDelivery], leases: [PartitionLease]) async throws -> Set<Int> { [] }
}

/// Has nothing due, but asks to be fetched from again after `soon` (a scheduled event comes due).
final class DueSoonStore: OutboxStore {
    let soon: Duration
    let fetches = Atomic<Int>(0)

    init(soon: Duration) { self.soon = soon }

    func fetchDue(limit: Int, leases: [PartitionLease]) async throws -> [OutboxMessage] {
        fetches.add(1, ordering: .relaxed)
        return []
    }

    func markDelivered(_ messages: [OutboxMessage], leases: [PartitionLease]) async throws -> Set<Int> { [] }
    func markFailed(_ failures: [FailedDelivery], leases: [PartitionLease]) async throws -> Set<Int> { [] }
    func nextFetchIn() -> Duration? { soon }
}
