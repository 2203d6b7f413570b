import Logging
import Synchronization
import Testing

@testable import Outbox
@testable import OutboxAMQP

@Suite("Relay engine: store faults and the byte budget")
struct RelayStoreFaultTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    @Test("a mark that fails a few times is tried again within the pass: nothing is published twice")
    func markRetried() async throws {
        let store = FlakyMarkStore(MemoryStore([event("a"), event("b", aggregate: "b")]), failures: 2)
        let publisher = ScriptedPublisher { _ in .acked }
        let relay = Relay(
            store: store, publisher: publisher, leases: StaticLeases(), configuration: .init(markRetryDelay: .milliseconds(1)), logger: logger)
        #expect(try await relay.runOnce() == RelayPassResult(fetched: 2, delivered: 2))
        #expect(store.markCalls.withLock { $0 } == 3)
        #expect(store.inner.status("a") == "delivered")
    }

    @Test("confirmed events whose mark keeps failing are marked before the next fetch, never published again")
    func confirmedRemembered() async throws {
        let store = FlakyMarkStore(
            MemoryStore([event("a-1", aggregate: "a", version: 1), event("a-2", aggregate: "a", version: 2), event("b-1", aggregate: "b")]),
            failures: 6)
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
        let relay = Relay(
            store: store, publisher: publisher, leases: StaticLeases(), configuration: .init(batchMaxBytes: 4000, assumedBytesPerEvent: 300),
            logger: logger)
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
