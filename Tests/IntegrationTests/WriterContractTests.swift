import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import OutboxOps
import Testing

/// The writer's contract on the real servers: documents as any service writes them (no relay
/// fields) are delivered; a defective one is parked with a reason naming the field and counted;
/// nothing in the collection goes unseen.
@Suite("The outbox contract for writers in any language", .enabled(if: Servers.enabled), .timeLimit(.minutes(3)))
struct WriterContractTests {
    func store(_ f: Fixture, owner: String = "test-relay", collection: String = "outbox") -> MongoOutboxStore {
        MongoOutboxStore(
            pool: f.pool, owner: owner,
            options: .init(collection: collection, routing: EventRouting(defaultExchange: f.exchange), sweepInterval: .zero), logger: f.logger)
    }

    func insert(_ f: Fixture, _ documents: [Document], collection: String = "outbox") async throws {
        try await f.pool.withTransaction { try $0.collection(collection).insertMany(documents) }
    }

    func minimal(_ id: BSON?, aggregate: String, type: String = "OrderCreated", at ms: Int64, data: Document = ["n": 1]) -> Document {
        var document: Document = ["type": .string(type), "aggregateId": .string(aggregate), "data": .document(data), "timestamp": .datetime(ms)]
        if let id { document["_id"] = id }
        return document
    }

    var now: Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    @Test("the seed's shape {type, aggregateId, data, timestamp} is delivered, with any kind of _id as the message id")
    func seedShape() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let oid = ObjectId()
            let untimed = ObjectId()
            let uuid: [UInt8] = Array(0..<16)
            let documents = [
                minimal(.objectId(oid), aggregate: "a-1", at: now),
                minimal(.string("4c6f8a6e-0000-4000-8000-000000000001"), aggregate: "a-2", at: now),
                minimal(.int32(42), aggregate: "a-3", at: now),
                minimal(.int64(1 << 40), aggregate: "a-4", at: now),
                minimal(.binary(subtype: 4, bytes: uuid), aggregate: "a-5", at: now),
                // No timestamp: dated by its ObjectId.
                ["_id": .objectId(untimed), "type": "OrderCreated", "aggregateId": "a-6", "data": ["n": 6]],
            ]
            try await insert(f, documents)
            let publisher = f.makePublisher()
            try await f.drain(try await f.makeRelay(store: store(f), publisher: publisher))
            await publisher.close()
            let received = try await f.admin.drain(queue)
            #expect(
                Set(received.compactMap(\.messageId)) == [
                    oid.hex, "4c6f8a6e-0000-4000-8000-000000000001", "42", "1099511627776", "00010203-0405-0607-0809-0a0b0c0d0e0f",
                    untimed.hex,
                ])
            #expect(received.count == 6)
            #expect(received.allSatisfy { $0.routingKey == "order.created" && $0.type == "OrderCreated" })
            let stored = try await f.find("outbox")
            #expect(stored.allSatisfy { $0["status"] == "delivered" && $0["partition"]?.intValue != nil && $0["deliveredAt"] != nil })
            // The writer's fields are kept as written: the outbox is the event store.
            #expect(stored.allSatisfy { $0["aggregateVersion"] == nil && $0["exchange"] == nil && $0["type"] == "OrderCreated" })
        }
    }

    @Test("documents delivered at first sight are marked in shared statements, with their partition and no scan id")
    func firstSightMarks() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let documents = (0..<60).map { minimal(.objectId(ObjectId()), aggregate: "m-\($0)", at: now) }
            try await insert(f, documents)
            let (pool, commands) = try f.observedPool()
            let store = MongoOutboxStore(
                pool: pool, owner: "test-relay",
                options: .init(routing: EventRouting(defaultExchange: f.exchange), sweepInterval: .zero), logger: f.logger)
            let publisher = f.makePublisher()
            try await f.drain(try await f.makeRelay(store: store, publisher: publisher))
            await publisher.close()
            #expect(try await f.admin.drain(queue).count == 60)
            // The first writes: statements on documents that still have no status.
            let firstWrites = commands.values.filter { $0.name == "update" }.flatMap { $0.command["updates"]?.arrayValue ?? [] }
                .compactMap(\.documentValue).filter { $0["q"]?.documentValue?["status"] == OutboxSchema.firstSight["status"] }
            let ids = firstWrites.flatMap { statement -> [BSON] in
                let id = statement["q"]?.documentValue?["_id"]
                return id?.documentValue?["$in"]?.arrayValue ?? [id].compactMap { $0 }
            }
            #expect(Set(ids) == Set(documents.compactMap { $0["_id"] }), "each document written once")
            #expect(firstWrites.count <= 16, "at most a statement per partition, not one per document: \(firstWrites.count)")
            let stored = try await f.find("outbox")
            #expect(stored.count == 60)
            #expect(stored.allSatisfy { $0["status"] == "delivered" && $0["partition"]?.intValue != nil && $0["seenAt"] != nil })
            #expect(stored.allSatisfy { $0["sid"] == nil }, "only pending events are scanned")
        }
    }

    @Test("each defective document is parked with a reason naming the field, counted, while good ones flow")
    func defects() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let t = now
            let defects: [(Document, String)] = [
                (["_id": "no-type", "aggregateId": "x", "data": [:], "timestamp": .datetime(t)], "type must be"),
                (["_id": "int-type", "type": .int32(5), "aggregateId": "x", "data": [:], "timestamp": .datetime(t)], "type must be"),
                (["_id": "no-aggregate", "type": "T", "data": [:], "timestamp": .datetime(t)], "aggregateId must be"),
                (
                    ["_id": "oid-aggregate", "type": "T", "aggregateId": .objectId(ObjectId()), "data": [:], "timestamp": .datetime(t)],
                    "aggregateId must be"
                ),
                (["_id": "no-data", "type": "T", "aggregateId": "x", "timestamp": .datetime(t)], "data must be"),
                (["_id": "string-data", "type": "T", "aggregateId": "x", "data": "{}", "timestamp": .datetime(t)], "data must be"),
                (
                    ["_id": "string-timestamp", "type": "T", "aggregateId": "x", "data": [:], "timestamp": "2026-11-28T10:00:00Z"],
                    "timestamp must be a date"
                ),
                (
                    ["_id": "zero-version", "type": "T", "aggregateId": "v", "data": [:], "aggregateVersion": .int32(0), "timestamp": .datetime(t)],
                    "aggregateVersion must be"
                ),
                (
                    [
                        "_id": "int-type-of-aggregate", "type": "T", "aggregateId": "x", "aggregateType": .int32(1), "data": [:],
                        "timestamp": .datetime(t),
                    ], "aggregateType must be"
                ),
                (
                    ["_id": "int-exchange", "type": "T", "aggregateId": "x", "exchange": .int32(1), "data": [:], "timestamp": .datetime(t)],
                    "exchange must be"
                ),
                (
                    [
                        "_id": "long-key", "type": "T", "aggregateId": "x", "routingKey": .string(String(repeating: "k", count: 300)), "data": [:],
                        "timestamp": .datetime(t),
                    ], "routingKey must be"
                ),
                (
                    ["_id": "null-header", "type": "T", "aggregateId": "x", "headers": ["h": .null], "data": [:], "timestamp": .datetime(t)],
                    "headers.h must be"
                ),
                (
                    ["_id": "int-correlation", "type": "T", "aggregateId": "x", "correlationId": .int32(7), "data": [:], "timestamp": .datetime(t)],
                    "correlationId must be"
                ),
                (["_id": ["nested": 1], "type": "T", "aggregateId": "x", "data": [:], "timestamp": .datetime(t)], "_id of type document"),
                (
                    ["_id": "odd-status", "status": "NEW", "type": "T", "aggregateId": "x", "data": [:], "timestamp": .datetime(t)],
                    "status must be absent"
                ),
            ]
            try await insert(f, defects.map(\.0))
            // Good documents, before and after, keep flowing.
            try await insert(f, (0..<20).map { minimal(.string("good-\($0)"), aggregate: "g-\($0)", at: t + Int64($0)) })
            let monitor = BacklogMonitor(pool: f.pool, interval: .seconds(60), logger: f.logger)
            // Every document without a status counts as pending before the relay sees it; the one
            // with a status the relay does not know is counted once the relay's sweep parks it.
            #expect(try await monitor.sample().pending == 34)
            #expect(try await OutboxAdmin(pool: f.pool).status().unseen == 35)

            let publisher = f.makePublisher()
            try await f.drain(try await f.makeRelay(store: store(f), publisher: publisher))
            await publisher.close()
            #expect(Set(try await f.admin.drain(queue).compactMap(\.messageId)) == Set((0..<20).map { "good-\($0)" }))
            let parked = try await f.find("outbox", ["status": "parked"])
            #expect(parked.count == defects.count)
            for (document, reason) in defects {
                let found = parked.first { $0["_id"] == document["_id"] }
                #expect(
                    found?["lastError"]?.stringValue?.contains(reason) == true,
                    "\(document["_id"]!): \(found?["lastError"] ?? .null) should name '\(reason)'")
            }
            let sample = try await monitor.sample()
            #expect(sample.pending == 0 && sample.parked == defects.count)
            let status = try await OutboxAdmin(pool: f.pool).status()
            #expect(status.pending == 0 && status.parked == defects.count && status.delivered == 20)
            #expect(try await f.count("outbox") == status.pending + status.parked + status.delivered, "every document is in exactly one state")
        }
    }

    @Test("without versions, one aggregate's events go out in the order written, also when publishes fail")
    func orderWithoutVersions() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let t = now
            var documents: [Document] = []
            for step in 0..<6 {
                for aggregate in 0..<8 {
                    documents.append(
                        minimal(
                            .string("o-\(aggregate)-\(step)"), aggregate: "agg-\(aggregate)", at: t + Int64(step * 10),
                            data: ["step": .int32(Int32(step))]))
                }
            }
            try await insert(f, documents.shuffled())
            // 30 % of publishes refused: events are rescheduled (stamped pending) and must still
            // hold back the later events of their aggregate.
            let publisher = FlakyPublisher(inner: f.makePublisher(), refuse: 0.3)
            let relay = Relay(
                store: store(f), publisher: publisher, leases: try await f.makeLeases(),
                configuration: .init(batchSize: 100, retryPolicy: .init(maxAttempts: 50, baseDelay: .milliseconds(50), maxDelay: .milliseconds(200))),
                logger: f.logger)
            #expect(
                await eventually(timeout: .seconds(90)) {
                    _ = try? await relay.runOnce()
                    return (try? await f.count("outbox", ["status": "delivered"])) == documents.count
                })
            await publisher.close()
            var next: [String: Int] = [:]
            for message in try await f.admin.drain(queue) {
                guard let id = message.messageId else { continue }
                let parts = id.split(separator: "-")
                let aggregate = String(parts[1])
                let step = Int(parts[2])!
                #expect(
                    step == next[aggregate, default: 0], "aggregate \(aggregate): step \(step) arrived when \(next[aggregate, default: 0]) was due")
                next[aggregate] = step + 1
            }
            #expect(next.values.allSatisfy { $0 == 6 })
        }
    }

    @Test("two relays: the adopter hands new documents of the other's partitions over; each event is marked by its partition's owner")
    func handOver() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let t = now
            try await insert(f, (0..<200).map { minimal(.string("h-\($0)"), aggregate: "agg-\($0)", at: t + Int64($0)) })
            let leaseStore = MongoLeaseStore(pool: f.pool)
            try await leaseStore.ensurePartitions()
            let a = LeaseManager(store: leaseStore, configuration: .init(owner: "relay-a", ttl: .seconds(30)), logger: f.logger)
            let b = LeaseManager(store: leaseStore, configuration: .init(owner: "relay-b", ttl: .seconds(30)), logger: f.logger)
            #expect(
                await eventually {
                    try? await a.tick()
                    try? await b.tick()
                    return a.current.count == 8 && b.current.count == 8
                })
            let publisher = f.makePublisher()
            let relays = [(a, "relay-a"), (b, "relay-b")].map { leases, owner in
                Relay(store: store(f, owner: owner), publisher: publisher, leases: leases, configuration: .init(batchSize: 500), logger: f.logger)
            }
            // The leases are renewed between passes, as a relay's lease service does: on a busy store
            // passes may take longer than two thirds of the TTL, and a relay publishes nothing from a
            // lease it has not renewed for that long.
            #expect(
                await eventually(timeout: .seconds(60)) {
                    try? await a.tick()
                    try? await b.tick()
                    for relay in relays { _ = try? await relay.runOnce() }
                    return (try? await f.count("outbox", ["status": "delivered"])) == 200
                })
            await publisher.close()
            let received = try await f.admin.drain(queue).compactMap(\.messageId)
            #expect(received.count == 200 && Set(received).count == 200)
            // Every event was written by the owner of its partition (fence = that lease's epoch).
            let owners = Dictionary(uniqueKeysWithValues: (a.current + b.current).map { ($0.partition, $0.epoch) })
            #expect(
                try await f.find("outbox").allSatisfy { $0["fence"]?.intValue.map(Int64.init) == $0["partition"]?.intValue.flatMap { owners[$0] } })
        }
    }

    @Test("a hand-over by an adopter whose clock is behind the previous adopter's still goes after its aggregate's earlier event")
    func skewedAdopters() async throws {
        try await Fixture.with { f in
            // An aggregate whose partition is not the adopter's (partition 0).
            let aggregate = try #require((0..<100).map { "skew-\($0)" }.first { EventNaming.partition(ofAggregate: $0, partitions: 16) != 0 })
            let partition = EventNaming.partition(ofAggregate: aggregate, partitions: 16)
            let adopter = store(f, owner: "adopter"), adopterLeases = [PartitionLease(partition: 0, epoch: 1)]
            try await insert(f, [minimal(.string("skew-1"), aggregate: aggregate, at: now)])
            #expect(try await adopter.fetchDue(limit: 100, leases: adopterLeases).isEmpty, "handed over, not published")
            // The first event's scan id as an adopter whose clock is an hour ahead of this one wrote it.
            let first = try #require(try await f.find("outbox", ["_id": "skew-1"]).first?["sid"]?.stringValue)
            let ahead = String(format: "%08x", UInt32(Date().timeIntervalSince1970) + 3600) + first.dropFirst(8)
            try await f.pool.withConnection { _ = try $0.collection("outbox").updateOne(["_id": "skew-1"], ["$set": ["sid": .string(ahead)]]) }
            try await insert(f, [minimal(.string("skew-2"), aggregate: aggregate, at: now + 1)])
            _ = try await adopter.fetchDue(limit: 100, leases: adopterLeases)
            let second = try #require(try await f.find("outbox", ["_id": "skew-2"]).first?["sid"]?.stringValue, "skew-2 handed over")
            #expect(second > ahead, "the later event's scan id \(second) sorts after the earlier one's \(ahead)")
            // The partition's owner publishes the earlier event first.
            let heads = try await store(f, owner: "owner").fetchDue(limit: 100, leases: [PartitionLease(partition: partition, epoch: 1)])
            #expect(heads.map(\.id) == ["skew-1"])
        }
    }

    @Test("a document written with status pending but no relay state is completed and delivered")
    func pendingWithoutState() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            var document = minimal(.objectId(ObjectId()), aggregate: "p-1", at: now)
            document["status"] = "pending"
            try await insert(f, [document])
            let publisher = f.makePublisher()
            let relay = try await f.makeRelay(store: store(f), publisher: publisher)
            #expect(
                await eventually {
                    _ = try? await relay.runOnce()
                    return (try? await f.count("outbox", ["status": "delivered"])) == 1
                })
            await publisher.close()
            #expect(try await f.admin.drain(queue).count == 1)
        }
    }

    @Test("outboxctl init: --dry-run changes nothing; creates collection, indexes and an enforced validator; idempotent")
    func initialize() async throws {
        try await Fixture.with { f in
            let admin = OutboxAdmin(pool: f.pool)
            let dry = try await admin.initialize(validator: true, dryRun: true)
            #expect(dry.actions.first == "create collection outbox with the contract's validator")
            #expect(dry.actions.count == 1 + OutboxSchema.indexes.count)
            let collections = try await f.pool.withConnection { try $0.runCommand(["listCollections": 1, "filter": ["name": "outbox"]]) }
            #expect(collections["cursor"]?.documentValue?["firstBatch"]?.arrayValue?.isEmpty == true, "a dry run creates nothing")

            let done = try await admin.initialize(validator: true, dryRun: false)
            #expect(done.actions == dry.actions)
            #expect(done.validatorEnforced == true)
            #expect(try await admin.initialize(validator: true, dryRun: false).actions.isEmpty, "a second run has nothing to do")
            #expect(
                try await admin.initialize(validator: true, consoleIndexes: true, dryRun: false).actions == [
                    "create index parked_by_error on outbox"
                ],
                "--console adds the console's index")

            // A malformed insert now fails inside the writer's transaction: the business write
            // rolls back with it.
            await #expect(throws: MongoError.self) {
                try await f.pool.withTransaction { connection in
                    try connection.collection("orders").insertOne(["_id": "order-1"])
                    try connection.collection("outbox").insertOne(["type": "OrderCreated", "aggregateId": "order-1", "data": "not a document"])
                }
            }
            #expect(try await f.count("orders") == 0)
            #expect(try await f.count("outbox") == 0)
            // A document by the contract goes in, with a trace context too; a traceparent of
            // another shape does not.
            try await insert(f, [minimal(nil, aggregate: "order-2", at: now)])
            var traced = minimal(nil, aggregate: "order-3", at: now)
            traced["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            try await insert(f, [traced])
            #expect(try await f.count("outbox") == 2)
            traced["traceparent"] = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"
            traced["aggregateId"] = "order-4"
            let refused = traced
            await #expect(throws: MongoError.self) {
                try await f.pool.withConnection { try $0.collection("outbox").insertOne(refused) }
            }
            #expect(try await f.count("outbox") == 2)
        }
    }
}

/// Refuses a share of publishes (as nacks) before they reach the broker.
final class FlakyPublisher: ConfirmingPublisher {
    let inner: ConfirmPublisher
    let refuse: Double

    init(inner: ConfirmPublisher, refuse: Double) {
        self.inner = inner
        self.refuse = refuse
    }

    func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome] {
        let refused = messages.map { _ in Double.random(in: 0..<1) < refuse }
        var outcomes = await inner.publish(zip(messages, refused).filter { !$0.1 }.map(\.0)).makeIterator()
        return refused.map { $0 ? .nacked : outcomes.next()! }
    }

    func close() async { await inner.close() }
}
