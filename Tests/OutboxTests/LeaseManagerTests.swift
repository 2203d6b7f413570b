import Logging
import Synchronization
import Testing

@testable import Outbox
@testable import OutboxAMQP

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
        let managers = ["a", "b", "c"].map {
            LeaseManager(store: store, configuration: .init(owner: $0, partitions: 16, ttl: .seconds(30)), logger: Self.logger)
        }
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

    @Test("a lease not renewed for two thirds of its TTL is still fetched under but not published under: a pass needs a third left")
    func publishingNeedsAThirdLeft() async throws {
        let store = SharedLeaseStore(partitions: 2)
        let ttl = Duration.seconds(3)
        let a = LeaseManager(store: store, configuration: .init(owner: "a", partitions: 2, ttl: ttl), logger: Self.logger)
        let renewed = ContinuousClock.now
        try await a.tick()
        let lease = try #require(a.current.first)
        #expect(a.isHeld(lease))
        // Held for publishing until two thirds of the TTL have gone by, fetched under until the TTL.
        while a.isHeld(lease) && ContinuousClock.now - renewed < ttl { try await Task.sleep(for: .milliseconds(10)) }
        let published = ContinuousClock.now - renewed
        #expect(a.current.contains(lease), "within the TTL")
        #expect(published >= ttl * 2 / 3 && published < ttl, "published under for \(published)")
        try await a.tick()
        #expect(a.isHeld(lease), "renewed")
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
        let managers = ["a", "b", "c"].map {
            LeaseManager(store: store, configuration: .init(owner: $0, partitions: 16, ttl: .seconds(20)), logger: Self.logger)
        }
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
