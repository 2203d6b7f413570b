import Logging
import Testing

@testable import Outbox

/// A pass fits in its target (a third of the lease TTL): longer passes make the next fetches ask
/// for fewer events, quicker ones let the number grow back to the batch size.
@Suite("Fetch limit adapted to the pass duration")
struct FetchLimitTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    func relay(batchSize: Int, passTarget: Duration?) -> Relay {
        Relay(
            store: MemoryStore([]), publisher: ScriptedPublisher { _ in .acked }, leases: StaticLeases(),
            configuration: RelayConfiguration(batchSize: batchSize, passTarget: passTarget), logger: logger)
    }

    @Test("a pass ten times too long cuts the next fetch to a tenth; quick passes double it back to the batch size")
    func shrinksAndGrows() {
        let relay = relay(batchSize: 5000, passTarget: .seconds(1))
        #expect(relay.fetchLimit() == 5000)
        relay.adapt(limit: 5000, took: .seconds(10))
        #expect(relay.fetchLimit() == 500)
        // Within the target but not within half of it: unchanged.
        relay.adapt(limit: 500, took: .milliseconds(800))
        #expect(relay.fetchLimit() == 500)
        var limits: [Int] = []
        for _ in 0..<5 {
            relay.adapt(limit: relay.fetchLimit(), took: .milliseconds(100))
            limits.append(relay.fetchLimit())
        }
        #expect(limits == [1000, 2000, 4000, 5000, 5000])
        // However slow the store, a fetch still asks for one event.
        relay.adapt(limit: 5000, took: .seconds(100_000))
        #expect(relay.fetchLimit() == 1)
    }

    @Test("without a target the fetch always asks for the batch size")
    func noTarget() {
        let relay = relay(batchSize: 500, passTarget: nil)
        relay.adapt(limit: 500, took: .seconds(60))
        #expect(relay.fetchLimit() == 500)
    }

    @Test("a slow store's passes make the relay ask it for fewer events")
    func slowStore() async throws {
        let store = SlowStore(perEvent: .microseconds(200))
        let relay = Relay(
            store: store, publisher: ScriptedPublisher { _ in .acked }, leases: StaticLeases(),
            configuration: RelayConfiguration(batchSize: 1000, passTarget: .milliseconds(20)), logger: logger)
        for _ in 0..<3 { try await relay.runOnce() }
        let asked = store.asked.withLock { $0 }
        #expect(asked.first == 1000)
        // 1,000 events at 0.2 ms take 200 ms, ten times the target: about a hundred next.
        #expect(asked.dropFirst().allSatisfy { $0 <= 150 }, "\(asked)")
    }
}
