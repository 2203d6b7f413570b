import Foundation
import Outbox
import OutboxMongo
import Testing

/// `--delivered-retention`: the real relay sets a TTL index on `deliveredAt` that holds delivered
/// events only; the server deletes them once expired and never a pending or parked one.
@Suite("Delivered-event retention", .enabled(if: Servers.enabled), .timeLimit(.minutes(5)))
struct RetentionTests {
    func relay(_ f: Fixture, _ arguments: [String]) async throws -> Programs.Result {
        let result = try await Programs.product(
            "outbox-relay", ["--exit-when-idle", "--http-address", "off", "--no-change-stream", "--exchange", f.exchange] + arguments,
            environment: Programs.environment(f, ["LOG_LEVEL": "info"]), timeout: .seconds(120))
        #expect(result.status == 0, "outbox-relay exited \(result.status): \(result.errors.suffix(2000))")
        return result
    }

    func retentionSeconds(_ f: Fixture) async throws -> Int? {
        let database = f.database
        return try await f.pool.withConnection { connection in
            let indexes =
                try connection.runCommand(["listIndexes": "outbox"], database: database)["cursor"]?.documentValue?["firstBatch"]?.arrayValue ?? []
            return indexes.compactMap(\.documentValue).first { $0["name"]?.stringValue == OutboxSchema.retentionIndex }?["expireAfterSeconds"]?
                .intValue
        }
    }

    @Test("delivered events are deleted after the retention; pending and parked ones stay; the setting can change and be turned off")
    func deliveredEventsExpire() async throws {
        try await Fixture.with { f in
            _ = try await f.queue("all")
            let delivered = try await f.appendEvents((0..<20).map { f.event(aggregate: "retained-\($0)") })
            // Documents that carry an old deliveredAt but are not delivered (a replayed event, a
            // parked one): the retention must never take them.
            let longAgo = Date().addingTimeInterval(-86_400)
            try await f.pool.withConnection { connection in
                try connection.collection("outbox").insertMany([
                    [
                        "_id": "kept-parked", "type": "OrderCreated", "aggregateId": "kept-1", "data": [:], "status": "parked",
                        "deliveredAt": .date(longAgo),
                    ],
                    [
                        "_id": "kept-pending", "type": "OrderCreated", "aggregateId": "kept-2", "data": [:], "status": "pending",
                        "partition": 0, "sid": .string(ObjectId().hex), "attempts": 1, "deliveredAt": .date(longAgo),
                        "nextAttemptAt": .date(Date().addingTimeInterval(86_400)),
                    ],
                ])
            }

            let first = try await relay(f, ["--delivered-retention", "1s"])
            #expect(first.errors.contains("delivered events now deleted after retention"), "the relay says what it set: \(first.errors.suffix(1000))")
            #expect(try await retentionSeconds(f) == 1)
            // (The server may already have deleted them: its expiry runs at any moment.)
            #expect(first.output.contains("events_delivered=\(delivered.count) "), "\(first.output)")

            // The server's expiry runs about once a minute.
            let expired = try await eventually(timeout: .seconds(150)) {
                try await f.count("outbox", ["status": "delivered"]) == 0
            }
            #expect(expired, "delivered events are deleted once their retention is over")
            #expect(try await f.count("outbox", ["_id": ["$in": ["kept-parked", "kept-pending"]]]) == 2, "nothing but delivered events is deleted")

            // Changed, left alone when unset, then turned off.
            let changed = try await relay(f, ["--delivered-retention", "30d"])
            #expect(changed.errors.contains("delivered-event retention changed"))
            #expect(try await retentionSeconds(f) == 30 * 86_400)
            _ = try await relay(f, [])
            #expect(try await retentionSeconds(f) == 30 * 86_400, "without the setting the collection's retention stays")
            let off = try await relay(f, ["--delivered-retention", "off"])
            #expect(off.errors.contains("delivered events now kept for ever"))
            #expect(try await retentionSeconds(f) == nil)
        }
    }

    @Test("a retention that is not a duration fails the start, naming the setting")
    func badRetention() async throws {
        try await Fixture.with { f in
            let result = try await Programs.product(
                "outbox-relay", ["--delivered-retention", "a month", "--http-address", "off"], environment: Programs.environment(f))
            #expect(result.status == 78)
            #expect(result.errors.contains("RELAY_DELIVERED_RETENTION (--delivered-retention)"), "\(result.errors)")
        }
    }
}
