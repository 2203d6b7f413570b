import Foundation
import Outbox
import OutboxMongo
import Testing

/// Several outboxes served by the same relays (issue 26): relays killed, one outbox dropped mid-run,
/// and the others lose nothing and keep each aggregate's order.
@Suite("Faults: several sources", .serialized, .enabled(if: Env.enabled), .timeLimit(.minutes(10)))
struct SourceFaultTests {
    @Test("two relays over three sources, SIGKILL ×3, then one source's collection dropped mid-run: the other two lose nothing, in order")
    func killedAndDropped() async throws {
        let fixtures = try (0..<3).map { _ in try FaultFixture() }
        let (first, dropped) = (fixtures[0], fixtures[2])
        var positions: [[String: (aggregate: String, version: Int)]] = []
        var written: [[String]] = []
        for f in fixtures {
            try await f.prepare()
            // 2,000 events over 500 aggregates, four versions each.
            let ids = try await f.appendEvents(2000, aggregates: 500)
            written.append(ids)
            positions.append(
                Dictionary(
                    uniqueKeysWithValues: ids.enumerated().map { index, id in (id, (aggregate: "agg-\(index % 500)", version: index / 500 + 1)) }))
        }
        // The backlog sample, which notices a collection gone, every second.
        let sources = ["OUTBOX_SOURCES": fixtures.map { "\($0.database).outbox" }.joined(separator: ","), "RELAY_METRICS_INTERVAL": "1s"]
        var relays = try (0..<2).map { try first.startRelay("relay-\($0)", extra: sources) }
        let landed = try await first.killInTurns(&relays, kills: 3, pause: 400...1200) { victim, kill in
            try first.startRelay("relay-\(victim)-\(kill)", extra: sources)
        }
        #expect(landed == 3, "every kill must land while events were still pending")
        // The third service's outbox disappears while the others still drain. (A relay starting
        // after this creates it again, empty, and so do marks of a batch in flight on SecantusDB;
        // how a source whose collection is gone is reported is SourcesTests' part.)
        #expect(await first.count(OutboxSchema.notFinal) ?? 0 > 0)
        _ = try await dropped.pool.withConnection { try $0.runCommand(["drop": "outbox"]) }
        for (index, f) in fixtures.dropLast().enumerated() {
            #expect(await f.waitUntilDelivered(written[index].count, timeout: .seconds(300)), "source \(index)")
        }
        // Both living relays share each source's partitions.
        for f in fixtures.dropLast() {
            let shared = await eventuallyTrue(timeout: .seconds(30)) {
                let owners =
                    (try? await f.pool.withConnection {
                        try $0.collection(MongoLeaseStore.leasesCollection).find().compactMap { $0["owner"]?.stringValue }
                    }) ?? []
                let counts = Dictionary(grouping: owners, by: { $0 }).mapValues(\.count)
                return counts.count == 2 && counts.values.allSatisfy { $0 >= 4 }
            }
            #expect(shared, "\(f.database): each living relay holds a share of the partitions")
        }
        for relay in relays { #expect(relay.stop() == 0, "SIGTERM ends the relay cleanly: \(relay.log.suffix(1500))") }
        for (index, f) in fixtures.dropLast().enumerated() {
            let received = try await f.receivedIds()
            let missing = Set(written[index]).subtracting(received)
            #expect(missing.isEmpty, "source \(index): never reached the broker, e.g. \(missing.prefix(5).sorted())")
            let disorder = await f.outOfOrder(received, position: positions[index])
            #expect(disorder.count == 0, "source \(index): \(disorder.examples)")
            print("several sources, source \(index): \(written[index].count) events, \(received.count) messages received")
            #expect(await f.count(["status": "parked"]) == 0)
        }
        for f in fixtures { await f.cleanup() }
    }

    /// Polls `condition` every 500 ms until it holds or `timeout` passes.
    func eventuallyTrue(timeout: Duration, _ condition: () async -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if await condition() { return true }
            try? await Task.sleep(for: .milliseconds(500))
        }
        return await condition()
    }
}
