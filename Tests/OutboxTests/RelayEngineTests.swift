import Logging
import Synchronization
import Testing

@testable import Outbox
@testable import OutboxAMQP

@Suite("Relay engine (in-memory store and broker)")
struct RelayEngineTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    @Test("an idle relay fetches again when the store asks (a scheduled event comes due), not only at its next poll")
    func wakesWhenTheStoreAsks() async throws {
        let store = DueSoonStore(soon: .milliseconds(20))
        let relay = Relay(
            store: store, publisher: ScriptedPublisher { _ in .acked }, leases: StaticLeases(), configuration: .init(pollInterval: .seconds(60)),
            logger: logger)
        let running = Task { try await relay.run() }
        defer { running.cancel() }
        let deadline = ContinuousClock.now + .seconds(10)
        while store.fetches.load(ordering: .relaxed) < 5 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(store.fetches.load(ordering: .relaxed) >= 5, "five fetches while the poll interval is a minute")
    }

    @Test("acked events are delivered; returned ones are retried, then parked; nacked and timed-out ones are retried, never parked")
    func outcomes() async throws {
        let store = MemoryStore([
            event("ok", aggregate: "1"), event("nack", aggregate: "2"), event("ret", aggregate: "3"), event("slow", aggregate: "4"),
        ])
        let publisher = ScriptedPublisher { message in
            switch message.id {
            case "ok": .acked
            case "nack": .nacked
            case "ret": .returned("312 NO_ROUTE")
            default: .timedOut
            }
        }
        let relay = Relay(
            store: store, publisher: publisher, leases: StaticLeases(), configuration: .init(retryPolicy: .init(maxAttempts: 3, baseDelay: .zero)),
            logger: logger)
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
        let relay = Relay(
            store: store, publisher: ScriptedPublisher { _ in .blocked("low on memory") }, leases: StaticLeases(),
            configuration: .init(retryPolicy: .init(maxAttempts: 1)), logger: logger)
        for _ in 0..<5 { #expect(try await relay.runOnce() == RelayPassResult(fetched: 1, unsent: 1)) }
        #expect(store.status("x") == "pending" && store.attempts("x") == 0)
    }

    @Test("a lost connection leaves events pending with no attempt counted")
    func connectionLost() async throws {
        let store = MemoryStore([event("x")])
        let relay = Relay(
            store: store, publisher: ScriptedPublisher { _ in .connectionLost("refused") }, leases: StaticLeases(),
            configuration: .init(retryPolicy: .init(maxAttempts: 1)), logger: logger)
        for _ in 0..<5 { #expect(try await relay.runOnce().unsent == 1) }
        #expect(store.status("x") == "pending" && store.attempts("x") == 0)
    }

    @Test("one aggregate's versions go out one at a time, in order, even while one is retried")
    func perAggregateOrder() async throws {
        let failOnce = Mutex<Set<String>>(["a-2"])
        let store = MemoryStore([
            event("a-1", aggregate: "a", version: 1), event("a-2", aggregate: "a", version: 2), event("a-3", aggregate: "a", version: 3),
            event("b-1", aggregate: "b", version: 1),
        ])
        let publisher = ScriptedPublisher { message in failOnce.withLock { $0.remove(message.id) } != nil ? .nacked : .acked }
        let relay = Relay(
            store: store, publisher: publisher, leases: StaticLeases(), configuration: .init(retryPolicy: .init(maxAttempts: 5, baseDelay: .zero)),
            logger: logger)
        while try await relay.runOnce().fetched > 0 {}
        #expect(publisher.published.withLock { $0 } == ["a-1", "b-1", "a-2", "a-2", "a-3"])
    }

    @Test("beside another source a relay marks in parts, each a store command; alone, a batch is one mark")
    func marksInParts() async throws {
        for withNeighbour in [false, true] {
            let store = FlakyMarkStore(MemoryStore((0..<120).map { event("e\($0)", aggregate: "a\($0)") }), failures: 0)
            let shares = StoreShares()
            if withNeighbour { _ = shares.join() }
            let relay = Relay(
                store: store, publisher: ScriptedPublisher { _ in .acked }, leases: StaticLeases(), shares: (shares, shares.join()), logger: logger)
            #expect(try await relay.runOnce().delivered == 120)
            #expect(store.markCalls.withLock { $0 } == (withNeighbour ? 3 : 1))
            #expect((0..<120).allSatisfy { store.inner.status("e\($0)") == "delivered" })
        }
    }
}
