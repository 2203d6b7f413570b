import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

/// Scheduled delivery through crashes: a relay killed while events wait for their time leaves
/// them to the next one, which publishes none before its time and loses none.
extension FaultTests {
    @Test("600 scheduled events through three SIGKILLs of the relay: none published before its time, every one delivered")
    func scheduledThroughKills() async throws {
        let f = try FaultFixture()
        try await f.prepare()
        // Due from 3 s to 12 s from now, one every 15 ms, alternately written as a service in any
        // language writes them and through OutboxWriter.
        let count = 600
        let first = Int64(Date().timeIntervalSince1970 * 1000) + 3000
        func due(_ index: Int) -> Int64 { first + Int64(index) * 15 }
        let plain = try await f.appendMinimal(count / 2, perAggregate: 1) { ["deliverAt": .datetime(due(2 * $0))] }
        let writer = OutboxWriter()
        let written = (0..<count / 2).map { index in
            writer.document(
                for: NewEvent(
                    type: "OrderCreated", aggregateType: "Order", aggregateId: "w-\(index)", data: ["index": .int64(Int64(index))],
                    exchange: f.exchange, deliverAt: Date(timeIntervalSince1970: Double(due(2 * index + 1)) / 1000)))
        }
        try await f.pool.withConnection { try $0.collection("outbox").insertMany(written) }
        var dueAt: [String: Int64] = [:]
        for (index, id) in plain.enumerated() { dueAt[id] = due(2 * index) }
        for (index, document) in written.enumerated() { dueAt[document["_id"]?.stringValue ?? ""] = due(2 * index + 1) }

        // Each message is taken off the queue as it arrives, with the time it arrived.
        let (admin, queue) = (f.admin, f.queue)
        let reader = Task {
            var receipts: [(id: String, at: Int64)] = []
            var ids = Set<String>()
            let deadline = ContinuousClock.now + .seconds(150)
            while ids.count < count && ContinuousClock.now < deadline {
                if let delivery = try? await admin.get(queue), let id = delivery.messageId {
                    receipts.append((id, Int64(Date().timeIntervalSince1970 * 1000)))
                    ids.insert(id)
                } else {
                    try? await Task.sleep(for: .milliseconds(10))
                }
            }
            return receipts
        }

        let settings = ["RELAY_LEASE_TTL": "3s", "RELAY_EXCHANGE": f.exchange]
        var relays = [try f.startRelay("relay-0", extra: settings)]
        let landed = try await f.killInTurns(&relays, kills: 3, pause: 2500...3500) { _, kill in
            try f.startRelay("relay-\(kill)", extra: settings)
        }
        #expect(landed == 3, "every kill must land while events were still waiting")
        #expect(await f.waitUntilDelivered(count, timeout: .seconds(120)))
        for relay in relays { #expect(relay.stop() == 0) }
        let receipts = await reader.value

        var firstArrival: [String: Int64] = [:]
        for receipt in receipts where firstArrival[receipt.id] == nil { firstArrival[receipt.id] = receipt.at }
        let missing = Set(dueAt.keys).subtracting(firstArrival.keys)
        #expect(missing.isEmpty, "never arrived, e.g. \(missing.sorted().prefix(5))")
        let early = firstArrival.filter { id, at in at < dueAt[id] ?? .max }
        #expect(early.isEmpty, "published before their time: \(early.map { "\($0.key) \((dueAt[$0.key] ?? 0) - $0.value) ms early" }.prefix(5))")
        let lateness = firstArrival.compactMap { id, at in dueAt[id].map { at - $0 } }.sorted()
        // A killed relay's partitions wait for its 3 s leases to run out, and a new relay counts
        // a killed one among the living until its heartbeat runs out too (13.8 s late at most,
        // measured here): late by seconds, never left for a sweep.
        #expect((lateness.last ?? .max) < 30_000, "the latest arrived \(lateness.last ?? -1) ms after its time")
        #expect(await f.count(["status": "parked"]) == 0)
        print(
            "scheduled through kill -9 ×3: \(count) events, \(receipts.count) messages received, "
                + "\(receipts.count - firstArrival.count) duplicate publishes, none early, lateness p50 \(lateness.isEmpty ? -1 : lateness[lateness.count / 2]) ms, "
                + "max \(lateness.last ?? -1) ms")
        await f.cleanup()
    }
}
