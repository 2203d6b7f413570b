import Foundation
import OutboxMongo
import Testing

/// Relays whose clocks disagree with the database's, by Debian's libfaketime: every time the
/// relay compares or writes (due times, retries, scan ids) is the database's.
///
/// The clocks run ahead: under libfaketime 0.9.10 a clock set behind stalls Swift's timers (a
/// 2 s `Task.sleep` did not end within 20 s with `FAKETIME=-10m`; it took 2.0 s with `+10m`).
extension FaultTests {
    /// The environment that sets a relay's wall clock `offset` (libfaketime's syntax, e.g.
    /// "+10m") away from everyone else's; its monotonic clocks stay true.
    static func clock(_ offset: String) throws -> [String: String] {
        let library = try #require(Env.fakeTime, "libfaketime is missing (ops/setup installs Debian's faketime)")
        return ["LD_PRELOAD": library, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"]
    }

    /// Waits until the partitions are held by exactly `relays` relays; returns partition 0's owner.
    func waitForOwners(_ f: FaultFixture, relays: Int) async throws -> String? {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            let leases = try await f.pool.withConnection { try $0.collection(MongoLeaseStore.leasesCollection).find() }
            let owners = leases.compactMap { $0["owner"]?.stringValue }
            if owners.count == 16 && Set(owners).count == relays {
                return leases.first { $0["_id"]?.intValue == 0 }?["owner"]?.stringValue
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        return nil
    }

    @Test("an adopter whose clock is 10 minutes ahead hands events over to a relay with a true clock, which delivers them at once")
    func adopterAhead() async throws {
        let f = try FaultFixture()
        try await f.prepare()
        let exchange = ["RELAY_EXCHANGE": f.exchange]
        let ahead = try f.startRelay("relay-ahead", extra: exchange.merging(try Self.clock("+10m")) { $1 }.merging(["RELAY_ID": "ahead"]) { $1 })
        #expect(try await waitForOwners(f, relays: 1) == "ahead")
        let onTime = try f.startRelay("relay-on-time", extra: exchange.merging(["RELAY_ID": "on-time"]) { $1 })
        #expect(try await waitForOwners(f, relays: 2) == "ahead", "the first relay keeps partition 0 and adopts new documents")
        // Written by the contract (no relay fields): the adopter stamps those of the other
        // relay's partitions due now; by its own clock that would be 10 minutes from now.
        let ids = try await f.appendMinimal(600, perAggregate: 3)
        #expect(await f.waitUntilDelivered(ids.count, timeout: .seconds(60)))
        for relay in [ahead, onTime] { #expect(relay.stop() == 0) }
        try await f.checkReceived(ids, test: "adopter 10 min ahead", maxDuplicates: 0)
        await f.cleanup()
    }

    @Test("two relays 10 minutes apart, killed in turns while adopting events of 300 aggregates: every event delivered, in order")
    func skewedAdopters() async throws {
        let f = try FaultFixture()
        try await f.prepare()
        // Each aggregate's 10 events spread over the whole backlog, so its later events are seen
        // by a later adopter than its earlier ones.
        let aggregates = 300
        let ids = try await f.appendMinimal(3000, perAggregate: 10) { ["aggregateId": .string("skew-\($0 % aggregates)")] }
        var position: [String: (aggregate: String, version: Int)] = [:]
        for (index, id) in ids.enumerated() { position[id] = ("skew-\(index % aggregates)", index / aggregates + 1) }
        let settings = ["RELAY_EXCHANGE": f.exchange, "RELAY_BATCH_SIZE": "100"]
        let clocks = [settings, settings.merging(try Self.clock("+10m")) { $1 }]
        var relays = try (0..<2).map { try f.startRelay("relay-\($0)-0", extra: clocks[$0]) }
        let killsDuringRun = try await f.killInTurns(&relays, kills: 4, pause: 500...1500) { victim, kill in
            try f.startRelay("relay-\(victim)-\(kill)", extra: clocks[victim])
        }
        #expect(killsDuringRun > 0, "a kill must land while events were still pending or unseen")
        #expect(await f.waitUntilDelivered(ids.count, timeout: .seconds(180)))
        for relay in relays { #expect(relay.stop() == 0) }
        let received = try await f.receivedIds()
        #expect(Set(ids).subtracting(received).isEmpty, "every event reached the broker")
        let (outOfOrder, examples) = await f.outOfOrder(received, position: position)
        #expect(outOfOrder == 0, "events of an aggregate arrived out of order \(outOfOrder) times: \(examples)")
        print("relays 10 min apart adopting in turns: \(ids.count) events, \(received.count - Set(received).count) duplicate publishes")
        await f.cleanup()
    }
}
