import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import OutboxOps
import Testing

/// Documents as real writers produce them beside the contract's fields: models that write `null`
/// for every field they declare, the older `status: "pending"` format, relay fields set by hand
/// with wrong types or out-of-range values. Whatever they hold, every good event beside them is
/// delivered, and each odd one is delivered or parked with a reason naming the field: none stops
/// the relay, and none sits unseen.
@Suite("Odd documents beside good ones", .enabled(if: Servers.enabled), .timeLimit(.minutes(3)))
struct OddDocumentTests {
    var now: Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    func store(_ f: Fixture) -> MongoOutboxStore {
        // The default sweep interval: documents must be reached by the scans, not by the sweep.
        MongoOutboxStore(pool: f.pool, owner: "test-relay", options: .init(routing: EventRouting(defaultExchange: f.exchange)), logger: f.logger)
    }

    func seed(_ id: String, aggregate: String, at ms: Int64, _ extra: Document = [:]) -> Document {
        (["_id": .string(id), "type": "OrderCreated", "aggregateId": .string(aggregate), "data": ["n": 1], "timestamp": .datetime(ms)] as Document)
            .merging(extra)
    }

    /// Every relay field, as a model that declares them writes them before the relay has run.
    static let nullRelayFields: Document = [
        "status": .null, "partition": .null, "sid": .null, "fence": .null, "attempts": .null, "nextAttemptAt": .null,
        "lastError": .null, "deliveredAt": .null, "parkedAt": .null, "seenAt": .null,
    ]

    @Test("nulls, the status-pending format and hand-set relay fields: every good event delivered, each odd one delivered or parked with a reason")
    func oddBesideGood() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let t = now
            let partitions = OutboxSchema.defaultPartitions
            func partition(_ aggregate: String) -> BSON { .int32(Int32(EventNaming.partition(ofAggregate: aggregate, partitions: partitions))) }
            // Delivered, whatever the relay fields hold.
            let deliverable: [Document] = [
                seed("null-attempts", aggregate: "o-1", at: t, ["attempts": .null]),
                seed("all-null", aggregate: "o-2", at: t, Self.nullRelayFields),
                seed("pending-bare", aggregate: "o-3", at: t, ["status": "pending"]),
                seed(
                    "pending-full", aggregate: "o-4", at: t,
                    ["status": "pending", "partition": partition("o-4"), "attempts": 0, "nextAttemptAt": .datetime(t)]),
                seed("pending-wrong-partition", aggregate: "o-5", at: t, ["status": "pending", "partition": 3, "attempts": 0]),
                seed("negative-attempts", aggregate: "o-6", at: t, ["attempts": -5]),
                seed("string-delivered-at", aggregate: "o-7", at: t, ["deliveredAt": "yesterday", "lastError": 42]),
                seed("int-sid", aggregate: "o-8", at: t, ["status": "pending", "sid": 12345]),
                // Known to the relay by their shape (status, partition, scan id), with a field
                // the relay's update cannot apply to, or wrong types it reads past.
                seed(
                    "string-attempts", aggregate: "o-9", at: t,
                    ["status": "pending", "partition": partition("o-9"), "sid": .string(ObjectId().hex), "attempts": "three"]),
                seed(
                    "string-fence", aggregate: "o-10", at: t,
                    ["status": "pending", "partition": partition("o-10"), "sid": .string(ObjectId().hex), "fence": "x"]),
                seed(
                    "string-next-attempt", aggregate: "o-11", at: t,
                    ["status": "pending", "partition": partition("o-11"), "sid": .string(ObjectId().hex), "nextAttemptAt": "soon"]),
                seed("string-partition", aggregate: "o-12", at: t, ["status": "pending", "partition": "3", "sid": .string(ObjectId().hex)]),
                seed("huge-partition", aggregate: "o-13", at: t, ["status": "pending", "partition": 999_999, "sid": .string(ObjectId().hex)]),
                seed("sid-without-partition", aggregate: "o-14", at: t, ["status": "pending", "sid": .string(ObjectId().hex)]),
            ]
            // Parked, with a reason naming the field.
            let parkable: [(Document, String)] = [
                (seed("upper-status", aggregate: "o-20", at: t, ["status": "PENDING"]), "status must be absent"),
                (seed("int-status", aggregate: "o-21", at: t, ["status": 1]), "status must be absent"),
                (seed("null-type", aggregate: "o-22", at: t, ["type": .null]), "type must be"),
                (seed("null-data", aggregate: "o-23", at: t, Self.nullRelayFields.merging(["data": .null])), "data must be"),
            ]
            let good = (0..<100).map { seed("good-\($0)", aggregate: "g-\($0 % 40)", at: t + Int64($0)) }
            let all = Array(good.prefix(50)) + deliverable + parkable.map(\.0) + Array(good.suffix(50))
            try await f.pool.withTransaction { try $0.collection("outbox").insertMany(all) }

            let publisher = f.makePublisher()
            try await f.drain(try await f.makeRelay(store: store(f), publisher: publisher))
            await publisher.close()

            let received = try await f.admin.drain(queue).compactMap(\.messageId)
            let expected = good.compactMap { $0["_id"]?.stringValue } + deliverable.compactMap { $0["_id"]?.stringValue }
            #expect(Set(received) == Set(expected), "missing: \(Set(expected).subtracting(received).sorted())")
            #expect(
                received.count == expected.count,
                "each published once; twice: \(Dictionary(grouping: received) { $0 }.filter { $0.value.count > 1 }.keys.sorted())")
            let stored = try await f.find("outbox")
            for document in good + deliverable {
                let found = stored.first { $0["_id"] == document["_id"] }
                #expect(found?["status"] == "delivered", "\(document["_id"]!): \(found?["status"] ?? .null) \(found?["lastError"] ?? .null)")
                #expect(found?["attempts"]?.intValue ?? 0 >= 1, "\(document["_id"]!): attempts \(found?["attempts"] ?? .null)")
            }
            // The one whose field the relay's update could not apply to says which field it was.
            let replaced = stored.first { $0["_id"] == "string-attempts" }
            #expect(replaced?["lastError"]?.stringValue?.contains("attempts is string") == true, "\(replaced?["lastError"] ?? .null)")
            for (document, reason) in parkable {
                let found = stored.first { $0["_id"] == document["_id"] }
                #expect(found?["status"] == "parked", "\(document["_id"]!): \(found?["status"] ?? .null)")
                #expect(
                    found?["lastError"]?.stringValue?.contains(reason) == true,
                    "\(document["_id"]!): \(found?["lastError"] ?? .null) should name '\(reason)'")
            }
            #expect(stored.count == good.count + deliverable.count + parkable.count)
        }
    }

    @Test("a document the server lets no relay write is skipped, reported in the _unwritable collection and outboxctl, and the rest flow")
    func unwritableReported() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            // A validator (of the kind a team adds for its own rules) that refuses any relay state on one document.
            _ = try await f.pool.withConnection { connection in
                try connection.runCommand([
                    "create": "outbox", "validator": ["$or": [["_id": ["$ne": "stuck-1"]], ["status": ["$exists": false]]]],
                    "validationLevel": "strict", "validationAction": "error",
                ])
            }
            let t = now
            let documents = [seed("stuck-1", aggregate: "u-1", at: t)] + (0..<20).map { seed("fine-\($0)", aggregate: "u-\($0 + 2)", at: t + 1) }
            try await f.pool.withTransaction { try $0.collection("outbox").insertMany(documents) }
            let publisher = f.makePublisher()
            try await f.drain(try await f.makeRelay(store: store(f), publisher: publisher))
            await publisher.close()
            #expect(try await f.count("outbox", ["status": "delivered"]) == 20, "every other event delivered")
            #expect(try await f.find("outbox", ["_id": "stuck-1"]).first?["status"] == nil, "the server refused every write")
            let received = try await f.admin.drain(queue).compactMap(\.messageId)
            #expect(received.filter { $0 == "stuck-1" }.count == 1, "published once, then skipped: \(received.count) messages")
            let records = try await f.find(OutboxSchema.unwritableCollection(of: "outbox"))
            #expect(records.map { $0["_id"] } == ["stuck-1"])
            #expect(records.first?["relay"]?.stringValue == "test-relay" && records.first?["error"]?.stringValue?.isEmpty == false)
            let admin = OutboxAdmin(pool: f.pool)
            #expect(try await admin.status().unwritable == 1)
            let listed = try await admin.unwritable()
            #expect(listed.map(\.status) == ["pending"] && listed.first?.id == "stuck-1", "listed with its status now")
        }
    }

    @Test(
        "a bulk update split into commands of at most 500 documents applies every statement and reports a refused one by its place in the whole list")
    func bulkUpdateAcrossCommands() async throws {
        try await Fixture.with { f in
            let count = 1200
            // One document the update cannot apply to ($inc on a string), in the second command.
            let refusedAt = 550
            let documents: [Document] = (0..<count).map { ["_id": .int32(Int32($0)), "n": $0 == refusedAt ? "text" : .int32(0)] }
            try await f.pool.withConnection { try $0.collection("bulk").insertMany(documents) }
            // Single-document statements, then statements of 50 ids each: both are counted by documents.
            let singles: [(filter: Document, update: BSON, multi: Bool)] = (0..<count / 2).map {
                (["_id": .int32(Int32($0))], ["$inc": ["n": 1]], false)
            }
            let shared: [(filter: Document, update: BSON, multi: Bool)] = stride(from: count / 2, to: count, by: 50).map { start in
                (["_id": ["$in": .array((start..<start + 50).map { .int32(Int32($0)) })]], ["$inc": ["n": 1]], true)
            }
            #expect(MongoCollection.documentsPerCommand < count, "the statements need more than one command")
            let (result, errors) = try await f.pool.withConnection { try $0.collection("bulk").bulkUpdateEach(singles + shared) }
            #expect(errors.map(\.index) == [refusedAt], "the refused statement, by its place in the whole list")
            #expect(result.matched == count - 1, "every other statement applied")
            #expect(try await f.count("bulk", ["n": 1]) == count - 1)
        }
    }

    @Test("_ids that spell the same message id (42 and \"42\", a UUID and its text): one is delivered, the other parked naming both")
    func collidingIds() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let t = now
            let uuid: [UInt8] = Array(0..<16)
            try await f.pool.withConnection { connection in
                try connection.collection("outbox").insertMany([
                    seed("42", aggregate: "c-1", at: t),
                    ["_id": .int32(42), "type": "OrderCreated", "aggregateId": "c-2", "data": ["n": 2], "timestamp": .datetime(t + 1)],
                    [
                        "_id": .binary(subtype: 4, bytes: uuid), "type": "OrderCreated", "aggregateId": "c-3", "data": ["n": 3],
                        "timestamp": .datetime(t + 2),
                    ],
                    seed("00010203-0405-0607-0809-0a0b0c0d0e0f", aggregate: "c-4", at: t + 3),
                    seed("unique", aggregate: "c-5", at: t + 4),
                ])
            }
            let publisher = f.makePublisher()
            try await f.drain(try await f.makeRelay(store: store(f), publisher: publisher))
            await publisher.close()
            let received = try await f.admin.drain(queue).compactMap(\.messageId)
            #expect(received.sorted() == ["00010203-0405-0607-0809-0a0b0c0d0e0f", "42", "unique"], "each message id once: \(received)")
            let parked = try await f.find("outbox", ["status": "parked"])
            #expect(parked.count == 2)
            #expect(
                parked.allSatisfy { $0["lastError"]?.stringValue?.contains("same message id") == true }, "\(parked.map { $0["lastError"] ?? .null })")
            #expect(try await f.count("outbox", ["status": "delivered"]) == 3)
        }
    }

    @Test("documents written with status pending and no relay state drain in the scan, not a sweep a minute later")
    func pendingFormatDrains() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let t = now
            // More than one sweep reads: a sweep alone would leave some for a minute.
            let documents: [Document] = (0..<1_200).map { i in
                var document = seed("p-\(i)", aggregate: "pa-\(i % 300)", at: t + Int64(i), ["status": "pending"])
                if i % 2 == 0 { document = document.merging(["attempts": 0, "nextAttemptAt": .datetime(t)]) }
                if i % 3 == 0 { document["partition"] = .int32(Int32(EventNaming.partition(ofAggregate: "pa-\(i % 300)", partitions: 16))) }
                return document
            }
            try await f.pool.withConnection { try $0.collection("outbox").insertMany(documents) }
            let publisher = f.makePublisher()
            try await f.drain(try await f.makeRelay(store: store(f), publisher: publisher), maxPasses: 100)
            await publisher.close()
            let received = try await f.admin.drain(queue).compactMap(\.messageId)
            #expect(Set(received).count == documents.count)
            #expect(received.count == documents.count, "each published once")
            #expect(try await f.count("outbox", ["status": "delivered"]) == documents.count)
            // In the order written, per aggregate.
            var last: [String: Int] = [:]
            for id in received {
                let i = Int(id.dropFirst(2))!
                let aggregate = "pa-\(i % 300)"
                #expect(i > last[aggregate] ?? -1, "\(id) after \(last[aggregate] ?? -1)")
                last[aggregate] = i
            }
        }
    }

    @Test("status-pending documents written after the relay's full look are found by the next, cheap one, five seconds on")
    func pendingFormatLaterLook() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let publisher = f.makePublisher()
            let relay = try await f.makeRelay(store: store(f), publisher: publisher)
            try await f.drain(relay)  // the first look, which asks for a missing scan id
            try await Task.sleep(for: .seconds(6))
            try await f.drain(relay)  // the relay has caught up: the look asks for any scan id that is not a string
            let documents = (0..<5).map { seed("late-\($0)", aggregate: "la-\($0)", at: now + Int64($0), ["status": "pending"]) }
            try await f.pool.withConnection { try $0.collection("outbox").insertMany(documents) }
            try await Task.sleep(for: .seconds(6))
            // The next look asks for a missing scan id; the sweep is a minute away.
            try await f.drain(relay)
            await publisher.close()
            #expect(Set(try await f.admin.drain(queue).compactMap(\.messageId)) == Set((0..<5).map { "late-\($0)" }))
        }
    }
}
