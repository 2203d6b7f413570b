import Foundation
import Outbox
import Testing

@testable import OutboxMongo

@Suite("Fenced mark statements")
struct MarkStatementTests {
    static let update: BSON = ["$set": ["status": "delivered"]]

    static func write(_ id: String, partition: Int, isNew: Bool = false, update: BSON = MarkStatementTests.update) -> MongoOutboxStore.FencedWrite {
        MongoOutboxStore.FencedWrite(id: .string(id), partition: partition, isNew: isNew, update: update)
    }

    @Test("known events with the same update and epoch share statements of at most 50 ids, each fenced by its epoch")
    func sharedStatements() throws {
        // 120 events of partition 1 (epoch 7) and 3 of partition 2 (epoch 9).
        let writes = (0..<120).map { Self.write("a\($0)", partition: 1) } + (0..<3).map { Self.write("b\($0)", partition: 2) }
        let statements = MongoOutboxStore.fencedStatements(writes, epochs: [1: 7, 2: 9], now: Date())
        #expect(statements.map(\.multi) == [true, true, true, true])
        func ids(_ filter: Document) -> [BSON] { filter["_id"]?.documentValue?["$in"]?.arrayValue ?? [] }
        #expect(statements.map { ids($0.filter).count } == [50, 50, 20, 3])
        #expect(Set(statements.flatMap { ids($0.filter) }) == Set(writes.map(\.id)), "every event once")
        for (statement, epoch) in zip(statements, [7, 7, 7, 9] as [Int64]) {
            #expect(statement.filter["status"] == "pending")
            #expect(statement.filter["fence"] == ["$not": ["$gt": .int64(epoch)]])
            #expect(statement.update.documentValue?["$max"] == ["fence": .int64(epoch)], "the write raises the fence")
        }
    }

    @Test("a scheduled event published when it came due is marked only while it is still scheduled, apart from pending ones")
    func fromScheduled() throws {
        var scheduled = Self.write("s", partition: 1)
        scheduled.from = OutboxSchema.Status.scheduled
        let statements = MongoOutboxStore.fencedStatements([Self.write("p", partition: 1), scheduled], epochs: [1: 2], now: Date())
        #expect(statements.count == 2)
        #expect(statements.first { $0.filter["_id"] == "s" }?.filter["status"] == "scheduled")
        #expect(statements.first { $0.filter["_id"] == "p" }?.filter["status"] == "pending")
    }

    @Test("different updates, a lone event and a new document left pending each get statements of their own")
    func ownStatements() throws {
        let other: BSON = ["$set": ["status": "parked"]]
        let retry: BSON = ["$set": ["status": "pending", "attempts": 1]]
        let writes = [
            Self.write("x", partition: 1), Self.write("y", partition: 1, update: other),
            Self.write("n", partition: 1, isNew: true, update: retry), Self.write("m", partition: 1, isNew: true, update: retry),
        ]
        let statements = MongoOutboxStore.fencedStatements(writes, epochs: [1: 3], now: Date())
        #expect(statements.count == 4)
        #expect(statements.allSatisfy { !$0.multi })
        var scanIds: Set<String> = []
        for id in ["n", "m"] as [BSON] {
            let new = try #require(statements.first { $0.filter["_id"] == id })
            #expect(
                new.filter["status"] == OutboxSchema.firstSight["status"] && new.filter["sid"] == OutboxSchema.firstSight["sid"],
                "a new document is written only while it has no state")
            let set = new.update.documentValue?["$set"]?.documentValue
            #expect(set?["partition"] == .int32(1) && set?["status"] == "pending", "and gets the relay's state")
            scanIds.insert(try #require(set?["sid"]?.stringValue))
        }
        #expect(scanIds.count == 2 && scanIds.allSatisfy { $0.utf8.count == 24 }, "each its own scan id, an ObjectId in hex")
        #expect(statements.contains { $0.filter["_id"] == "x" && $0.filter["status"] == "pending" })
        #expect(statements.contains { $0.filter["_id"] == "y" && $0.update.documentValue?["$set"]?.documentValue?["status"] == "parked" })
    }

    @Test("new documents delivered at first sight share statements per partition and epoch, with their state and no scan id")
    func newDocumentsDelivered() throws {
        let writes =
            (0..<70).map { Self.write("n\($0)", partition: 1, isNew: true) } + (0..<2).map { Self.write("p\($0)", partition: 2, isNew: true) }
            + [Self.write("k", partition: 1)]
        let statements = MongoOutboxStore.fencedStatements(writes, epochs: [1: 4, 2: 4], now: Date())
        func ids(_ filter: Document) -> [BSON] { filter["_id"]?.documentValue?["$in"]?.arrayValue ?? [filter["_id"]].compactMap { $0 } }
        let new = statements.filter { $0.filter["status"] == OutboxSchema.firstSight["status"] }
        #expect(new.map { ids($0.filter).count } == [50, 20, 2], "statements of at most 50 ids, one partition each")
        for (statement, partition) in zip(new, [1, 1, 2]) {
            let set = statement.update.documentValue?["$set"]?.documentValue
            #expect(set?["status"] == "delivered" && set?["partition"] == .int32(Int32(partition)) && set?["seenAt"] != nil)
            #expect(set?["sid"] == nil, "only pending events are scanned")
            #expect(statement.filter["fence"] == ["$not": ["$gt": .int64(4)]])
            #expect(statement.update.documentValue?["$max"] == ["fence": .int64(4)])
        }
        #expect(Set(new.flatMap { ids($0.filter) }) == Set(writes.dropLast().map(\.id)), "every new document once")
        let known = try #require(statements.first { $0.filter["status"] == "pending" })
        #expect(ids(known.filter) == ["k"], "a known event of the same partition and epoch is not written as new")
    }
}
