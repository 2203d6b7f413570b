import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

/// Changing the partition count with `outboxctl repartition` and the real relay: refused while a
/// relay runs; pending and parked events move to their aggregate's new partition; leases start
/// above every fence; a relay with the old count refuses to start; a relay with the new count
/// delivers every event once, each aggregate's in version order.
@Suite("Changing the partition count", .enabled(if: Servers.enabled), .timeLimit(.minutes(5)))
struct RepartitionTests {
    func ctl(_ f: Fixture, _ arguments: [String]) async throws -> Programs.Result {
        try await Programs.product("outboxctl", arguments, environment: Programs.environment(f))
    }

    @Test("16 → 4 partitions: nothing lost, order kept, the old count refused")
    func sixteenToFour() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            // 240 events: 60 aggregates × 4 versions, written under 16 partitions.
            var events: [NewEvent] = []
            for version in 1...4 { for aggregate in 0..<60 { events.append(f.event(aggregate: "repartition-\(aggregate)", version: version)) } }
            let ids = try await f.appendEvents(events)
            // A history like a running outbox's: leases taken and retaken (epoch 7 on partition 3),
            // an event fenced by it, and a parked event.
            try await MongoLeaseStore(pool: f.pool, partitions: 16).ensurePartitions()
            let parkedId = ids[5]
            try await f.pool.withConnection { connection in
                _ = try connection.collection(MongoLeaseStore.leasesCollection).updateOne(["_id": 3], ["$set": ["epoch": .int64(7)]])
                _ = try connection.collection("outbox").updateOne(["_id": .string(ids[0])], ["$set": ["fence": .int64(7)]])
                _ = try connection.collection("outbox").updateOne(["_id": .string(parkedId)], ["$set": ["status": "parked", "lastError": "test"]])
                // A running relay's heartbeat.
                try connection.collection(MongoLeaseStore.relaysCollection).insertOne([
                    "_id": "running-relay", "expiresAt": .date(Date().addingTimeInterval(60)),
                ])
            }

            let refused = try await ctl(f, ["repartition", "--partitions", "4"])
            #expect(refused.status == 1)
            #expect(refused.errors.contains("running-relay"), "names the running relay: \(refused.errors)")
            let dry = try await ctl(f, ["repartition", "--partitions", "4", "--dry-run"])
            #expect(dry.status == 0)
            #expect(dry.output.contains("dry run: partitions 16 → 4"), "\(dry.output)")
            #expect(try await f.count(MongoLeaseStore.leasesCollection) == 16, "a dry run changes nothing")

            try await f.pool.withConnection { _ = try $0.collection(MongoLeaseStore.relaysCollection).deleteMany([:]) }
            let done = try await ctl(f, ["repartition", "--partitions", "4", "--json"])
            #expect(done.status == 0, "\(done.errors)")
            #expect(done.output.contains(#""to":4"#) || done.output.contains(#""to" : 4"#), "\(done.output)")
            for document in try await f.find("outbox", ["status": ["$in": ["pending", "parked"]]]) {
                let aggregate = document["aggregateId"]?.stringValue ?? ""
                #expect(document["partition"]?.intValue == EventNaming.partition(ofAggregate: aggregate, partitions: 4), "\(aggregate)")
            }
            let leases = try await f.find(MongoLeaseStore.leasesCollection)
            #expect(leases.compactMap { $0["_id"]?.intValue } == [0, 1, 2, 3])
            #expect(leases.allSatisfy { $0["epoch"]?.intValue == 8 && $0["owner"] == .null }, "free, above every fence")

            // The old count is refused, naming the setting.
            let old = try await Programs.product(
                "outbox-relay", ["--exit-when-idle", "--http-address", "off", "--partitions", "16"], environment: Programs.environment(f))
            #expect(old.status == 78)
            #expect(old.errors.contains("OUTBOX_PARTITIONS (--partitions)") && old.errors.contains("set up for 4 partitions"), "\(old.errors)")

            // The new count delivers everything once, in order.
            let relay = try await Programs.product(
                "outbox-relay", ["--exit-when-idle", "--http-address", "off", "--no-change-stream", "--partitions", "4", "--exchange", f.exchange],
                environment: Programs.environment(f, ["LOG_LEVEL": "warning"]), timeout: .seconds(180))
            #expect(relay.status == 0, "\(relay.errors.suffix(2000))")
            let received = try await f.admin.drain(queue).compactMap(\.messageId)
            let expected = ids.filter { $0 != parkedId }
            #expect(received.count == expected.count, "each event once")
            #expect(Set(received) == Set(expected))
            let versionOf = Dictionary(uniqueKeysWithValues: zip(ids, events.map { ($0.aggregateId, $0.aggregateVersion) }))
            var last: [String: Int] = [:]
            for id in received {
                guard let (aggregate, version) = versionOf[id] else { continue }
                #expect(version > last[aggregate, default: 0], "\(aggregate) v\(version) after v\(last[aggregate, default: 0])")
                last[aggregate] = version
            }
            #expect(try await f.count("outbox", ["status": "parked"]) == 1, "the parked event stays parked")
        }
    }
}
