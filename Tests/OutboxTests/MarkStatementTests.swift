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

    @Test("different updates, a lone event and a new document each get statements of their own")
    func ownStatements() throws {
        let other: BSON = ["$set": ["status": "parked"]]
        let writes = [
            Self.write("x", partition: 1), Self.write("y", partition: 1, update: other), Self.write("n", partition: 1, isNew: true),
        ]
        let statements = MongoOutboxStore.fencedStatements(writes, epochs: [1: 3], now: Date())
        #expect(statements.count == 3)
        #expect(statements.allSatisfy { !$0.multi })
        let new = try #require(statements.first { $0.filter["_id"] == "n" })
        #expect(new.filter["status"] == .null, "a new document is written only while it has no state")
        let set = new.update.documentValue?["$set"]?.documentValue
        #expect(set?["partition"] == .int32(1) && set?["sid"]?.stringValue?.utf8.count == 24, "and gets the relay's state")
        #expect(statements.contains { $0.filter["_id"] == "x" && $0.filter["status"] == "pending" })
        #expect(statements.contains { $0.filter["_id"] == "y" && $0.update.documentValue?["$set"]?.documentValue?["status"] == "parked" })
    }
}
