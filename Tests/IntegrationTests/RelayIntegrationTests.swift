import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

@Suite("Relay on the real servers (I2, I3)", .enabled(if: Servers.enabled), .timeLimit(.minutes(3)))
struct RelayIntegrationTests {
    @Test("delivers exactly the pending events, with their ids and properties, and marks them")
    func deliversPending() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let ids = try await f.appendEvents((0..<120).map { f.event(aggregate: "order-\($0)") })
            // Events that are not pending must not be published again.
            try await f.pool.withConnection { connection in
                let writer = OutboxWriter()
                var delivered = writer.document(for: f.event(aggregate: "old-1"))
                delivered["status"] = "delivered"
                var parked = writer.document(for: f.event(aggregate: "old-2"))
                parked["status"] = "parked"
                try connection.collection("outbox").insertMany([delivered, parked])
            }
            let store = f.makeStore()
            try await store.ensureIndexes()
            let publisher = f.makePublisher()
            try await f.drain(try await f.makeRelay(store: store, publisher: publisher))
            await publisher.close()

            let received = try await f.admin.drain(queue)
            #expect(received.count == 120)
            #expect(Set(received.compactMap(\.messageId)) == Set(ids))
            let first = try #require(received.first)
            #expect(first.type == "OrderCreated")
            #expect(first.routingKey == "order.created")
            #expect(first.headers["x-aggregate-type"] == .string("Order"))
            #expect(first.headers["x-aggregate-version"] == .int(1))
            let body = try JSONValue.parse(first.body)
            #expect(body["id"] == .string(first.messageId!))
            #expect(body["data"]?["n"] == .number("1"))
            #expect(try await f.count("outbox", ["status": "delivered"]) == 121)
            #expect(try await f.count("outbox", ["status": "pending"]) == 0)
            let marked = try await f.find("outbox", ["_id": .string(ids[0])]).first
            #expect(marked?["deliveredAt"]?.dateValue != nil)
            #expect(marked?["attempts"]?.intValue == 1)
        }
    }

    @Test("nacked publishes (queue full, reject-publish) are not marked delivered")
    func nacked() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("tiny", arguments: ["x-max-length": .int(1), "x-overflow": .string("reject-publish")])
            let ids = try await f.appendEvents((0..<3).map { f.event(aggregate: "agg-\($0)") })
            let publisher = f.makePublisher()
            let relay = try await f.makeRelay(store: f.makeStore(), publisher: publisher, retry: .init(maxAttempts: 5, baseDelay: .seconds(60)))
            let pass = try await relay.runOnce()
            await publisher.close()
            #expect(pass.fetched == 3)
            #expect(pass.delivered == 1)
            #expect(pass.retried == 2)
            let docs = try await f.find("outbox")
            let delivered = docs.filter { $0["status"] == "delivered" }.compactMap { $0["_id"]?.stringValue }
            #expect(delivered == [ids[0]])
            for doc in docs where doc["status"] == "pending" {
                #expect(doc["lastError"] == "broker nacked the publish")
                #expect(doc["attempts"]?.intValue == 1)
            }
            #expect(try await f.admin.drain(queue).compactMap(\.messageId) == [ids[0]])
        }
    }

    @Test("unroutable publishes (basic.return) are never delivered: retried, then parked with the reason")
    func unroutable() async throws {
        try await Fixture.with { f in
            // No queue is bound to the test exchange.
            try await f.appendEvents([f.event(aggregate: "lonely")])
            let publisher = f.makePublisher()
            let relay = try await f.makeRelay(store: f.makeStore(), publisher: publisher, retry: .init(maxAttempts: 3, baseDelay: .zero))
            try await f.drain(relay)
            await publisher.close()
            let doc = try #require(try await f.find("outbox").first)
            #expect(doc["status"] == "parked")
            #expect(doc["attempts"]?.intValue == 3)
            #expect(doc["lastError"]?.stringValue?.contains("NO_ROUTE") == true)
        }
    }

    @Test("a malformed outbox document is parked with a reason and the rest still flow")
    func malformed() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            try await f.pool.withConnection { connection in
                try connection.collection("outbox").insertMany([
                    ["_id": "bad-1", "status": "pending", "nextAttemptAt": .date(Date()), "type": .int32(5)],
                    [
                        "_id": "bad-2", "status": "pending", "nextAttemptAt": .date(Date()), "type": "X", "aggregateType": "A",
                        "aggregateId": "x", "aggregateVersion": 1, "data": "not a document",
                    ],
                ])
            }
            let good = try await f.appendEvents([f.event(aggregate: "fine")])
            let publisher = f.makePublisher()
            try await f.drain(try await f.makeRelay(store: f.makeStore(), publisher: publisher))
            await publisher.close()
            #expect(try await f.admin.drain(queue).compactMap(\.messageId) == good)
            let bad = try await f.find("outbox", ["status": "parked"])
            #expect(bad.count == 2)
            #expect(bad.allSatisfy { $0["lastError"]?.stringValue?.hasPrefix("malformed: ") == true })
            #expect(bad.first { $0["_id"] == "bad-1" }?["lastError"] == "malformed: type must be a non-empty string of at most 255 bytes, found int")
        }
    }

    @Test("broker unreachable: events stay pending, untouched, and go out once it is reachable")
    func brokerUnreachable() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let ids = try await f.appendEvents([f.event(aggregate: "a"), f.event(aggregate: "b")])
            // A port nothing listens on.
            let dead = ConfirmPublisher(
                configuration: AMQPConfiguration(endpoint: AMQPEndpoint(host: "127.0.0.1", port: 1), connectTimeout: .seconds(1)),
                logger: f.logger)
            let pass = try await f.makeRelay(store: f.makeStore(), publisher: dead).runOnce()
            #expect(pass.unsent == 2)
            let docs = try await f.find("outbox")
            #expect(docs.allSatisfy { $0["status"] == "pending" && $0["attempts"]?.intValue == 0 && $0["lastError"] == nil })
            let publisher = f.makePublisher()
            try await f.drain(try await f.makeRelay(store: f.makeStore(), publisher: publisher))
            await publisher.close()
            #expect(Set(try await f.admin.drain(queue).compactMap(\.messageId)) == Set(ids))
        }
    }

    @Test("the scan's rewind looks for pending events only below where it stood, and finds one committed late with an older id")
    func boundedRewind() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let (pool, commands) = try f.observedPool()
            let publisher = f.makePublisher()
            let relay = try await f.makeRelay(store: MongoOutboxStore(pool: pool, owner: "test-relay", logger: f.logger), publisher: publisher)
            try await f.appendEvents((0..<3).map { f.event(aggregate: "r-\($0)") })
            try await f.drain(relay)
            // Newer events, and one whose scan id is an hour older than everything delivered.
            let newer = try await f.appendEvents((3..<6).map { f.event(aggregate: "r-\($0)") })
            let late = try await f.appendEvents([f.event(aggregate: "r-late")])
            let hourAgo = String(format: "%08x", UInt32(Date().timeIntervalSince1970) - 3600) + String(repeating: "0", count: 16)
            try await f.pool.withConnection { try $0.collection("outbox").updateOne(["_id": .string(late[0])], ["$set": ["sid": .string(hourAgo)]]) }
            try await Task.sleep(for: .seconds(1.2))  // past the rewind interval
            try await f.drain(relay)
            await publisher.close()
            #expect(Set(try await f.admin.drain(queue).compactMap(\.messageId)).isSuperset(of: Set(newer + late)))
            #expect(try await f.count("outbox", ["status": "pending"]) == 0)
            // The lowest-pending lookups (limit 1, scan id only): those of the start read every
            // scan id (any string; documents without one are not the scan's), a partition each;
            // every later one reads all partitions, only below where the scan stood.
            let lookups = commands.values.filter { $0.name == "find" && $0.command["projection"] == ["sid": 1] && $0.command["limit"]?.intValue == 1 }
                .map { $0.command["filter"]?.documentValue ?? [:] }
            let start = lookups.prefix { $0["sid"] == ["$gte": ""] }
            #expect(
                start.map { $0["partition"]?.intValue } == (0..<OutboxSchema.defaultPartitions).map(Optional.some),
                "the start's lookups have no upper bound, one per partition: \(lookups)")
            let later = lookups.dropFirst(start.count)
            #expect(!later.isEmpty)
            #expect(
                later.allSatisfy { $0["sid"]?.documentValue?["$lt"]?.stringValue != nil && $0["partition"] == nil },
                "later ones are bounded: \(lookups)")
        }
    }

    @Test("per-aggregate order: version n+1 is published only after version n was confirmed")
    func perAggregateOrder() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            var events: [NewEvent] = []
            for version in 1...5 {
                for aggregate in ["x", "y", "z"] { events.append(f.event(aggregate: aggregate, version: version)) }
            }
            try await f.appendEvents(events)
            let publisher = f.makePublisher()
            let relay = try await f.makeRelay(store: f.makeStore(), publisher: publisher)
            var passes = 0
            while try await relay.runOnce().fetched > 0 { passes += 1 }
            await publisher.close()
            #expect(passes == 5, "one version of each aggregate per pass")
            let received = try await f.admin.drain(queue)
            for aggregate in ["x", "y", "z"] {
                let versions = received.filter { $0.headers["x-aggregate-id"] == .string(aggregate) }.map { $0.headers["x-aggregate-version"] }
                #expect(versions == (1...5).map { .int(Int64($0)) })
            }
        }
    }

    @Test("the change stream wakes the relay long before its poll interval")
    func changeStreamWakeUp() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            try await f.makeStore().ensureIndexes()
            let wake = WakeSignal()
            let hint = ChangeStreamHint(pool: f.pool, wake: wake, logger: f.logger, maxAwait: .milliseconds(200))
            let publisher = f.makePublisher()
            let relay = Relay(
                store: f.makeStore(), publisher: publisher, leases: try await f.makeLeases(),
                configuration: .init(pollInterval: .seconds(30)), logger: f.logger, wake: wake)
            let hintTask = Task { try await hint.run() }
            let relayTask = Task { try await relay.run() }
            defer {
                hintTask.cancel()
                relayTask.cancel()
            }
            // Let the relay finish its first (empty) poll and the watch open.
            try await Task.sleep(for: .seconds(1))
            let started = ContinuousClock.now
            let ids = try await f.appendEvents([f.event(aggregate: "fast")])
            #expect(await eventually(timeout: .seconds(10)) { (try? await f.count("outbox", ["status": "delivered"])) == 1 })
            let latency = ContinuousClock.now - started
            #expect(latency < .seconds(5), "delivered in \(latency) with a 30 s poll interval")
            #expect(try await f.admin.drain(queue).compactMap(\.messageId) == ids)
            relayTask.cancel()
            hintTask.cancel()
            await publisher.close()
        }
    }

    @Test("a relay killed with SIGKILL leaves no libmongoc counter segment for a later process with its pid to trip over")
    func noCounterSegmentLeft() async throws {
        try await Fixture.with { f in
            // libmongoc makes /dev/shm/mongoc-<pid> when the process loads it; a later process
            // given the same pid then prints "Falling back to malloc for counters" before any of
            // our code runs.
            let relay = try Program("outbox-relay", environment: Programs.environment(f, ["RELAY_HTTP_ADDRESS": "off"]))
            let segment = "/dev/shm/mongoc-\(relay.pid)"
            let working = await eventually(timeout: .seconds(30)) { relay.output.contains("partition leases changed") }
            #expect(working, "\(relay.output)")
            #expect(relay.poll() == nil && !FileManager.default.fileExists(atPath: segment), "the segment's name is removed while the relay runs")
            kill(relay.pid, SIGKILL)
            #expect(await relay.wait(timeout: .seconds(10)) == 128 + SIGKILL)
            #expect(!FileManager.default.fileExists(atPath: segment), "\(segment) left behind")
        }
    }
}
