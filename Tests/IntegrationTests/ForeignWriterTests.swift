import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

/// Services written in other languages, with their own MongoDB drivers, write orders and events of
/// the seed's shape `{type, aggregateId, data, timestamp}` in one transaction each
/// (Examples/python-writer, Examples/node-writer); the real `outbox-relay` executable delivers
/// them to a queue of the test. Each event arrives once, one aggregate's events in the order
/// written, and nothing is left pending.
@Suite("Writers in Python and Node.js through the real relay", .enabled(if: Servers.enabled), .timeLimit(.minutes(5)))
struct ForeignWriterTests {
    struct Written: Decodable {
        let id: String
        let type: String
        let aggregateId: String
        let kind: String?
        /// With --trace: the context written, and (Python) the SDK span's own ids.
        let traceparent: String?
        let traceId: String?
        let spanId: String?
    }

    struct Output: Decodable { let events: [Written] }

    func python(_ f: Fixture, _ arguments: [String], collection: String = "outbox") async throws -> [Written] {
        let result = try await Programs.run(
            Programs.python,
            [Programs.root.appendingPathComponent("Examples/python-writer/writer.py").path] + arguments + ["--collection", collection],
            environment: Programs.environment(f))
        #expect(result.status == 0, "python writer: \(result.errors)")
        return try JSONDecoder().decode(Output.self, from: Data(result.output.utf8)).events
    }

    func node(_ f: Fixture, _ arguments: [String]) async throws -> [Written] {
        let result = try await Programs.run(
            "/usr/bin/node", [Programs.root.appendingPathComponent("Examples/node-writer/writer.js").path] + arguments,
            environment: Programs.environment(f, ["NODE_PATH": Programs.nodePath]))
        #expect(result.status == 0, "node writer: \(result.errors)")
        return try JSONDecoder().decode(Output.self, from: Data(result.output.utf8)).events
    }

    /// Runs `outbox-relay --exit-when-idle` over the fixture's database: it drains what is due and exits.
    func relay(_ f: Fixture, _ arguments: [String] = []) async throws {
        let result = try await Programs.product(
            "outbox-relay", ["--exit-when-idle", "--http-address", "off", "--no-change-stream", "--exchange", f.exchange] + arguments,
            environment: Programs.environment(f, ["LOG_LEVEL": "warning"]), timeout: .seconds(180))
        #expect(result.status == 0, "outbox-relay exited \(result.status): \(result.errors.suffix(2000))")
    }

    /// Every written event arrived exactly once, each aggregate's in the order written, and the
    /// collection holds nothing pending.
    func check(_ f: Fixture, _ written: [Written], queue: String, collection: String = "outbox") async throws {
        let received = try await f.admin.drain(queue)
        let ids = received.compactMap(\.messageId)
        #expect(ids.count == written.count, "received \(ids.count) messages for \(written.count) events")
        #expect(Set(ids) == Set(written.map(\.id)))
        var sent: [String: [String]] = [:]
        for event in written { sent[event.aggregateId, default: []].append(event.id) }
        let byId = Dictionary(uniqueKeysWithValues: written.map { ($0.id, $0) })
        var arrived: [String: [String]] = [:]
        for id in ids { if let event = byId[id] { arrived[event.aggregateId, default: []].append(id) } }
        #expect(arrived == sent, "every aggregate's events arrive in the order written")
        #expect(received.allSatisfy { message in byId[message.messageId ?? ""].map { $0.type == message.type } ?? false })
        #expect(try await f.count(collection, OutboxSchema.notFinal) == 0, "nothing left pending")
        #expect(try await f.count(collection, ["status": "delivered"]) == written.count)
    }

    @Test("Python (pymongo): 200 events of the seed's shape with four kinds of _id are each delivered once")
    func pythonIdKinds() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let written = try await python(f, ["--orders", "200", "--id-kind", "mixed", "--first-int-id", "1000"])
            #expect(written.count == 200)
            #expect(
                Dictionary(grouping: written, by: { $0.kind ?? "" }).mapValues(\.count) == ["default": 50, "objectid": 50, "uuid": 50, "int": 50])
            try await relay(f)
            try await check(f, written, queue: queue)
        }
    }

    @Test("Python (pymongo): five events per order arrive in the order written")
    func pythonOrder() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let written = try await python(f, ["--orders", "20", "--events-per-order", "5", "--id-kind", "uuid"])
            try await relay(f)
            try await check(f, written, queue: queue)
        }
    }

    @Test("Node.js (node-mongodb): orders and their events, three per order, delivered once and in order")
    func nodeWriter() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let written = try await node(f, ["--orders", "40", "--events-per-order", "3"])
            #expect(written.count == 120)
            #expect(try await f.count("orders") == 40)
            try await relay(f)
            try await check(f, written, queue: queue)
        }
    }

    @Test("an existing event collection is the outbox (--collection events); delivered events stay as its history")
    func eventCollection() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let written = try await python(f, ["--orders", "10", "--events-per-order", "2"], collection: "events")
            try await relay(f, ["--collection", "events"])
            try await check(f, written, queue: queue, collection: "events")
            #expect(try await f.count("outbox") == 0)
            // The history is still there, in the writer's shape.
            let history = try await f.find("events", ["aggregateId": .string(written[0].aggregateId)], sort: ["timestamp": 1])
            #expect(history.compactMap { $0["type"]?.stringValue } == ["OrderCreated", "OrderPaid"])
            #expect(history.allSatisfy { $0["data"]?.documentValue?["totalAmount"]?.decimalValue?.description == "44.99" })
        }
    }

    @Test("traced writers: the W3C context a Python (OpenTelemetry SDK) or Node.js writer wrote arrives as traceparent; a bad one is dropped")
    func tracedWriters() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let python = try await python(f, ["--orders", "10", "--events-per-order", "2", "--trace"])
            let node = try await node(f, ["--orders", "5", "--trace"])
            // Not a W3C traceparent (upper-case hex): the event goes, without it.
            let bad = OutboxWriter().document(for: f.event(aggregate: "bad-trace"))
            var badDocument = bad
            badDocument["traceparent"] = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"
            try await f.pool.withConnection { [badDocument] in try $0.collection("outbox").insertOne(badDocument) }
            try await relay(f)
            let received = try await f.admin.drain(queue)
            #expect(received.count == python.count + node.count + 1)
            let byId = Dictionary(uniqueKeysWithValues: received.compactMap { message in message.messageId.map { ($0, message) } })
            for event in python {
                let parent = try #require(event.traceparent)
                let traceId = try #require(event.traceId), spanId = try #require(event.spanId)
                // The SDK's own span: version 00, its trace id, its span id (then the SDK's flags).
                #expect(parent.hasPrefix("00-\(traceId)-\(spanId)-"))
                #expect(byId[event.id]?.headers["traceparent"] == .string(parent), "\(event.id)")
            }
            #expect(Set(python.map(\.traceId)).count == python.count, "a trace per write")
            for event in node {
                let parent = try #require(event.traceparent)
                #expect(byId[event.id]?.headers["traceparent"] == .string(parent))
            }
            let badId = try #require(bad["_id"]?.stringValue)
            let unTraced = try #require(byId[badId])
            #expect(unTraced.headers["traceparent"] == nil)
            #expect(try await f.count("outbox", ["status": "delivered"]) == received.count)
        }
    }
}
