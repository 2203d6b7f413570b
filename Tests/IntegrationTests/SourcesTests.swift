import Foundation
import Outbox
import OutboxMongo
import Synchronization
import Testing

/// One `outbox-relay` serving the outboxes of several services (issue 26): each database's
/// collection is a source with its own leases, loop and metrics; a source that fails is named
/// degraded while the others keep flowing.
// Serialized: each test runs a relay over two or three databases, and the store is shared with
// every suite running beside them.
@Suite("Several outboxes served by one relay", .serialized, .enabled(if: Servers.enabled), .timeLimit(.minutes(6)))
struct SourcesTests {
    struct Written: Decodable {
        let id: String
        let aggregateId: String
    }

    struct Output: Decodable { let events: [Written] }

    /// Orders written by the Python writer (pymongo) into a fixture's database.
    func python(_ f: Fixture, orders: Int, collection: String) async throws -> [Written] {
        let result = try await Programs.run(
            Programs.python,
            [
                Programs.root.appendingPathComponent("Examples/python-writer/writer.py").path, "--orders", "\(orders)", "--events-per-order", "3",
                "--collection", collection,
            ],
            environment: Programs.environment(f))
        #expect(result.status == 0, "python writer: \(result.errors)")
        return try JSONDecoder().decode(Output.self, from: Data(result.output.utf8)).events
    }

    @Test("a draining source's pool holds each command back while a quiet source's store work is under way, at most the longest wait")
    func poolsTakeTurns() async throws {
        try await Fixture.with { f in
            let shares = StoreShares(longestYield: .milliseconds(300))
            let (draining, quiet) = (shares.join(), shares.join())
            shares.passEnded(draining, full: true)
            shares.passEnded(quiet, full: false)
            let pool = try MongoClientPool(MongoConfiguration(uri: Servers.mongoURI, database: f.database, threads: 2, appName: "integration-tests"))
            pool.share(shares, member: draining)
            let count: @Sendable () async throws -> Duration = {
                let started = ContinuousClock.now
                _ = try await pool.withConnection { try $0.collection("outbox").countDocuments() }
                return ContinuousClock.now - started
            }
            let free = try await count()
            #expect(free < .milliseconds(300), "nobody quiet at work: no wait")
            let held = try await shares.storeWork(quiet) { try await count() }
            #expect(held >= .milliseconds(300), "held back for the longest wait")
            shares.passEnded(draining, full: false)
            let quietToo = try await shares.storeWork(quiet) { try await count() }
            #expect(quietToo < .milliseconds(300), "a source that does not drain does not wait")
        }
    }

    @Test("one relay drains two databases' outboxes, a collection name with a dot among them, each event once and in order")
    func twoDatabases() async throws {
        try await Fixture.with { f in
            try await Fixture.with { g in
                let queue = try await f.queue("all")
                let first = try await python(f, orders: 20, collection: "outbox")
                let second = try await python(g, orders: 20, collection: "orders.outbox")
                let result = try await Programs.product(
                    "outbox-relay",
                    [
                        "--exit-when-idle", "--http-address", "off", "--no-change-stream", "--exchange", f.exchange,
                        "--source", "\(f.database).outbox", "--source", "\(g.database).orders.outbox",
                    ],
                    environment: Programs.environment(f, ["LOG_LEVEL": "warning"]), timeout: .seconds(180))
                #expect(result.status == 0, "outbox-relay exited \(result.status): \(result.errors.suffix(2000))")
                #expect(result.output.contains("events_delivered=120 "), "\(result.output)")

                let received = try await f.admin.drain(queue).compactMap(\.messageId)
                let written = first + second
                #expect(received.count == written.count, "received \(received.count) messages for \(written.count) events")
                #expect(Set(received) == Set(written.map(\.id)))
                let position = Dictionary(uniqueKeysWithValues: received.enumerated().map { ($1, $0) })
                var byAggregate: [String: [String]] = [:]
                for event in written { byAggregate[event.aggregateId, default: []].append(event.id) }
                for (aggregate, ids) in byAggregate {
                    let order = ids.compactMap { position[$0] }
                    #expect(order == order.sorted(), "aggregate \(aggregate) out of order")
                }
                #expect(try await f.count("outbox", ["status": ["$ne": "delivered"]]) == 0)
                #expect(try await g.count("orders.outbox", ["status": ["$ne": "delivered"]]) == 0)
            }
        }
    }

    @Test("metrics carry the source; a dropped collection is named degraded while the other source keeps delivering")
    func failuresStayLocal() async throws {
        try await Fixture.with { f in
            try await Fixture.with { g in
                _ = try await f.queue("all")
                let port = unusedPort()
                let (one, two) = ("\(f.database).outbox", "\(g.database).outbox")
                let relay = try Program(
                    "outbox-relay", ["--http-address", "127.0.0.1:\(port)", "--poll-interval", "50ms", "--exchange", f.exchange],
                    environment: Programs.environment(f, ["OUTBOX_SOURCES": "\(one), \(two)", "RELAY_METRICS_INTERVAL": "1s"]))
                defer { kill(relay.pid, SIGKILL) }
                try await f.appendEvents((0..<5).map { f.event(aggregate: "f-\($0)") })
                try await g.appendEvents((0..<7).map { f.event(aggregate: "g-\($0)") })
                #expect(try await eventually(timeout: .seconds(60)) { try await f.count("outbox", ["status": "delivered"]) == 5 }, "\(relay.output)")
                #expect(try await eventually(timeout: .seconds(60)) { try await g.count("outbox", ["status": "delivered"]) == 7 }, "\(relay.output)")

                let metrics = await httpGet(port: port, "/metrics")?.body ?? ""
                #expect(DeliveryLagTests.sample(metrics, "outbox_publishes_total", ["source": one, "result": "acked"]) == 5, "\(metrics)")
                #expect(DeliveryLagTests.sample(metrics, "outbox_publishes_total", ["source": two, "result": "acked"]) == 7)
                #expect(DeliveryLagTests.sample(metrics, "outbox_partitions_owned", ["source": one]) == 16)
                #expect(DeliveryLagTests.sample(metrics, "outbox_partitions_owned", ["source": two]) == 16)
                #expect(DeliveryLagTests.sample(metrics, "outbox_source_up", ["source": two]) == 1)
                let ready = await httpGet(port: port, "/health/ready")
                #expect(ready?.status == 200)
                #expect(ready?.body.contains(#""source \#(one)":"up""#) == true, "\(ready?.body ?? "")")
                #expect(ready?.body.contains(#""source \#(two)":"up""#) == true)

                // The second service's outbox disappears: that source is degraded, still ready.
                try await g.pool.withConnection { _ = try $0.runCommand(["drop": "outbox"]) }
                #expect(
                    await eventually(timeout: .seconds(60)) {
                        await httpGet(port: port, "/health/ready")?.body.contains(#""source \#(two)":"degraded""#) == true
                    },
                    "\(relay.output)")
                #expect(await httpGet(port: port, "/health/ready")?.status == 200)
                #expect(relay.output.contains("does not exist"))
                try await f.appendEvents((5..<10).map { f.event(aggregate: "f-\($0)") })
                #expect(try await eventually(timeout: .seconds(60)) { try await f.count("outbox", ["status": "delivered"]) == 10 }, "\(relay.output)")

                // A writer's next insert creates it again: delivered, and the source is up again.
                try await g.appendEvents([f.event(aggregate: "g-again")])
                #expect(try await eventually(timeout: .seconds(60)) { try await g.count("outbox", ["status": "delivered"]) == 1 }, "\(relay.output)")
                #expect(
                    await eventually(timeout: .seconds(60)) {
                        await httpGet(port: port, "/health/ready")?.body.contains(#""source \#(two)":"up""#) == true
                    })
                #expect(await relay.terminate() == 0, "\(relay.output.suffix(2000))")
            }
        }
    }

    @Test(
        "discovery serves every database's collection of a name, a new one within an interval, only the databases taken, and stops serving one that is gone"
    )
    func discovery() async throws {
        try await Fixture.with { f in
            try await Fixture.with { g in
                try await Fixture.with { h in
                    _ = try await f.queue("all")
                    // A name of this test's own: other tests' databases hold no such collection.
                    let name = "outbox_" + f.exchange.dropFirst(3)
                    let port = unusedPort()
                    try await f.pool.withTransaction { try OutboxWriter(collection: name).append([f.event(aggregate: "f-1")], using: $0) }
                    try await h.pool.withTransaction { try OutboxWriter(collection: name).append([f.event(aggregate: "h-1")], using: $0) }
                    let relay = try Program(
                        "outbox-relay",
                        [
                            "--http-address", "127.0.0.1:\(port)", "--poll-interval", "50ms", "--exchange", f.exchange, "--discover-collection", name,
                            "--discover-interval", "1s", "--discover-databases", "\(f.database),\(g.database)",
                        ],
                        environment: Programs.environment(f))
                    defer { kill(relay.pid, SIGKILL) }
                    #expect(try await eventually(timeout: .seconds(60)) { try await f.count(name, ["status": "delivered"]) == 1 }, "\(relay.output)")
                    // A service's outbox that appears while the relay runs.
                    try await g.pool.withTransaction { try OutboxWriter(collection: name).append([f.event(aggregate: "g-1")], using: $0) }
                    #expect(try await eventually(timeout: .seconds(60)) { try await g.count(name, ["status": "delivered"]) == 1 }, "\(relay.output)")
                    #expect(relay.output.contains("serving a new outbox"))
                    let ready = await httpGet(port: port, "/health/ready")?.body ?? ""
                    #expect(ready.contains(#""source \#(g.database).\#(name)":"up""#), "\(ready)")
                    // A database the filter does not take is left alone.
                    #expect(try await h.count(name, ["status": "delivered"]) == 0)

                    // The service's database goes away: that source is no longer served, and its
                    // series leave the metrics (their last values would keep alerts firing).
                    let gone = "\(g.database).\(name)"
                    try await g.pool.withConnection { _ = try $0.runCommand(["dropDatabase": 1]) }
                    #expect(
                        await eventually(timeout: .seconds(60)) {
                            let metrics = await httpGet(port: port, "/metrics")?.body ?? ""
                            let ready = await httpGet(port: port, "/health/ready")?.body ?? ""
                            return !metrics.contains(#"source="\#(gone)""#) && !ready.contains(gone)
                                && ready.contains(#""source \#(f.database).\#(name)":"up""#)
                        },
                        "\(relay.output.suffix(3000))")
                    let left = (await httpGet(port: port, "/metrics")?.body ?? "").split(separator: "\n").filter { $0.contains(gone) }
                    #expect(left.isEmpty, "\(left)")
                    #expect(await httpGet(port: port, "/health/ready")?.body.contains(gone) == false)
                    #expect(relay.output.contains("no longer served"))
                    try await f.pool.withTransaction { try OutboxWriter(collection: name).append([f.event(aggregate: "f-2")], using: $0) }
                    #expect(try await eventually(timeout: .seconds(60)) { try await f.count(name, ["status": "delivered"]) == 2 }, "\(relay.output)")
                    // It comes back: served again.
                    try await g.pool.withTransaction { try OutboxWriter(collection: name).append([f.event(aggregate: "g-2")], using: $0) }
                    #expect(try await eventually(timeout: .seconds(60)) { try await g.count(name, ["status": "delivered"]) == 1 }, "\(relay.output)")
                    #expect(await relay.terminate() == 0, "\(relay.output.suffix(2000))")
                }
            }
        }
    }

    @Test("with discovery, one change stream over every database wakes each source long before its poll")
    func oneStreamForAll() async throws {
        try await Fixture.with { f in
            try await Fixture.with { g in
                _ = try await f.queue("all")
                let name = "outbox_" + f.exchange.dropFirst(3)
                for fixture in [f, g] { try await fixture.pool.withConnection { _ = try $0.runCommand(["create": .string(name)]) } }
                let port = unusedPort()
                let relay = try Program(
                    "outbox-relay",
                    [
                        "--http-address", "127.0.0.1:\(port)", "--poll-interval", "60s", "--exchange", f.exchange, "--discover-collection", name,
                        "--discover-databases", "\(f.database),\(g.database)",
                    ],
                    environment: Programs.environment(f, ["LOG_LEVEL": "debug"]))
                defer { kill(relay.pid, SIGKILL) }
                // Both sources hold their partitions and the stream is open: from now on only a
                // wake-up makes a pass before a minute is up.
                #expect(
                    await eventually(timeout: .seconds(60)) {
                        relay.output.components(separatedBy: "partition leases changed").count == 3 && relay.output.contains("change stream open")
                    }, "\(relay.output.suffix(3000))")
                try await Task.sleep(for: .seconds(1))
                // Each write is delivered within seconds: with a 60 s poll, only a change stream
                // can have woken its source, three times in a row for each.
                for round in 1...3 {
                    for fixture in [f, g] {
                        try await fixture.pool.withTransaction {
                            try OutboxWriter(collection: name).append([f.event(aggregate: "\(fixture.database)-\(round)")], using: $0)
                        }
                        #expect(
                            try await eventually(timeout: .seconds(10)) { try await fixture.count(name, ["status": "delivered"]) == round },
                            "\(relay.output.suffix(3000))")
                    }
                }
                let opened = relay.output.components(separatedBy: "change stream open").count - 1
                #expect(opened == 1, "one stream for both sources: \(relay.output.suffix(3000))")
                let status = await relay.terminate()
                #expect(status == 0, "\(relay.output.suffix(2000))")
            }
        }
    }

    @Test("outboxctl shows each source's status, and an action asks which source when several are named")
    func outboxctl() async throws {
        try await Fixture.with { f in
            try await Fixture.with { g in
                try await f.appendEvents([f.event(aggregate: "f-1")])
                try await g.appendEvents([f.event(aggregate: "g-1"), f.event(aggregate: "g-2")])
                let sources = "\(f.database).outbox,\(g.database).outbox"
                let environment = Programs.environment(f, ["OUTBOX_SOURCES": sources])
                let status = try await Programs.product("outboxctl", ["status"], environment: environment)
                #expect(status.status == 0, "\(status.errors)")
                #expect(status.output.contains("source               \(f.database).outbox"), "\(status.output)")
                #expect(status.output.contains("source               \(g.database).outbox"))
                #expect(status.output.contains("pending              2 "))
                let json = try await Programs.product("outboxctl", ["status", "--json"], environment: environment)
                #expect(
                    json.output.contains(#""source":"\#(g.database).outbox""#) || json.output.contains(#""source" : "\#(g.database).outbox""#),
                    "\(json.output)")

                let unchosen = try await Programs.product("outboxctl", ["list"], environment: environment)
                #expect(unchosen.status == 78)
                #expect(unchosen.errors.contains("OUTBOX_SOURCES") && unchosen.errors.contains("choose one with --source"), "\(unchosen.errors)")
                let chosen = try await Programs.product(
                    "outboxctl", ["list", "--source", "\(g.database).outbox", "--json"], environment: environment)
                #expect(chosen.status == 0, "\(chosen.errors)")
                #expect(chosen.output.contains("g-2") && !chosen.output.contains("f-1"), "\(chosen.output)")
            }
        }
    }

    @Test("a sources file gives each outbox its own exchange, body format and partition count; a bad entry fails the start naming it")
    func sourcesFile() async throws {
        try await Fixture.with { f in
            try await Fixture.with { g in
                let plain = try await f.queue("plain")
                let other = "\(f.exchange).billing"
                try await f.admin.declareExchange(other)
                let billing = try await f.queue("billing-queue", bindings: [])
                try await f.admin.bindQueue(billing, exchange: other, routingKey: "#")
                defer { Task { try? await f.admin.deleteExchange(other) } }
                // Writers that name no exchange: each source's default decides.
                func minimal(_ pool: MongoClientPool, _ prefix: String) async throws {
                    let documents: [Document] = (0..<3).map {
                        [
                            "type": "OrderCreated", "aggregateId": .string("\(prefix)-\($0)"), "data": ["n": .int32(Int32($0))],
                            "timestamp": .date(Date()),
                        ]
                    }
                    try await pool.withConnection { try $0.collection("outbox").insertMany(documents) }
                }
                try await minimal(f.pool, "f")
                try await minimal(g.pool, "g")
                let file = FileManager.default.temporaryDirectory.appendingPathComponent("sources-\(UUID().uuidString).json")
                defer { try? FileManager.default.removeItem(at: file) }
                try Data(
                    #"{"sources": [{"source": "\#(f.database).outbox"}, {"source": "\#(g.database).outbox", "exchange": "\#(other)", "bodyFormat": "cloudevents", "partitions": 4}]}"#
                        .utf8
                ).write(to: file)
                let result = try await Programs.product(
                    "outbox-relay",
                    ["--exit-when-idle", "--http-address", "off", "--no-change-stream", "--exchange", f.exchange, "--sources-file", file.path],
                    environment: Programs.environment(f, ["LOG_LEVEL": "warning"]), timeout: .seconds(120))
                #expect(result.status == 0, "\(result.errors.suffix(2000))")
                let first = try await f.admin.drain(plain)
                let second = try await f.admin.drain(billing)
                #expect(first.count == 3 && second.count == 3, "\(first.count) on \(f.exchange), \(second.count) on \(other)")
                #expect(second.allSatisfy { $0.contentType == "application/cloudevents+json" }, "\(second.map(\.contentType))")
                #expect(first.allSatisfy { $0.contentType == "application/json" })
                #expect(try await f.count(MongoLeaseStore.leasesCollection) == 16)
                #expect(try await g.count(MongoLeaseStore.leasesCollection) == 4)

                try Data(#"{"sources": [{"source": "\#(g.database).outbox", "bodyFormat": "xml"}]}"#.utf8).write(to: file)
                let bad = try await Programs.product(
                    "outbox-relay", ["--exit-when-idle", "--http-address", "off", "--sources-file", file.path], environment: Programs.environment(f))
                #expect(bad.status == 78)
                #expect(bad.errors.contains("OUTBOX_SOURCES_FILE (\(file.path), source \(g.database).outbox)"), "\(bad.errors)")
                #expect(bad.errors.contains("RELAY_BODY_FORMAT"))
            }
        }
    }

    @Test(
        "a bad source list fails the start (exit 78), naming OUTBOX_SOURCES and why",
        arguments: [
            ("nodot", "'nodot' is not database.collection"),
            ("a.outbox,a.events", "two collections of the database a"),
            ("a.outbox, a.outbox", "names a.outbox twice"),
            ("bad$name.outbox", "'bad$name' is not a valid database name"),
            (" , ", "names no source"),
        ])
    func badSources(value: String, reason: String) async throws {
        try await Fixture.with { f in
            let result = try await Programs.product(
                "outbox-relay", ["--http-address", "off", "--exit-when-idle"], environment: Programs.environment(f, ["OUTBOX_SOURCES": value]))
            #expect(result.status == 78)
            #expect(result.errors.contains("OUTBOX_SOURCES (--source)") && result.errors.contains(reason), "\(result.errors)")
        }
    }
}
