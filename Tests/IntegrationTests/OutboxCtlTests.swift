import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import OutboxOps
import Testing

@Suite("outboxctl on real data", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct OutboxCtlTests {
    /// Sets fields of events directly, as a stuck or old event would have them.
    func set(_ f: Fixture, _ ids: [String], _ fields: Document) async throws {
        try await f.pool.withConnection {
            try $0.collection("outbox").updateMany(["_id": ["$in": .array(ids.map { .string($0) })]], ["$set": .document(fields)])
        }
    }

    @Test("retry --stuck brings stuck events back and the relay delivers them; --dry-run changes nothing")
    func retryStuck() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let ids = try await f.appendEvents((0..<6).map { f.event(aggregate: "s-\($0)") })
            // Four are stuck: written an hour ago, backed off into the far future.
            let stuck = Array(ids.prefix(4))
            try await set(
                f, stuck,
                [
                    "timestamp": .date(Date().addingTimeInterval(-3600)), "nextAttemptAt": .date(Date().addingTimeInterval(86_400)),
                    "attempts": .int32(3),
                ])
            try await set(f, Array(ids.suffix(2)), ["nextAttemptAt": .date(Date().addingTimeInterval(86_400))])
            let admin = OutboxAdmin(pool: f.pool)
            let filter = EventFilter(olderThan: .seconds(600))
            let dry = try await admin.retry(filter, dryRun: true)
            #expect(dry.matched == 4 && dry.changed == 0 && Set(dry.ids) == Set(stuck))
            #expect(try await f.count("outbox", ["nextAttemptAt": ["$gt": .date(Date())]]) == 6, "a dry run changes nothing")
            let done = try await admin.retry(filter, dryRun: false)
            #expect(done.changed == 4)
            let publisher = f.makePublisher()
            try await f.drain(try await f.makeRelay(store: f.makeStore(), publisher: publisher))
            await publisher.close()
            #expect(Set(try await f.admin.drain(queue).compactMap(\.messageId)) == Set(stuck))
            #expect(try await f.count("outbox", ["status": "pending"]) == 2, "the two recent ones were not touched")
        }
    }

    @Test("park and unpark: parked events stay put, unparked ones flow with a fresh attempt count")
    func parkUnpark() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let ids = try await f.appendEvents((0..<3).map { f.event(aggregate: "p-\($0)") })
            let admin = OutboxAdmin(pool: f.pool)
            #expect(try await admin.park(EventFilter(ids: [ids[0], ids[1]]), reason: "investigating", dryRun: false).changed == 2)
            let publisher = f.makePublisher()
            let relay = try await f.makeRelay(store: f.makeStore(), publisher: publisher)
            try await f.drain(relay)
            #expect(try await f.admin.drain(queue).compactMap(\.messageId) == [ids[2]])
            #expect(try await f.find("outbox", ["_id": .string(ids[0])]).first?["lastError"] == "parked by operator: investigating")
            let dry = try await admin.unpark(EventFilter(), dryRun: true)
            #expect(dry.matched == 2 && dry.changed == 0)
            #expect(try await f.count("outbox", ["status": "parked"]) == 2)
            #expect(try await admin.unpark(EventFilter(ids: [ids[0]]), dryRun: false).changed == 1)
            #expect(try await admin.unpark(EventFilter(), dryRun: false).changed == 1)
            try await f.drain(relay)
            await publisher.close()
            #expect(Set(try await f.admin.drain(queue).compactMap(\.messageId)) == [ids[0], ids[1]])
            #expect(try await f.count("outbox", ["status": "delivered"]) == 3)
        }
    }

    @Test("history lists an aggregate's events in version order; replay republishes with the original ids")
    func historyAndReplay() async throws {
        try await Fixture.with { f in
            let ids = try await f.appendEvents([
                f.event(aggregate: "h", version: 2), f.event(aggregate: "h", version: 1), f.event(aggregate: "other"),
            ])
            let admin = OutboxAdmin(pool: f.pool)
            let history = try await admin.history(aggregateId: "h")
            #expect(history.compactMap { $0["aggregateVersion"]?.intValue } == [1, 2])
            #expect(history.compactMap { $0["_id"]?.stringValue } == [ids[1], ids[0]])

            let target = try await f.queue("replayed", bindings: ["replay.key"])
            let dry = try await admin.replay(
                EventFilter(aggregateId: "h"), exchange: f.exchange, routingKey: "replay.key", amqp: f.amqp, dryRun: true, logger: f.logger)
            #expect(dry.matched == 2 && dry.changed == 0)
            #expect(try await f.admin.drain(target).isEmpty, "a dry run publishes nothing")
            let done = try await admin.replay(
                EventFilter(aggregateId: "h"), exchange: f.exchange, routingKey: "replay.key", amqp: f.amqp, dryRun: false, logger: f.logger)
            #expect(done.changed == 2)
            let received = try await f.admin.drain(target)
            #expect(Set(received.compactMap(\.messageId)) == [ids[0], ids[1]], "original message ids")
            #expect(try await f.count("outbox", ["status": "pending"]) == 3, "replay does not change the outbox")
        }
    }

    @Test("purge removes only delivered events older than the retention; --dry-run removes nothing")
    func purge() async throws {
        try await Fixture.with { f in
            let ids = try await f.appendEvents((0..<5).map { f.event(aggregate: "u-\($0)") })
            try await set(f, Array(ids.prefix(2)), ["status": "delivered", "deliveredAt": .date(Date().addingTimeInterval(-7200))])
            try await set(f, [ids[2]], ["status": "delivered", "deliveredAt": .date(Date())])
            try await set(f, [ids[3]], ["status": "parked", "deliveredAt": .date(Date().addingTimeInterval(-7200))])
            let admin = OutboxAdmin(pool: f.pool)
            let dry = try await admin.purge(olderThan: .seconds(3600), dryRun: true)
            #expect(dry.matched == 2 && dry.changed == 0)
            #expect(try await f.count("outbox") == 5)
            #expect(try await admin.purge(olderThan: .seconds(3600), dryRun: false).changed == 2)
            #expect(Set(try await f.find("outbox").compactMap { $0["_id"]?.stringValue }) == Set(ids.suffix(3)))
        }
    }

    @Test("status counts match the database, including lease owners")
    func status() async throws {
        try await Fixture.with { f in
            let ids = try await f.appendEvents((0..<4).map { f.event(aggregate: "t-\($0)") })
            try await set(f, [ids[0]], ["status": "parked"])
            try await set(f, [ids[1]], ["status": "delivered", "deliveredAt": .date(Date())])
            _ = try await f.makeLeases(owner: "relay-x")
            let status = try await OutboxAdmin(pool: f.pool).status()
            #expect(status.pending == 2 && status.parked == 1 && status.delivered == 1 && status.deliveredLastMinute == 1)
            #expect(status.oldestPendingAge.map { $0 >= 0 && $0 < 60 } == true)
            #expect(status.leases.count == 16 && status.leases.allSatisfy { $0.owner == "relay-x" && $0.expiresIn > 0 })
        }
    }

    @Test("bad arguments exit 64 with a message; an unreachable database exits 69")
    func exitCodes() async throws {
        func run(_ arguments: [String], environment: [String: String]) async throws -> (Int32, String) {
            let result = try await Programs.product("outboxctl", arguments, environment: environment)
            return (result.status, result.output + result.errors)
        }
        let environment = ["MONGODB_URI": Servers.mongoURI, "OUTBOX_DATABASE": "outboxctl_exit_codes"]
        for arguments in [
            ["retry"], ["list", "--status", "lost"], ["purge", "--older-than", "soon"], ["park"], ["frobnicate"], ["list", "--since", "yesterday"],
        ] {
            let (code, text) = try await run(arguments, environment: environment)
            #expect(code == 64, "\(arguments) exited \(code)")
            #expect(text.contains("Error:"), "\(arguments): \(text)")
        }
        let (unreachable, text) = try await run(["status"], environment: ["MONGODB_URI": "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300"])
        #expect(unreachable == 69, "\(text)")
        let (noURI, message) = try await run(["status"], environment: [:])
        #expect(noURI == 78 && message.contains("MONGODB_URI"))
        let (ok, _) = try await run(["status", "--json"], environment: environment)
        #expect(ok == 0)
    }

    @Test("cancel says why it left each event: too soon, no deliverAt, not scheduled, no such event")
    func cancelReasons() async throws {
        try await Fixture.with { f in
            let soon = Date().addingTimeInterval(0.5)
            try await f.pool.withConnection {
                try $0.collection("outbox").insertMany([
                    ["_id": "plain", "type": "OrderCreated", "aggregateId": "a-1", "data": [:], "timestamp": .date(Date())],
                    ["_id": "soon", "type": "OrderCreated", "aggregateId": "a-2", "data": [:], "timestamp": .date(Date()), "deliverAt": .date(soon)],
                    ["_id": "done", "type": "OrderCreated", "aggregateId": "a-3", "data": [:], "timestamp": .date(Date()), "status": "delivered"],
                ])
            }
            let result = try await Programs.product("outboxctl", ["cancel", "plain", "soon", "done", "gone"], environment: Programs.environment(f))
            #expect(result.status == 1, "\(result.output) \(result.errors)")
            #expect(result.output.contains("plain (not yet seen; it has no deliverAt"), "\(result.output)")
            #expect(result.output.contains("soon (not yet seen; due within a second: too late to cancel)"), "\(result.output)")
            #expect(result.output.contains("done (delivered; only scheduled events can be cancelled)"), "\(result.output)")
            #expect(result.output.contains("gone (no such event; nothing to cancel)"), "\(result.output)")
        }
    }
}
