import Foundation
import Outbox
import Testing

@testable import OutboxMongo

@Suite("Backlog monitor on the real servers", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct BacklogMonitorTests {
    @Test("a sample split by partition gives the figures of one over the whole outbox")
    func splitLikeWhole() async throws {
        try await Fixture.with { f in
            let ids = try await f.appendEvents((0..<10).map { f.event(aggregate: "order-\($0)") })
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            _ = try await f.pool.withConnection { connection in
                let outbox = connection.collection("outbox")
                // Three events due two minutes ago and still pending: stuck.
                try outbox.updateMany(
                    ["_id": ["$in": .array(ids.prefix(3).map { .string($0) })]], ["$set": ["nextAttemptAt": .datetime(now - 120_000)]])
                try outbox.insertMany([
                    // The status-pending format: no scan id, no partition; written three minutes ago.
                    [
                        "_id": "pending-format", "status": "pending", "type": "T", "aggregateId": "p", "data": [:],
                        "timestamp": .datetime(now - 180_000),
                    ],
                    ["_id": "new-1", "type": "T", "aggregateId": "n1", "data": [:], "timestamp": .datetime(now)],
                    ["_id": "new-2", "type": "T", "aggregateId": "n2", "data": [:], "timestamp": .datetime(now)],
                ])
            }
            let monitor = BacklogMonitor(pool: f.pool, interval: .seconds(60), logger: f.logger)
            let split = try await monitor.sample(split: true)
            let whole = try await monitor.sample(split: false)
            #expect(split.pending == 13 && split.stuck == 3, "\(split)")
            #expect(split.oldestPendingAge >= 170 && split.oldestPendingAge < 240, "\(split)")
            #expect(whole.pending == split.pending && whole.stuck == split.stuck && whole.parked == split.parked)
            #expect(abs(whole.oldestPendingAge - split.oldestPendingAge) < 5)
        }
    }
}
