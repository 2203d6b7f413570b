import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

/// Issue 28 on the real servers: what a writer says about a message beyond its data reaches the
/// broker as AMQP properties, read back by pika (Tests/clients/read_properties.py).
@Suite("Message properties a writer gives: priority", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct MessagePropertyTests {
    struct Seen: Decodable {
        let messageId: String
        let priority: Int?
    }

    /// What pika saw of `count` messages of `queue`, in the order the queue delivered them.
    static func readProperties(_ queue: String, count: Int) async throws -> [Seen] {
        let result = try await Programs.run(
            Programs.python,
            [Programs.root.appendingPathComponent("Tests/clients/read_properties.py").path, Servers.amqpURL, queue, "\(count)"],
            environment: ["PATH": "/usr/bin:/bin"])
        #expect(result.status == 0, "read_properties.py: \(result.errors)")
        return try result.output.split(separator: "\n").map { try JSONDecoder().decode(Seen.self, from: Data($0.utf8)) }
    }

    @Test("priority is the AMQP priority: a priority queue delivers the urgent first; a bad one parks naming the field")
    func priority() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("urgent-first", arguments: ["x-max-priority": .int(10)])
            // Written by OutboxWriter and as plain documents (the contract's shape), each with its priority.
            var urgent = f.event(aggregate: "a-urgent")
            urgent.priority = 9
            try await f.appendEvents([urgent])
            let plain: [Document] = [
                ["_id": "p-none", "type": "OrderCreated", "aggregateId": "a-none", "data": [:], "exchange": .string(f.exchange)],
                ["_id": "p-1", "type": "OrderCreated", "aggregateId": "a-1", "data": [:], "exchange": .string(f.exchange), "priority": 1],
                ["_id": "p-5", "type": "OrderCreated", "aggregateId": "a-5", "data": [:], "exchange": .string(f.exchange), "priority": .int64(5)],
                ["_id": "p-7", "type": "OrderCreated", "aggregateId": "a-7", "data": [:], "exchange": .string(f.exchange), "priority": .double(7)],
            ]
            let bad: [(String, BSON)] = [("b-text", "high"), ("b-300", 300), ("b-negative", -1), ("b-fraction", .double(2.5))]
            let documents =
                plain
                + bad.map { id, priority in
                    [
                        "_id": .string(id), "type": "OrderCreated", "aggregateId": .string(id), "data": [:], "exchange": .string(f.exchange),
                        "priority": priority,
                    ]
                }
            try await f.pool.withConnection { try $0.collection("outbox").insertMany(documents) }

            let result = try await Programs.product(
                "outbox-relay", ["--http-address", "off", "--exit-when-idle"], environment: Programs.environment(f))
            #expect(result.status == 0, "\(result.errors.suffix(2000))")
            #expect(try await f.count("outbox", ["status": "delivered"]) == 5)
            // All were queued before pika reads: the queue hands them out by priority.
            let seen = try await Self.readProperties(queue, count: 5)
            #expect(seen.map(\.priority) == [9, 7, 5, 1, nil], "\(seen)")
            #expect(seen.dropFirst().map(\.messageId) == ["p-7", "p-5", "p-1", "p-none"])
            for (id, _) in bad {
                let document = try #require(try await f.find("outbox", ["_id": .string(id)]).first)
                #expect(document["status"]?.stringValue == "parked", "\(id)")
                #expect(document["lastError"]?.stringValue?.contains("priority must be an integer from 0 to 255") == true, "\(id): \(document)")
            }
        }
    }

    @Test("the contract's validator takes a priority from 0 to 255 and refuses others")
    func validator() async throws {
        try await Fixture.with { f in
            try await f.pool.withConnection { connection in
                _ = try connection.runCommand(["create": "checked", "validator": .document(OutboxSchema.validator)])
                let base: Document = ["type": "OrderCreated", "aggregateId": "a", "data": [:]]
                try connection.collection("checked").insertOne(base.merging(["priority": 0]))
                try connection.collection("checked").insertOne(base.merging(["priority": 255]))
                for refused: BSON in [256, -1, "high"] {
                    #expect(throws: (any Error).self, "priority \(refused)") {
                        try connection.collection("checked").insertOne(base.merging(["priority": refused]))
                    }
                }
            }
        }
    }
}
