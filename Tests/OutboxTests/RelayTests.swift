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

@Suite("Relay engine (in-memory store and broker)")
struct RelayEngineTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    @Test("acked events are delivered; returned ones are retried, then parked; nacked and timed-out ones are retried, never parked")
    func outcomes() async throws {
        let store = MemoryStore([event("ok", aggregate: "1"), event("nack", aggregate: "2"), event("ret", aggregate: "3"), event("slow", aggregate: "4")])
        let publisher = ScriptedPublisher { message in
            switch message.id {
            case "ok": .acked
            case "nack": .nacked
            case "ret": .returned("312 NO_ROUTE")
            default: .timedOut
            }
        }
        let relay = Relay(store: store, publisher: publisher, leases: StaticLeases(), configuration: .init(retryPolicy: .init(maxAttempts: 3, baseDelay: .zero)), logger: logger)
        #expect(try await relay.runOnce() == RelayPassResult(fetched: 4, delivered: 1, retried: 3))
        #expect(store.status("ok") == "delivered")
        #expect(store.status("nack") == "pending" && store.attempts("nack") == 1)
        _ = try await relay.runOnce()
        #expect(try await relay.runOnce() == RelayPassResult(fetched: 3, delivered: 0, retried: 2, parked: 1))
        #expect(store.status("ret") == "parked")
        for _ in 0..<10 { _ = try await relay.runOnce() }
        for id in ["nack", "slow"] { #expect(store.status(id) == "pending" && store.attempts(id) == 13) }
    }

    @Test("--park-transient-after parks a nacked or timed-out event once it is that old; a blocked broker still parks nothing")
    func parkTransientAfter() async throws {
        // Events written at 0 ms; the clock says an hour later.
        let store = MemoryStore([event("nack", aggregate: "1"), event("slow", aggregate: "2"), event("young", aggregate: "3")])
        let young = Mutex(true)
        let publisher = ScriptedPublisher { message in
            switch message.id {
            case "nack": .nacked
            case "slow": .timedOut
            default: young.withLock { $0 } ? .blocked("alarm") : .nacked
            }
        }
        let configuration = RelayConfiguration(
            retryPolicy: .init(maxAttempts: 100, baseDelay: .zero, parkTransientAfter: .seconds(3600)), wallClock: { 3_600_000 })
        let relay = Relay(store: store, publisher: publisher, leases: StaticLeases(), configuration: configuration, logger: logger)
        #expect(try await relay.runOnce() == RelayPassResult(fetched: 3, parked: 2, unsent: 1))
        #expect(store.status("nack") == "parked" && store.status("slow") == "parked")
        #expect(store.status("young") == "pending" && store.attempts("young") == 0, "no attempt, no parking while blocked")

        let younger = Relay(
            store: MemoryStore([event("x")]), publisher: ScriptedPublisher { _ in .nacked }, leases: StaticLeases(),
            configuration: .init(retryPolicy: .init(baseDelay: .zero, parkTransientAfter: .seconds(3601)), wallClock: { 3_600_000 }), logger: logger)
        #expect(try await younger.runOnce() == RelayPassResult(fetched: 1, retried: 1), "younger than the limit: retried")
    }

    @Test("a blocked broker leaves events pending with no attempt counted, however long it lasts")
    func blocked() async throws {
        let store = MemoryStore([event("x")])
        let relay = Relay(store: store, publisher: ScriptedPublisher { _ in .blocked("low on memory") }, leases: StaticLeases(), configuration: .init(retryPolicy: .init(maxAttempts: 1)), logger: logger)
        for _ in 0..<5 { #expect(try await relay.runOnce() == RelayPassResult(fetched: 1, unsent: 1)) }
        #expect(store.status("x") == "pending" && store.attempts("x") == 0)
    }

    @Test("a lost connection leaves events pending with no attempt counted")
    func connectionLost() async throws {
        let store = MemoryStore([event("x")])
        let relay = Relay(store: store, publisher: ScriptedPublisher { _ in .connectionLost("refused") }, leases: StaticLeases(), configuration: .init(retryPolicy: .init(maxAttempts: 1)), logger: logger)
        for _ in 0..<5 { #expect(try await relay.runOnce().unsent == 1) }
        #expect(store.status("x") == "pending" && store.attempts("x") == 0)
    }

    @Test("one aggregate's versions go out one at a time, in order, even while one is retried")
    func perAggregateOrder() async throws {
        let failOnce = Mutex<Set<String>>(["a-2"])
        let store = MemoryStore([event("a-1", aggregate: "a", version: 1), event("a-2", aggregate: "a", version: 2), event("a-3", aggregate: "a", version: 3), event("b-1", aggregate: "b", version: 1)])
        let publisher = ScriptedPublisher { message in failOnce.withLock { $0.remove(message.id) } != nil ? .nacked : .acked }
        let relay = Relay(store: store, publisher: publisher, leases: StaticLeases(), configuration: .init(retryPolicy: .init(maxAttempts: 5, baseDelay: .zero)), logger: logger)
        while try await relay.runOnce().fetched > 0 {}
        #expect(publisher.published.withLock { $0 } == ["a-1", "b-1", "a-2", "a-2", "a-3"])
    }
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
        if failuresLeft.withLock({ left in defer { left -= 1 }; return left > 0 }) { throw StoreDown() }
        return try await inner.markDelivered(messages, leases: leases)
    }

    func markFailed(_ failures: [FailedDelivery], leases: [PartitionLease]) async throws -> Set<Int> {
        try await inner.markFailed(failures, leases: leases)
    }
}

@Suite("Relay engine: store faults and the byte budget")
struct RelayStoreFaultTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    @Test("a mark that fails a few times is tried again within the pass: nothing is published twice")
    func markRetried() async throws {
        let store = FlakyMarkStore(MemoryStore([event("a"), event("b", aggregate: "b")]), failures: 2)
        let publisher = ScriptedPublisher { _ in .acked }
        let relay = Relay(store: store, publisher: publisher, leases: StaticLeases(), configuration: .init(markRetryDelay: .milliseconds(1)), logger: logger)
        #expect(try await relay.runOnce() == RelayPassResult(fetched: 2, delivered: 2))
        #expect(store.markCalls.withLock { $0 } == 3)
        #expect(store.inner.status("a") == "delivered")
    }

    @Test("confirmed events whose mark keeps failing are marked before the next fetch, never published again")
    func confirmedRemembered() async throws {
        let store = FlakyMarkStore(
            MemoryStore([event("a-1", aggregate: "a", version: 1), event("a-2", aggregate: "a", version: 2), event("b-1", aggregate: "b")]), failures: 6)
        let publisher = ScriptedPublisher { _ in .acked }
        let relay = Relay(
            store: store, publisher: publisher, leases: StaticLeases(), configuration: .init(markAttempts: 3, markRetryDelay: .milliseconds(1)),
            logger: logger)
        await #expect(throws: FlakyMarkStore.StoreDown.self) { try await relay.runOnce() }
        // The store is still down: the remembered marks fail again and nothing is fetched or published.
        await #expect(throws: FlakyMarkStore.StoreDown.self) { try await relay.runOnce() }
        #expect(publisher.published.withLock { $0 } == ["a-1", "b-1"])
        #expect(store.inner.status("a-1") == "pending")
        // Back: the remembered ones are marked first, then a-2 goes out; a-1 and b-1 only once.
        #expect(try await relay.runOnce() == RelayPassResult(fetched: 1, delivered: 3))
        #expect(publisher.published.withLock { $0 } == ["a-1", "b-1", "a-2"])
        #expect(store.inner.status("a-1") == "delivered" && store.inner.status("b-1") == "delivered")
    }

    @Test("batches are cut at the byte budget; an event larger than the budget goes out alone")
    func byteBudget() async throws {
        func sized(_ id: String, _ bytes: Int) -> OutboxMessage {
            var message = event(id, aggregate: id)
            message.body = Array(repeating: 0x20, count: bytes)
            return message
        }
        let store = MemoryStore([sized("big", 5000)] + (0..<20).map { sized("m\($0)", 1000) })
        let publisher = ScriptedPublisher { _ in .acked }
        let relay = Relay(store: store, publisher: publisher, leases: StaticLeases(), configuration: .init(batchMaxBytes: 4000, assumedBytesPerEvent: 300), logger: logger)
        var batches: [Int] = []
        while true {
            let pass = try await relay.runOnce()
            guard pass.fetched > 0 else { break }
            batches.append(pass.fetched)
        }
        #expect(batches.first == 1, "the event larger than the budget alone")
        #expect(batches.dropFirst().allSatisfy { $0 <= 4 }, "at most 4000 bytes of bodies per batch: \(batches)")
        #expect(batches.reduce(0, +) == 21)
    }
}

/// A lease store that fails a given number of rounds, then renews what it is given.
final class FlakyLeaseStore: LeaseStore {
    let failuresLeft = Mutex(0)

    struct Down: Error {}

    func round(owner: String, held: [PartitionLease], release: [PartitionLease], want: Int, ttl: Duration) async throws -> LeaseRound {
        if failuresLeft.withLock({ left in defer { left = max(left - 1, 0) }; return left > 0 }) { throw Down() }
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
            for partition in s.owners.indices where s.owners[partition] == nil && !released.contains(partition) && kept.count < held.count - released.count + want {
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

@Suite("Leases")
struct LeaseManagerTests {
    static let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    @Test("shares differ by at most one and add up to the partitions; the first relays by id hold the ones left over")
    func evenShares() {
        for partitions in [1, 7, 16, 64] {
            for relays in 1...20 {
                let shares = (0..<relays).map { LeaseBalancer.share(partitions: partitions, activeRelays: relays, rank: $0) }
                #expect(shares.reduce(0, +) == partitions, "\(partitions) over \(relays): \(shares)")
                #expect(shares.max()! - shares.min()! <= 1)
                #expect(shares == shares.sorted(by: >))
            }
        }
        #expect((0..<3).map { LeaseBalancer.share(partitions: 16, activeRelays: 3, rank: $0) } == [6, 5, 5])
        #expect(LeaseBalancer.share(partitions: 16, activeRelays: 0, rank: 0) == 16, "alone before its first heartbeat counts")
    }

    @Test("a third relay joining two that hold 8 each gets 5: 6, 5, 5, where rounded-up shares stop at 6, 6, 4")
    func evensOut() async throws {
        let store = SharedLeaseStore(partitions: 16)
        let managers = ["a", "b", "c"].map { LeaseManager(store: store, configuration: .init(owner: $0, partitions: 16, ttl: .seconds(30)), logger: Self.logger) }
        func rounds(_ count: Int, _ which: ArraySlice<LeaseManager>) async throws {
            for _ in 0..<count {
                for manager in which {
                    _ = manager.leasesForPass()
                    try await manager.tick()
                }
            }
        }
        try await rounds(3, managers.prefix(2))
        #expect(managers.prefix(2).map { store.held(by: $0.configuration.owner) } == [8, 8])
        try await rounds(3, managers[...])
        let shares = managers.map { store.held(by: $0.configuration.owner) }
        #expect(shares == [6, 5, 5], "\(shares)")
        #expect(Set(managers.flatMap { $0.current.map(\.partition) }) == Set(0..<16))
    }

    @Test("extras are handed back at the round after the relay started a pass without them, not while a batch may hold them")
    func handBackAfterPass() async throws {
        let store = SharedLeaseStore(partitions: 16)
        let a = LeaseManager(store: store, configuration: .init(owner: "a", partitions: 16, ttl: .seconds(30)), logger: Self.logger)
        let b = LeaseManager(store: store, configuration: .init(owner: "b", partitions: 16, ttl: .seconds(30)), logger: Self.logger)
        try await a.tick()
        #expect(a.current.count == 16)
        try await b.tick()
        #expect(b.current.isEmpty, "nothing free")
        try await a.tick()  // sees two relays: 8 set aside, not fetched any more
        #expect(a.current.count == 8 && store.held(by: "a") == 16)
        #expect(!a.handBackReady, "a pass that started before may still hold them")
        #expect(a.leasesForPass().count == 8)
        #expect(a.handBackReady, "the next pass started without them")
        try await a.tick()
        #expect(store.held(by: "a") == 8, "handed back")
        try await b.tick()
        #expect(b.current.count == 8)
    }

    @Test("a pass still holding a batch keeps the extras however many rounds go by; they are handed back once it ends")
    func handBackWaitsForThePass() async throws {
        let store = SharedLeaseStore(partitions: 16)
        let a = LeaseManager(store: store, configuration: .init(owner: "a", partitions: 16, ttl: .seconds(30)), logger: Self.logger)
        let b = LeaseManager(store: store, configuration: .init(owner: "b", partitions: 16, ttl: .seconds(30)), logger: Self.logger)
        try await a.tick()
        #expect(a.leasesForPass().count == 16, "a long pass starts with every partition")
        try await b.tick()
        try await a.tick()  // sees two relays: 8 set aside
        for _ in 0..<3 {
            try await a.tick()  // rounds that came at their deadline while the pass goes on
            #expect(store.held(by: "a") == 16, "not handed back while the pass may publish their events")
            #expect(a.isHeld(PartitionLease(partition: 15, epoch: store.epoch(of: 15))), "still the pass's to publish and mark")
        }
        a.passEnded()
        try await a.tick()
        #expect(store.held(by: "a") == 8, "handed back once the pass ended")
        try await b.tick()
        #expect(b.current.count == 8)
        #expect(!a.isHeld(PartitionLease(partition: 15, epoch: store.epoch(of: 15))))
    }

    @Test("a relay below its share while another holds more rounds every TTL/20; at its share, every TTL/3")
    func roundIntervals() async throws {
        let store = SharedLeaseStore(partitions: 16)
        let ttl = Duration.seconds(3)
        let a = LeaseManager(store: store, configuration: .init(owner: "a", partitions: 16, ttl: ttl), logger: Self.logger)
        let b = LeaseManager(store: store, configuration: .init(owner: "b", partitions: 16, ttl: ttl), logger: Self.logger)
        try await a.tick()
        #expect(a.roundInterval == ttl / 20, "in its first third of a TTL: it may not have seen the others yet")
        try await Task.sleep(for: ttl / 3 + .milliseconds(100))
        try await a.tick()
        #expect(a.roundInterval == ttl / 3, "alone with every partition")
        try await b.tick()
        #expect(b.current.isEmpty && b.roundInterval == ttl / 20, "below its share while a holds all")
        try await a.tick()
        _ = a.leasesForPass()
        try await a.tick()
        try await Task.sleep(for: ttl / 3 + .milliseconds(100))
        try await b.tick()
        #expect(b.current.count == 8 && b.roundInterval == ttl / 3, "its share taken")
        #expect(a.roundInterval == ttl / 3)
    }

    @Test("relays started together share the partitions within a few seconds, though the first took them all")
    func startTogether() async throws {
        let store = SharedLeaseStore(partitions: 16)
        let managers = ["a", "b", "c"].map { LeaseManager(store: store, configuration: .init(owner: $0, partitions: 16, ttl: .seconds(20)), logger: Self.logger) }
        // Relays at work: each starts a pass every 20 ms.
        let passes = managers.map { manager in
            Task {
                while !Task.isCancelled {
                    _ = manager.leasesForPass()
                    try? await Task.sleep(for: .milliseconds(20))
                }
            }
        }
        try await managers[0].tick()
        #expect(managers[0].current.count == 16, "alone in its first round")
        let renewals = managers.map { manager in Task { try await manager.run() } }
        // Rounds every third of the TTL (7 s) would take twice that to get there.
        var shares: [Int] = []
        for _ in 0..<100 {
            shares = managers.map { store.held(by: $0.configuration.owner) }
            if shares == [6, 5, 5] { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(shares == [6, 5, 5], "an even split, the first relay by id holding the one left over: \(shares)")
        passes.forEach { $0.cancel() }
        renewals.forEach { $0.cancel() }
        for task in renewals { _ = try? await task.value }
    }

    @Test("a failed renewal within the TTL costs no lease, and is tried again soon")
    func survivesFailedRenewal() async throws {
        let store = FlakyLeaseStore()
        let manager = LeaseManager(store: store, configuration: .init(owner: "r", partitions: 1, ttl: .seconds(6)), logger: Self.logger)
        try await manager.tick()
        #expect(manager.current.count == 1)
        store.failuresLeft.withLock { $0 = 4 }
        let renewals = Task { try await manager.run() }
        // Four failed rounds, then a good one, within one TTL of the last good one (retried after
        // TTL/20, doubling up to TTL/6: about 3 s of the 6 s TTL; one round every TTL/3 would have
        // let the lease lapse): the lease is held throughout. The TTL leaves room for a loaded machine.
        for _ in 0..<90 {
            #expect(manager.current.count == 1)
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(store.failuresLeft.withLock { $0 } == 0)
        renewals.cancel()
        _ = try? await renewals.value
    }
}

@Suite("Retry policy")
struct RetryPolicyTests {
    @Test("exponential with equal jitter, capped, then park")
    func backoff() {
        let policy = RetryPolicy(maxAttempts: 5, baseDelay: .seconds(1), maxDelay: .seconds(4))
        for _ in 0..<200 {
            guard case .retry(let first) = policy.decision(afterAttempts: 1) else { Issue.record("expected retry"); return }
            #expect(first >= .milliseconds(500) && first <= .seconds(1))
            guard case .retry(let third) = policy.decision(afterAttempts: 3) else { Issue.record("expected retry"); return }
            #expect(third >= .seconds(2) && third <= .seconds(4))
            guard case .retry(let capped) = policy.decision(afterAttempts: 4) else { Issue.record("expected retry"); return }
            #expect(capped <= .seconds(4))
        }
        #expect(policy.decision(afterAttempts: 5) == .park)
    }

    @Test("transient failures keep the capped backoff and never park")
    func transient() {
        let policy = RetryPolicy(maxAttempts: 5, baseDelay: .seconds(1), maxDelay: .seconds(4))
        #expect(policy.decision(afterAttempts: 5, transient: false) == .park)
        for attempts in [5, 50, 5000] {
            guard case .retry(let delay) = policy.decision(afterAttempts: attempts, transient: true) else {
                Issue.record("a transient failure parked after \(attempts) attempts")
                return
            }
            #expect(delay >= .seconds(2) && delay <= .seconds(4))
        }
    }
}

extension RetryPolicyTests {
    @Test("with parkTransientAfter, a transient failure parks an event that old, not a younger one")
    func parkTransientAfter() {
        let policy = RetryPolicy(maxAttempts: 5, baseDelay: .seconds(1), maxDelay: .seconds(4), parkTransientAfter: .seconds(3600))
        #expect(policy.decision(afterAttempts: 2, transient: true, age: .seconds(3600)) == .park)
        #expect(policy.decision(afterAttempts: 2, transient: true, age: .seconds(3599)) != .park)
        #expect(policy.decision(afterAttempts: 2, transient: true, age: nil) != .park, "an unknown age never parks")
        #expect(RetryPolicy().decision(afterAttempts: 2, transient: true, age: .seconds(86_400 * 365)) != .park, "off by default")
    }
}

@Suite("Confirm bookkeeping")
struct ConfirmBatchTests {
    @Test("multiple acks settle every earlier tag; nacks and returns are failures")
    func multiple() {
        var batch = ConfirmBatch(count: 5, messageIds: ["m0", "m1", "m2", "m3", "m4"])
        for i in 0..<5 { batch.published(index: i, tag: UInt64(101 + i)) }
        batch.apply(.returned(messageId: "m1", replyText: "312 NO_ROUTE"))
        batch.apply(.ack(tag: 102, multiple: true))
        #expect(batch.outstanding == 3)
        batch.apply(.nack(tag: 104, multiple: false))
        batch.apply(.ack(tag: 100, multiple: true))  // from an earlier batch: ignored
        #expect(batch.outstanding == 2)
        batch.apply(.ack(tag: 105, multiple: true))
        #expect(batch.outstanding == 0)
        #expect(batch.outcomes(orElse: .timedOut) == [.acked, .returned("312 NO_ROUTE"), .acked, .nacked, .acked])
    }

    @Test("publishes held back while blocked are settled by later confirms, once; a nacked one is sent again")
    func heldBack() {
        var batch = ConfirmBatch(count: 4, messageIds: ["a", "b", "c", "d"])
        batch.settled(index: 0, .acked)
        for (i, tag) in [(1, 7), (2, 8), (3, 9)] { batch.published(index: i, tag: UInt64(tag)) }
        batch.apply(.ack(tag: 7, multiple: false))
        #expect(batch.unconfirmed.map(\.messageId) == ["c", "d"])
        var held = HeldBackPublishes()
        held.hold(batch.unconfirmed, reason: "low memory")
        batch.settleOutstanding(.blocked("low memory"))
        #expect(batch.outcomes(orElse: .timedOut) == [.acked, .acked, .blocked("low memory"), .blocked("low memory")])
        #expect(held.isWaiting && held.holds("c") == "low memory")
        held.apply(.ack(tag: 8, multiple: true))
        held.apply(.nack(tag: 9, multiple: false))
        #expect(!held.isWaiting)
        #expect(held.take("c") == .acked)
        #expect(held.take("c") == nil, "once")
        #expect(held.take("d") == nil, "nacked: published again")
    }

    @Test("outstanding confirms on a closed channel are not delivered; unpublished ones neither")
    func closed() {
        var batch = ConfirmBatch(count: 3, messageIds: ["a", "b", "c"])
        batch.published(index: 0, tag: 1)
        batch.published(index: 1, tag: 2)
        batch.apply(.ack(tag: 1, multiple: false))
        batch.settleOutstanding(.connectionLost("closed"))
        #expect(batch.outcomes(orElse: .connectionLost("closed")) == [.acked, .connectionLost("closed"), .connectionLost("closed")])
    }
}
