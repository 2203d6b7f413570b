import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

@Suite("Leases and fencing (I6)", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct LeaseTests {
    func manager(_ f: Fixture, owner: String, ttl: Duration = .seconds(30)) -> LeaseManager {
        LeaseManager(store: MongoLeaseStore(pool: f.pool), configuration: .init(owner: owner, ttl: ttl), logger: f.logger)
    }

    @Test("a relay whose lease was taken over cannot mark any event, delivered or failed")
    func fencedAfterTakeover() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let ids = try await f.appendEvents((0..<40).map { f.event(aggregate: "agg-\($0)") })
            // Relay A takes every partition with a short lease, then stalls (no renewals).
            let leasesA = try await f.makeLeases(owner: "relay-a", ttl: .seconds(60))
            #expect(leasesA.current.count == 16)
            let storeA = f.makeStore(owner: "relay-a")
            let batch = try await storeA.fetchDue(limit: 100, leases: leasesA.current)
            #expect(batch.count == 40)
            let stale = leasesA.current
            // A stalls past its lease: its lease documents run out (written as the database would
            // see them after the TTL). Expiry is judged by the database clock; B takes over.
            try await f.pool.withConnection { connection in
                try connection.collection(MongoLeaseStore.leasesCollection).updateMany(["owner": "relay-a"], ["$set": ["expiresAt": .datetime(0)]])
                // Its heartbeat has run out as well.
                try connection.collection(MongoLeaseStore.relaysCollection).updateMany(["_id": "relay-a"], ["$set": ["expiresAt": .datetime(0)]])
            }
            let leasesB = manager(f, owner: "relay-b")
            #expect(
                await eventually(timeout: .seconds(20)) {
                    try? await leasesB.tick()
                    return leasesB.current.count == 16
                })
            #expect(Set(leasesB.current.map(\.partition)) == Set(stale.map(\.partition)))
            #expect(zip(leasesB.current.sorted(), stale.sorted()).allSatisfy { $0.epoch > $1.epoch })

            // B, the new owner, has handled the events (here: a failed attempt, rescheduled),
            // which stamps them with its epoch.
            let storeB = f.makeStore(owner: "relay-b")
            let retries = batch.map {
                FailedDelivery(id: $0.id, partition: $0.partition, attempts: 1, error: "nacked", decision: .retry(after: .zero))
            }
            #expect(try await storeB.markFailed(retries, leases: leasesB.current).isEmpty)

            // A wakes up and tries to record what it did: every write is refused.
            let fencedDelivered = try await storeA.markDelivered(batch, leases: stale)
            #expect(fencedDelivered == Set(batch.map(\.partition)))
            let failures = batch.map { FailedDelivery(id: $0.id, partition: $0.partition, attempts: 9, error: "x", decision: .park) }
            #expect(try await storeA.markFailed(failures, leases: stale) == Set(batch.map(\.partition)))
            #expect(try await f.count("outbox", ["status": "pending", "attempts": 1]) == 40, "only B's write took effect")

            // A whole pass of A: it may still publish what it fetched, but it marks nothing and
            // forgets the partitions.
            let publisher = f.makePublisher()
            let relayA = Relay(store: storeA, publisher: publisher, leases: FrozenLeases(stale, manager: leasesA), logger: f.logger)
            let pass = try await relayA.runOnce()
            #expect(pass.fetched == 40 && pass.delivered == 0 && pass.fenced == 40)
            #expect(try await f.count("outbox", ["status": "pending"]) == 40)
            #expect(leasesA.current.isEmpty, "A dropped the partitions it was fenced out of")

            // B, the owner, delivers and marks them.
            let relayB = Relay(store: storeB, publisher: publisher, leases: leasesB, logger: f.logger)
            try await f.drain(relayB)
            await publisher.close()
            #expect(try await f.count("outbox", ["status": "delivered"]) == 40)
            #expect(Set(try await f.admin.drain(queue).compactMap(\.messageId)) == Set(ids))
        }
    }

    /// The leases A had before it stalled (its manager would report none once expired).
    struct FrozenLeases: LeaseProvider {
        let leases: [PartitionLease]
        let manager: LeaseManager
        init(_ leases: [PartitionLease], manager: LeaseManager) {
            self.leases = leases
            self.manager = manager
        }
        var current: [PartitionLease] { leases }
        func lost(_ partitions: Set<Int>) { manager.lost(partitions) }
    }

    @Test("three relays share the partitions fairly and disjointly; a leaver's partitions are taken over")
    func balancing() async throws {
        try await Fixture.with { f in
            try await MongoLeaseStore(pool: f.pool).ensurePartitions()
            let managers = (0..<3).map { manager(f, owner: "relay-\($0)") }
            for _ in 0..<4 {
                for m in managers { try await m.tick() }
            }
            let held = managers.map { Set($0.current.map(\.partition)) }
            // An even split: the first relay by id holds the partition left over.
            #expect(held.map(\.count) == [6, 5, 5])
            #expect(held[0].isDisjoint(with: held[1]) && held[0].isDisjoint(with: held[2]) && held[1].isDisjoint(with: held[2]))
            #expect(held[0].union(held[1]).union(held[2]) == Set(0..<16))
            #expect(managers.allSatisfy { $0.activeRelays == 3 })

            await managers[2].resign()
            for _ in 0..<3 {
                for m in managers.prefix(2) { try await m.tick() }
            }
            let after = managers.prefix(2).map { Set($0.current.map(\.partition)) }
            #expect(after[0].union(after[1]) == Set(0..<16))
            #expect(after[0].isDisjoint(with: after[1]))
            #expect(after.map(\.count).sorted() == [8, 8])
        }
    }

    @Test("a round counts the live leases other relays hold; a relay joining one that holds every partition gets its share within seconds")
    func handOffOnTheStore() async throws {
        try await Fixture.with { f in
            let store = MongoLeaseStore(pool: f.pool)
            try await store.ensurePartitions()
            let first = try await store.round(owner: "relay-a", held: [], release: [], want: 16, ttl: .seconds(30))
            #expect(first.held.count == 16 && first.heldByOthers == 0)
            let joined = try await store.round(owner: "relay-b", held: [], release: [], want: 8, ttl: .seconds(30))
            #expect(joined.held.isEmpty && joined.heldByOthers == 16 && joined.activeRelays == 2)
            let handedBack = try await store.round(
                owner: "relay-a", held: Array(first.held.prefix(8)), release: Array(first.held.suffix(8)), want: 0, ttl: .seconds(30))
            #expect(handedBack.held.count == 8 && handedBack.heldByOthers == 0)
            let taken = try await store.round(owner: "relay-b", held: [], release: [], want: 8, ttl: .seconds(30))
            #expect(taken.held.count == 8 && taken.heldByOthers == 8)
            try await store.resign(owner: "relay-a", leases: handedBack.held)
            try await store.resign(owner: "relay-b", leases: taken.held)

            // Two managers at work (a pass every 20 ms each); the first took all 16 alone. With a
            // round only every third of the TTL (10 s) the other would wait 20 s for its share.
            let managers = [manager(f, owner: "relay-c"), manager(f, owner: "relay-d")]
            try await managers[0].tick()
            #expect(managers[0].current.count == 16)
            let passes = managers.map { m in
                Task {
                    while !Task.isCancelled {
                        _ = m.leasesForPass()
                        try? await Task.sleep(for: .milliseconds(20))
                    }
                }
            }
            let renewals = managers.map { m in Task { try await m.run() } }
            var shares: [Int] = []
            // Up to 15 s: the store is shared with the rest of the suite (1,000 traced events among
            // it) and answers slowly at times; still well short of the 20 s the old rounds took.
            for _ in 0..<150 {
                shares = managers.map { $0.current.count }
                if shares == [8, 8] { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(shares == [8, 8], "\(shares)")
            passes.forEach { $0.cancel() }
            renewals.forEach { $0.cancel() }
            for task in renewals { _ = try? await task.value }
        }
    }

    /// A real broker behind a publisher that loses some acks (published, reported as timed out) and
    /// refuses some publishes (never sent, reported as nacked).
    final class FaultyPublisher: ConfirmingPublisher {
        let inner: ConfirmPublisher
        init(_ inner: ConfirmPublisher) { self.inner = inner }

        func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome] {
            var generator = SystemRandomNumberGenerator()
            let refused = Set(messages.indices.filter { _ in Int.random(in: 0..<10, using: &generator) == 0 })
            let sent = messages.indices.filter { !refused.contains($0) }
            var outcomes = await inner.publish(sent.map { messages[$0] }).makeIterator()
            return messages.indices.map { index in
                if refused.contains(index) { return .nacked }
                let outcome = outcomes.next()!
                return outcome == .acked && Int.random(in: 0..<10, using: &generator) == 0 ? .timedOut : outcome
            }
        }
    }

    @Test("per-aggregate order holds under injected failures: no version after a later one")
    func orderUnderRetries() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            var events: [NewEvent] = []
            for version in 1...8 {
                for aggregate in 0..<40 { events.append(f.event(aggregate: "agg-\(aggregate)", version: version)) }
            }
            try await f.appendEvents(events)
            let publisher = f.makePublisher()
            let relay = try await f.makeRelay(
                store: f.makeStore(), publisher: FaultyPublisher(publisher) as ConfirmingPublisher,
                retry: .init(maxAttempts: 1000, baseDelay: .milliseconds(1), maxDelay: .milliseconds(20)))
            #expect(
                await eventually(timeout: .seconds(60)) {
                    _ = try? await relay.runOnce()
                    return (try? await f.count("outbox", ["status": "delivered"])) == events.count
                })
            await publisher.close()
            let received = try await f.admin.drain(queue)
            var lastSeen: [String: Int] = [:]
            var violations = 0
            for message in received {
                guard case .string(let aggregate)? = message.headers["x-aggregate-id"],
                    case .int(let version)? = message.headers["x-aggregate-version"]
                else { continue }
                // A repeat of the current version (lost ack) is fine; an older one after a newer is not.
                if let last = lastSeen[aggregate], Int(version) < last { violations += 1 }
                lastSeen[aggregate] = max(lastSeen[aggregate] ?? 0, Int(version))
            }
            #expect(violations == 0)
            #expect(lastSeen.count == 40 && lastSeen.values.allSatisfy { $0 == 8 })
            #expect(received.count >= events.count, "every version arrived at least once")
        }
    }
}
