import ArgumentParser
import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import OutboxRuntime
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Measures the relay against the raw ceilings of the store and the broker, in one run.
@main
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-bench",
        abstract: "Benchmarks the relay: throughput, CPU per event, peak RSS, latency, and the raw ceilings of store and broker.",
        discussion: "Run through ops/bench, which starts fresh servers and builds in release mode.")

    @OptionGroup var mongo: MongoOptions

    @Option(name: SettingDeclaration.amqpURL.name, help: SettingDeclaration.amqpURL.argumentHelp)
    var amqpURL: String?

    @Option(help: "Folder with the release build of outbox-relay.")
    var binDirectory: String

    @Option(help: "Folder with the release build of the examples package (order-service, the consumers, outbox-demo).")
    var examplesBinDirectory: String

    @Option(help: "Backlog for the drain runs (the RSS comparison also runs 5× this).")
    var backlog = 10_000

    @Option(help: "Large events for the peak-RSS run with large events.")
    var largeEvents = 2000

    @Option(help: "Payload bytes of each large event.")
    var largeEventBytes = 400_000

    @Option(help: "Messages for the broker measurements.")
    var brokerMessages = 30_000

    @Option(help: "Events per second for the latency run.")
    var rate = 100

    @Option(help: "Seconds of the latency run.")
    var latencySeconds = 10

    @Option(help: "OrderCreated messages queued for each consumer run (batch size 1, then 32); 0 skips them.")
    var consumerMessages = 2000

    @Option(help: "Orders created over HTTP for the end-to-end run (order service, relay, both consumers); 0 skips it.")
    var flowOrders = 3000

    @Option(help: "Port of the order service in the end-to-end run (ops/bench passes a free one).")
    var flowPort = 8090

    enum Phase: String, CaseIterable, ExpressibleByArgument {
        case broker, store, tracing, scaleOut = "scale-out", consumers, flow, latency, scheduled, console, soak, fairness, streams
    }

    @Option(help: "Outboxes of the change-stream cost run (one stream each, against one cluster-wide stream); 0 skips it.")
    var streamsSources = 16

    @Option(help: "Seconds of each change-stream cost run.")
    var streamsSeconds = 20

    @Option(help: "Events per second written round robin into the outboxes of the change-stream cost run (beside a quiet run).")
    var streamsRate = 20

    @Option(help: "File holding the store's pid, for its CPU time in the change-stream cost run (ops/bench passes the stack's).")
    var storePidFile: String?

    @Option(help: "Scheduled events of the scheduling run, due one after another; 0 skips it.")
    var scheduledEvents = 1000

    @Option(help: "Seconds over which the scheduled events come due.")
    var scheduledSeconds = 10

    @Option(help: "Parked events under the operator console's pages; 0 skips that run.")
    var consoleParked = 100_000

    @OptionGroup var fairness: FairnessOptions

    @Option(help: "Minutes of the soak (relay and both consumers at half their ceiling); 0 skips it.")
    var soakMinutes = 15

    @Option(help: "Orders per second of the soak; 0: half the ceiling of the same pipeline, measured first with a backlog of 3000 orders.")
    var soakRate = 0

    @Option(
        name: .customLong("only"), parsing: .upToNextOption,
        help: ArgumentHelp("Phases to run (default: all): \(Phase.allCases.map(\.rawValue).joined(separator: ", ")).", valueName: "phase"))
    var phases: [Phase] = Phase.allCases

    @Option(help: "Python with the OpenTelemetry protocol package, for the span receiver of the tracing phase (ops/bench passes the project's).")
    var python = "python3"

    @Option(help: "The OTLP span receiver script of the tracing phase (ops/bench passes Tests/clients/otlp_receiver.py).")
    var otlpReceiver: String?

    @Option(help: "Rounds of the tracing comparison (off, then on over OTLP/HTTP and over OTLP/gRPC); each figure is the lowest of its rounds.")
    var tracingRounds = 3

    @Option(help: "Rounds of the scale-out comparison (1 relay, then 3); each figure is the best of its rounds.")
    var scaleOutRounds = 3

    @Option(
        help: ArgumentHelp(
            "Script that gives the store a fresh start (`SCRIPT reset-mongo`: stopped, data removed, started; ops/bench passes ops/stack) before each measured phase, as SecantusDB slows down once its oplog is full; none: the store runs on.",
            valueName: "script"))
    var stackScript: String?

    func run() async throws {
        let settings = Settings()
        let logger = Runtime.bootstrap(label: "outbox-bench", level: .error)
        let uri = try mongo.resolvedURI(settings)
        let amqp = try settings.amqp(amqpURL)
        let bench = Bench(
            uri: uri, amqp: amqp, amqpURL: try settings.secret(amqpURL, .amqpURL, file: .amqpURLFile), bin: binDirectory,
            examples: examplesBinDirectory,
            stackScript: stackScript, logger: logger)
        var rows: [(String, String)] = []
        func report(_ name: String, _ value: String) {
            rows.append((name, value))
            print("  " + name.padding(toLength: max(58, name.count), withPad: " ", startingAt: 0) + " " + value)
        }

        let run = Set(phases)
        if run.contains(.broker) {
            print("broker (RabbitMQ), \(brokerMessages) messages, 1000 in flight")
            let brokerCeiling = try await bench.brokerCeiling(messages: brokerMessages)
            report("broker ceiling: pipelined confirmed publishes", "\(Int(brokerCeiling)) msg/s")
            let relayNoStore = try await bench.relayWithoutStore(messages: brokerMessages)
            report(
                "relay, store taken out (in-memory events, real broker)",
                "\(Int(relayNoStore)) ev/s  (\(ratio(relayNoStore, brokerCeiling)) of broker ceiling)")
        }

        print(
            "store (MongoDB wire: \(Secrets.displayURI(uri, query: false))), backlog \(backlog)\(stackScript == nil ? "" : "; a new store for each phase")"
        )
        if run.contains(.store) {
            try await bench.freshStore()
            let storeCeiling = try await bench.storeCeiling(events: backlog)
            report("store ceiling: find 500 pending + mark them, in a loop", "\(Int(storeCeiling)) ev/s")
            try await bench.freshStore()
            let drain = try await bench.drain(events: backlog)
            report(
                "relay drain of a \(backlog) backlog",
                "\(Int(drain.eventsPerSecond)) ev/s  (\(ratio(drain.eventsPerSecond, storeCeiling)) of store ceiling)")
            report("relay CPU time per event", String(format: "%.1f µs", drain.cpuMicrosPerEvent))
            report("relay peak RSS, \(backlog) backlog", "\(drain.peakRSSKiB / 1024) MiB")
            try await bench.freshStore()
            let minimal = try await bench.drain(events: backlog, shape: .minimal)
            report(
                "relay drain of \(backlog) minimal documents (no relay fields)",
                "\(Int(minimal.eventsPerSecond)) ev/s  (\(ratio(minimal.eventsPerSecond, drain.eventsPerSecond)) of OutboxWriter documents)")
            report("relay CPU time per minimal document", String(format: "%.1f µs", minimal.cpuMicrosPerEvent))
            try await bench.freshStore()
            let pending = try await bench.drain(events: backlog, shape: .pendingFormat)
            report(
                "relay drain of \(backlog) documents written status: pending",
                "\(Int(pending.eventsPerSecond)) ev/s  (\(ratio(pending.eventsPerSecond, minimal.eventsPerSecond)) of minimal documents)")
            try await bench.freshStore()
            let big = try await bench.drain(events: backlog * 5)
            report("relay peak RSS, \(backlog * 5) backlog", "\(big.peakRSSKiB / 1024) MiB  (\(Int(big.eventsPerSecond)) ev/s)")
            try await bench.freshStore()
            let large = try await bench.drain(events: largeEvents, payloadBytes: largeEventBytes)
            report(
                "relay peak RSS, \(largeEvents) × \(largeEventBytes / 1000) KB events",
                "\(large.peakRSSKiB / 1024) MiB  (\(Int(large.eventsPerSecond)) ev/s; small events: \(drain.peakRSSKiB / 1024) MiB)")
            // The byte budget holds whatever shape the documents were written in.
            for shape in [Bench.Shape.minimal, .pendingFormat] {
                try await bench.freshStore()
                let result = try await bench.drain(events: 600, shape: shape, payloadBytes: largeEventBytes)
                report("relay peak RSS, 600 × \(largeEventBytes / 1000) KB \(shape.rawValue) documents", "\(result.peakRSSKiB / 1024) MiB")
            }
        }
        if run.contains(.tracing), otlpReceiver == nil {
            print("tracing: skipped, as no --otlp-receiver was given (ops/bench gives one)")
        }
        if run.contains(.tracing), let otlpReceiver {
            let rounds = max(tracingRounds, 1)
            print(
                "tracing: the \(backlog) backlog, each event with a writer's traceparent, drained with tracing off, then on (OTLP/HTTP, then OTLP/gRPC, to a receiver); \(rounds) round(s)"
            )
            let cost = try await bench.tracingCost(events: backlog, rounds: rounds, python: python, receiver: otlpReceiver)
            report("relay CPU time per event, tracing off", String(format: "%.1f µs", cost.off))
            for transport in Bench.tracingTransports {
                let on = cost.on[transport] ?? 0
                report(
                    "relay CPU time per event, tracing on (\(transport == "grpc" ? "OTLP/gRPC" : "OTLP/HTTP"))",
                    String(
                        format: "%.1f µs  (%@× off; %d of %d spans received)", on, ratio(on, cost.off), cost.spansReceived[transport] ?? 0,
                        cost.spansMade))
            }
        }
        if run.contains(.scaleOut) {
            let rounds = max(scaleOutRounds, 1)
            print("scale-out: the same \(backlog) backlog drained by 1 relay, then by 3 relays at once; \(rounds) round(s), best of each")
            var runs: [Int: [DrainResult]] = [:]
            for _ in 0..<rounds {
                for relays in [1, 3] {
                    try await bench.freshStore()
                    runs[relays, default: []].append(try await bench.drain(events: backlog, relays: relays))
                }
            }
            func best(_ relays: Int) -> DrainResult { runs[relays]!.max { $0.eventsPerSecond < $1.eventsPerSecond }! }
            func all(_ relays: Int) -> String { runs[relays]!.map { "\(Int($0.eventsPerSecond))" }.joined(separator: ", ") }
            let one = best(1)
            let three = best(3)
            report(
                "1 relay",
                String(format: "%d ev/s, %.2f documents read per event", Int(one.eventsPerSecond), one.documentsReadPerEvent)
                    + "  (rounds: \(all(1)))")
            // Round by round too: on a machine whose speed drifts, the best of each may come from
            // different minutes.
            let byRound = zip(runs[3]!, runs[1]!).map { ratio($0.eventsPerSecond, $1.eventsPerSecond) }.joined(separator: ", ")
            report(
                "3 relays",
                "\(Int(three.eventsPerSecond)) ev/s (\(ratio(three.eventsPerSecond, one.eventsPerSecond)) of 1 relay), "
                    + String(format: "%.2f documents read per event", three.documentsReadPerEvent)
                    + "  (rounds: \(all(3)); of 1 relay round by round: \(byRound))")
        }

        if consumerMessages > 0 && run.contains(.consumers) {
            print("consumers: \(consumerMessages) queued OrderCreated applied by one inventory-consumer")
            try await bench.freshStore()
            let single = try await bench.consumer(messages: consumerMessages, batchSize: 1)
            report("inventory-consumer, batch size 1 (one transaction each)", "\(Int(single)) msg/s")
            try await bench.freshStore()
            let batched = try await bench.consumer(messages: consumerMessages, batchSize: 32)
            report("inventory-consumer, batch size 32", "\(Int(batched)) msg/s  (\(ratio(batched, single))× batch size 1)")
        }
        if flowOrders > 0 && run.contains(.flow) {
            print("end to end: \(flowOrders) orders over HTTP until both consumers applied them and their follow-ups are delivered")
            try await bench.freshStore()
            let flow = try await bench.flow(orders: flowOrders, port: flowPort)
            report("order service → relay → both consumers → relay", flow.rate)
            report("slowest stage", flow.slowest)
        }

        if scheduledEvents > 0 && run.contains(.scheduled) {
            print(
                "scheduled delivery: \(scheduledEvents) events with a deliverAt, due over \(scheduledSeconds) s; relay with default settings; deliverAt → consumer receipt"
            )
            try await bench.freshStore()
            let late = try await bench.scheduledLateness(events: scheduledEvents, over: scheduledSeconds)
            report(
                "all \(scheduledEvents) scheduled (half first seen by the relay)",
                String(format: "%.1f s after they were written", late.scheduledWithin))
            report("scheduled events published before their deliverAt", late.early == 0 ? "none" : "\(late.early)")
            report(
                "scheduled delivery lateness p50 / p99 / max", String(format: "%.1f / %.1f / %.1f ms", late.p50, late.p99, late.max))
        }

        if consoleParked > 0 && run.contains(.console) {
            print("operator console: \(consoleParked) parked events over 25 errors and 1000 pending; outboxctl console; median / slowest of 5")
            try await bench.freshStore()
            let console = try await bench.consolePages(parked: consoleParked)
            for (name, median, slowest, bytes) in console.rows {
                report(name, String(format: "%.0f / %.0f ms  (%d bytes)", median, slowest, bytes))
            }
        }

        if soakMinutes > 0 && run.contains(.soak) {
            var rate = soakRate
            print("soak: orders written by OutboxWriter through the relay, inventory and notification consumers (and the follow-ups)")
            if rate == 0 {
                try await bench.freshStore()
                let ceiling = try await bench.soak(ordersPerSecond: 0, minutes: 0, burst: 3000)
                let ordersPerSecond = Double(ceiling.written) / ceiling.completedIn
                report("soak: pipeline ceiling, a backlog of 3000 orders", String(format: "%.1f orders/s", ordersPerSecond))
                rate = max(1, Int(ordersPerSecond / 2))
            }
            print("soak: \(soakMinutes) min at \(rate) orders/s (the relay publishes twice that with the follow-ups)")
            try await bench.freshStore()
            let soak = try await bench.soak(ordersPerSecond: rate, minutes: soakMinutes)
            let first = soak.p99ByMinute.first?.1 ?? .nan
            let last = soak.p99ByMinute.last(where: { $0.0 < soakMinutes })?.1 ?? .nan
            report(
                "soak: relay RSS slope over its last minutes",
                String(
                    format: "%+.2f MiB per 10 min  (%.1f → %.1f MiB)", soak.rssSlope, soak.relayRSS.first?.1 ?? 0, soak.relayRSS.last?.1 ?? 0))
            report("soak: commit → receipt p99, first / last minute", String(format: "%.1f / %.1f ms  (%.2f×)", first, last, last / first))
            let missing = [soak.received, soak.reservations, soak.notifications, soak.followUps].map { max(0, soak.written - $0) }
            report(
                "soak: lost at each stage",
                "delivered \(soak.undelivered), received \(missing[0]), reserved \(missing[1]), notified \(missing[2]), "
                    + "followed up \(missing[3]) (of \(soak.written) orders)")
            report(
                "soak: consumers' RSS at the end",
                String(format: "inventory %.1f MiB, notification %.1f MiB", soak.consumersRSS.0, soak.consumersRSS.1))
        }

        if streamsSources > 0 && run.contains(.streams) {
            guard let storePidFile else { throw ValidationError("the streams phase needs --store-pid-file") }
            print(
                "streams: \(streamsSources) outboxes, each stream asking again as soon as an ask returns (a relay waiting for work), \(streamsSeconds) s a run"
            )
            try await bench.freshStore()
            for layout in [Bench.StreamLayout.none, .perSource, .clusterWide] {
                var figures: [String] = []
                var seen = ""
                for rate in [0, streamsRate] {
                    let cost = try await bench.streamCost(
                        layout: layout, sources: streamsSources, rate: rate, seconds: streamsSeconds, storePidFile: storePidFile)
                    figures.append(String(format: "%.1f", cost.storeMillisPerSecond))
                    if rate > 0 && layout != .none { seen = "  (changes seen: \(cost.changesSeen) of \(cost.written))" }
                }
                report("streams: store CPU, quiet / \(streamsRate) ev/s: \(layout.rawValue)", figures.joined(separator: " / ") + " ms per s" + seen)
            }
        }

        if fairness.fairnessBacklog > 0 && run.contains(.fairness) {
            try await bench.sourceFairness(fairness, report: report)
        }

        guard run.contains(.latency) else { return }
        print("latency: \(rate) events/s for \(latencySeconds) s, commit → consumer receipt")
        try await bench.freshStore()
        let withHint = try await bench.latency(rate: rate, seconds: latencySeconds, changeStream: true)
        report("latency with change-stream wake-up  p50 / p99", String(format: "%.1f / %.1f ms", withHint.p50, withHint.p99))
        try await bench.freshStore()
        let pollOnly = try await bench.latency(rate: rate, seconds: latencySeconds, changeStream: false)
        report("latency polling only (200 ms)        p50 / p99", String(format: "%.1f / %.1f ms", pollOnly.p50, pollOnly.p99))
    }

    func ratio(_ a: Double, _ b: Double) -> String { b > 0 ? String(format: "%.2f", a / b) : "n/a" }
}

struct DrainResult {
    var eventsPerSecond: Double
    var cpuMicrosPerEvent: Double
    /// The largest of the relays'.
    var peakRSSKiB: Int
    /// Outbox documents the relays' fetches read, per event delivered (from their exit summaries).
    var documentsReadPerEvent: Double = 0
}

struct Bench {
    let uri: String
    let amqp: AMQPConfiguration
    let amqpURL: String
    let bin: String
    /// Where the reference application's executables are.
    let examples: String
    let stackScript: String?
    let logger: Logger

    /// A new store through the stack script (stopped, its data removed, started on the same
    /// port), so that a phase does not run on a server slowed down by the phases before it (a full
    /// oplog makes SecantusDB prune on every write); waits until it answers.
    func freshStore() async throws {
        guard let stackScript else { return }
        let usage = try runChild(["/usr/bin/env", "bash", stackScript, "reset-mongo"], environment: ProcessInfo.processInfo.environment)
        guard usage.exitStatus == 0 else { throw ValidationError("'\(stackScript) reset-mongo' failed with status \(usage.exitStatus)") }
        let pool = try database("admin")
        for attempt in 1...50 {
            do {
                try await pool.ping()
                return
            } catch  where attempt < 50 {
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    /// The environment of a relay process of the benchmark.
    func relayEnvironment(database: String) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment["MONGODB_URI"] = uri
        environment["AMQP_URL"] = amqpURL
        // Resolved above: the files would now count as a second source of the same setting.
        for name in ["MONGODB_URI_FILE", "MONGODB_PASSWORD_FILE", "AMQP_URL_FILE"] { environment[name] = nil }
        environment["OUTBOX_DATABASE"] = database
        environment["LOG_LEVEL"] = "warning"
        environment["RELAY_HTTP_ADDRESS"] = "off"
        environment["OTEL_TRACES_EXPORTER"] = nil  // off unless a phase turns it on
        return environment
    }

    func database(_ name: String) throws -> MongoClientPool {
        try MongoClientPool(MongoConfiguration(uri: uri, database: name, threads: 2, appName: "outbox-bench"))
    }

    /// A queue bound to `exchange` that takes everything, emptied.
    func sink(_ exchange: String) async throws -> AMQPAdmin {
        let admin = AMQPAdmin(configuration: amqp, logger: logger)
        try await admin.declareExchange(exchange)
        try await admin.declareQueue("\(exchange).sink", arguments: ["x-queue-mode": .string("lazy")])
        try await admin.bindQueue("\(exchange).sink", exchange: exchange, routingKey: "#")
        try await admin.purgeQueue("\(exchange).sink")
        return admin
    }

    func messages(_ count: Int, exchange: String) -> [OutboxMessage] {
        let body = Array(
            #"{"id":"x","type":"OrderCreated","data":{"orderId":"o","customerId":"c","totalAmount":"12.50","items":[{"sku":"A","quantity":1,"unitPrice":"12.50"}]}}"#
                .utf8)
        return (0..<count).map { i in
            OutboxMessage(
                id: "m-\(i)", type: "OrderCreated", aggregateType: "Order", aggregateId: "a-\(i)", aggregateVersion: 1,
                exchange: exchange, routingKey: "order.created", occurredAt: 0, body: body)
        }
    }

    func brokerCeiling(messages count: Int) async throws -> Double {
        let admin = try await sink("bench.ceiling")
        let publisher = ConfirmPublisher(configuration: amqp, options: .init(maxInFlight: 1000), logger: logger)
        let all = messages(count, exchange: "bench.ceiling")
        _ = await publisher.publish(Array(all.prefix(1000)))  // connect and warm up
        let started = ContinuousClock.now
        for chunk in stride(from: 0, to: count, by: 5000) {
            let outcomes = await publisher.publish(Array(all[chunk..<min(chunk + 5000, count)]))
            guard outcomes.allSatisfy(\.isDelivered) else { throw ValidationError("broker refused messages in the ceiling run") }
        }
        let seconds = (ContinuousClock.now - started).seconds
        await publisher.close()
        try await admin.purgeQueue("bench.ceiling.sink")
        await admin.close()
        return Double(count) / seconds
    }

    func relayWithoutStore(messages count: Int) async throws -> Double {
        let admin = try await sink("bench.memory")
        let store = InMemoryStore(messages(count, exchange: "bench.memory"))
        let publisher = ConfirmPublisher(configuration: amqp, options: .init(maxInFlight: 1000), logger: logger)
        _ = await publisher.publish(messages(1, exchange: "bench.memory"))
        let relay = Relay(store: store, publisher: publisher, leases: AllPartitions(), configuration: .init(batchSize: 5000), logger: logger)
        let started = ContinuousClock.now
        while try await relay.runOnce().fetched > 0 {}
        let seconds = (ContinuousClock.now - started).seconds
        guard store.delivered == count else { throw ValidationError("in-memory relay delivered \(store.delivered) of \(count)") }
        await publisher.close()
        try await admin.purgeQueue("bench.memory.sink")
        await admin.close()
        return Double(count) / seconds
    }

    /// How the bench's documents are written.
    enum Shape: String {
        /// By `OutboxWriter`.
        case writer = "OutboxWriter"
        /// By the contract alone: `type`, `aggregateId`, `data`, `timestamp`.
        case minimal
        /// The older format: minimal fields plus `status: "pending"`, `attempts: 0` and a due time.
        case pendingFormat = "status-pending"
        /// By `OutboxWriter`, each with the W3C trace context of a writer's span.
        case traced
    }

    /// Inserts `count` pending events, written in `shape`, into a fresh database; returns the pool.
    func backlog(_ name: String, events count: Int, exchange: String, shape: Shape = .writer, payloadBytes: Int = 0) async throws -> MongoClientPool {
        let pool = try database(name)
        _ = try await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
        try await MongoOutboxStore(pool: pool, owner: "bench", logger: logger).ensureIndexes()
        let writer = OutboxWriter()
        let start = Int64(Date().timeIntervalSince1970 * 1000) - Int64(count)
        // Inserts of at most about 8 MB (a message holds 48 MB).
        let chunkSize = payloadBytes > 0 ? max(1, min(1000, 8_000_000 / payloadBytes)) : 1000
        let padding = String(repeating: "x", count: payloadBytes)
        for chunk in stride(from: 0, to: count, by: chunkSize) {
            let documents = (chunk..<min(chunk + chunkSize, count)).map { i -> Document in
                var data: Document = ["orderId": .string("order-\(i)"), "customerId": "c", "totalAmount": .decimal128(Decimal128("12.50")!)]
                if payloadBytes > 0 { data["note"] = .string(padding) }
                guard shape == .writer || shape == .traced else {
                    var document: Document = [
                        "_id": .objectId(ObjectId()), "type": "OrderCreated", "aggregateId": .string("order-\(i)"), "data": .document(data),
                        "timestamp": .datetime(start + Int64(i)),
                    ]
                    if shape == .pendingFormat {
                        document = document.merging(["status": "pending", "attempts": 0, "nextAttemptAt": .datetime(start)])
                    }
                    return document
                }
                let trace = shape == .traced ? TraceContext(traceparent: Self.traceparent(i)) : nil
                return writer.document(
                    for: NewEvent(
                        type: "OrderCreated", aggregateType: "Order", aggregateId: "order-\(i)", data: data, exchange: exchange, traceContext: trace))
            }
            try await pool.withConnection { try $0.collection("outbox").insertMany(documents) }
        }
        return pool
    }

    func storeCeiling(events count: Int) async throws -> Double {
        let pool = try await backlog("bench_store", events: count, exchange: "bench.store")
        let started = ContinuousClock.now
        var marked = 0
        var last = ""
        while true {
            let after = last
            let (done, newest) = try await pool.withConnection { connection -> (Int, String) in
                let outbox = connection.collection("outbox")
                let batch = try outbox.find(
                    ["status": "pending", "_id": ["$gt": .string(after)]], options: ["sort": ["_id": 1], "limit": 500, "projection": ["_id": 1]])
                guard let newest = batch.last?["_id"]?.stringValue else { return (0, after) }
                let ids: [BSON] = batch.compactMap { $0["_id"] }
                // One command, as many ids a statement as the relay's marks (a long `$in` costs this
                // store the square of its length).
                let per = MongoOutboxStore.idsPerStatement
                let statements: [(filter: Document, update: BSON, multi: Bool)] = stride(from: 0, to: ids.count, by: per).map {
                    (
                        ["_id": ["$in": .array(Array(ids[$0..<min($0 + per, ids.count)]))], "status": "pending"], ["$set": ["status": "delivered"]],
                        true
                    )
                }
                try outbox.bulkUpdate(statements)
                return (ids.count, newest)
            }
            if done == 0 { break }
            last = newest
            marked += done
        }
        let seconds = (ContinuousClock.now - started).seconds
        _ = try await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
        return Double(marked) / seconds
    }

    /// Drains a fresh backlog with `relays` relay processes started at once, each exiting when idle.
    func drain(
        events count: Int, shape: Shape = .writer, payloadBytes: Int = 0, relays: Int = 1, environment extra: [String: String] = [:]
    ) async throws -> DrainResult {
        let database = "bench_drain"
        let admin = try await sink("bench.drain")
        let pool = try await backlog(database, events: count, exchange: "bench.drain", shape: shape, payloadBytes: payloadBytes)
        var environment = relayEnvironment(database: database).merging(extra) { $1 }
        environment["RELAY_EXCHANGE"] = "bench.drain"
        let outputs = (0..<relays).map {
            FileManager.default.temporaryDirectory.appendingPathComponent("outbox-bench-relay-\(getpid())-\($0).out").path
        }
        let started = Date()
        let pids = try outputs.map {
            try spawnChild(["\(bin)/outbox-relay", "--exit-when-idle", "--no-change-stream"], environment: environment, stdout: $0)
        }
        let usages = pids.map { waitChild($0) }
        // The drain ends with the last event marked delivered; relays that had drained their
        // partitions wait until nothing is due anywhere (up to a second more) before they exit.
        var read = 0
        var lastDelivery = started
        for output in outputs {
            let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            try? FileManager.default.removeItem(atPath: output)
            func field(_ name: String) -> Int? {
                text.split(whereSeparator: \.isWhitespace).first { $0.hasPrefix("\(name)=") }.flatMap { Int($0.dropFirst(name.count + 1)) }
            }
            guard let documents = field("documents_read"), let last = field("last_delivery_ms") else {
                throw ValidationError("a relay printed no drain summary")
            }
            read += documents
            if last > 0 { lastDelivery = max(lastDelivery, Date(timeIntervalSince1970: Double(last) / 1000)) }
        }
        let seconds = max(lastDelivery.timeIntervalSince(started), 0.001)
        let usage = ChildUsage(cpuSeconds: usages.reduce(0) { $0 + $1.cpuSeconds }, maxRSSKiB: usages.map(\.maxRSSKiB).max() ?? 0)
        let delivered = try await pool.withConnection { try $0.collection("outbox").countDocuments(["status": "delivered"]) }
        guard delivered == count else { throw ValidationError("drain delivered \(delivered) of \(count)") }
        _ = try await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
        try await admin.purgeQueue("bench.drain.sink")
        await admin.close()
        return DrainResult(
            eventsPerSecond: Double(count) / seconds, cpuMicrosPerEvent: usage.cpuSeconds * 1_000_000 / Double(count),
            peakRSSKiB: usage.maxRSSKiB, documentsReadPerEvent: Double(read) / Double(count))
    }

    func latency(rate: Int, seconds: Int, changeStream: Bool) async throws -> (p50: Double, p99: Double) {
        let total = rate * seconds
        let sorted = try await timedReceipts(
            database: "bench_latency", exchange: "bench.latency", relayArguments: [changeStream ? "--change-stream" : "--no-change-stream"],
            count: total, wait: .seconds(30),
            write: { pool in
                let writer = OutboxWriter()
                let interval = Duration.seconds(1) / rate
                var next = ContinuousClock.now
                for i in 0..<total {
                    next += interval
                    try await pool.withTransaction { connection in
                        let sentAt = Date().timeIntervalSince1970
                        try writer.append(
                            [
                                NewEvent(
                                    type: "OrderCreated", aggregateType: "Order", aggregateId: "lat-\(i)",
                                    data: ["sentAt": .double(sentAt)], exchange: "bench.latency")
                            ], using: connection)
                    }
                    try await Task.sleep(until: next)
                }
            },
            measure: { body, now in
                guard case .number(let sent)? = body["data"]?["sentAt"], let sentAt = Double(sent) else { return nil }
                return now - sentAt * 1000
            })
        return (sorted[sorted.count / 2], sorted[min(sorted.count - 1, sorted.count * 99 / 100)])
    }
}

extension Bench {
    /// The environment of a product's process: the bench's servers, its database, logs quiet.
    func productEnvironment(database: String, _ extra: [String: String] = [:]) -> [String: String] {
        relayEnvironment(database: database).merging(extra) { $1 }
    }

    /// `count` OrderCreated messages of distinct orders, one item of SKU A each.
    func orderCreated(_ count: Int, exchange: String) -> [OutboxMessage] {
        (0..<count).map { i in
            let body = Array(
                #"{"id":"m-\#(i)","type":"OrderCreated","data":{"orderId":"order-\#(i)","customerId":"c","totalAmount":"12.50","items":[{"sku":"A","quantity":1,"unitPrice":"12.50"}]}}"#
                    .utf8)
            return OutboxMessage(
                id: "m-\(i)", type: "OrderCreated", aggregateType: "Order", aggregateId: "order-\(i)", aggregateVersion: 1,
                exchange: exchange, routingKey: "order.created", occurredAt: 0, body: body)
        }
    }

    /// Queues `count` OrderCreated messages, then starts one `inventory-consumer` with
    /// `batchSize` and times it until every reservation is written; messages per second.
    func consumer(messages count: Int, batchSize: Int) async throws -> Double {
        let database = "bench_consumer"
        let exchange = "bench.consumer"
        let pool = try self.database(database)
        _ = try await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
        try await pool.withConnection {
            try $0.collection("stock").insertOne(["_id": "A", "available": .int64(Int64(count)), "reserved": 0])
        }
        let topology = ConsumerTopology(exchange: exchange, queue: "\(exchange).inventory", bindings: ["order.created"])
        let admin = AMQPAdmin(configuration: amqp, logger: logger)
        try await admin.declare(topology)
        try await admin.purgeQueue(topology.queue)
        let publisher = ConfirmPublisher(configuration: amqp, options: .init(maxInFlight: 1000), logger: logger)
        guard await publisher.publish(orderCreated(count, exchange: exchange)).allSatisfy(\.isDelivered) else {
            throw ValidationError("the broker refused messages for the consumer run")
        }
        await publisher.close()
        let environment = productEnvironment(
            database: database,
            [
                "CONSUMER_EXCHANGE": exchange, "CONSUMER_QUEUE": topology.queue, "CONSUMER_BATCH_SIZE": "\(batchSize)",
                "CONSUMER_HTTP_ADDRESS": "off", "INVENTORY_EXCHANGE": "\(exchange).events",
            ])
        let started = ContinuousClock.now
        let pid = try spawnChild(["\(examples)/inventory-consumer"], environment: environment)
        var applied = 0
        let deadline = started + .seconds(600)
        while applied < count && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(250))
            applied = try await pool.withConnection { try $0.collection("reservations").countDocuments() }
        }
        let seconds = (ContinuousClock.now - started).seconds
        kill(pid, SIGTERM)
        _ = waitChild(pid)
        guard applied == count else { throw ValidationError("the consumer applied \(applied) of \(count)") }
        _ = try await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
        try await admin.deleteQueue(topology.queue)
        try await admin.deleteQueue(topology.deadLetterQueue)
        await admin.close()
        return Double(count) / seconds
    }

    /// The whole flow with default settings: order service, relay and both consumers as processes,
    /// `outbox-demo` creating `orders` orders over HTTP and timing each stage.
    func flow(orders: Int, port: Int) async throws -> (rate: String, slowest: String) {
        let database = "bench_flow"
        let pool = try self.database(database)
        _ = try await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
        let environment = productEnvironment(database: database, ["CONSUMER_HTTP_ADDRESS": "off"])
        var pids: [pid_t] = []
        defer {
            for pid in pids { kill(pid, SIGTERM) }
            for pid in pids { _ = waitChild(pid) }
        }
        pids.append(try spawnChild(["\(examples)/order-service", "--port", "\(port)"], environment: environment))
        pids.append(try spawnChild(["\(bin)/outbox-relay"], environment: environment))
        pids.append(try spawnChild(["\(examples)/inventory-consumer"], environment: environment))
        pids.append(try spawnChild(["\(examples)/notification-consumer"], environment: environment))
        try await Task.sleep(for: .seconds(2))  // listening, queues declared, leases taken
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-bench-flow-\(getpid()).out").path
        defer { try? FileManager.default.removeItem(atPath: output) }
        let demo = try spawnChild(
            [
                "\(examples)/outbox-demo", "--service-url", "http://127.0.0.1:\(port)", "--orders", "\(orders)", "--duplicate-every", "0",
                "--timeout", "900",
            ],
            environment: environment, stdout: output)
        let status = waitChild(demo)
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        func line(_ prefix: String) -> String? {
            text.split(separator: "\n").first { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
        }
        guard status.exitStatus == 0, let rate = line("end-to-end: "), let slowest = line("slowest stage: ") else {
            throw ValidationError("the end-to-end run failed:\n\(text.suffix(2000))")
        }
        _ = try await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
        return (rate, slowest)
    }
}

/// Events in memory, for the relay with the store taken out.
final class InMemoryStore: OutboxStore {
    private let state: Mutex<(messages: [OutboxMessage], next: Int, delivered: Int)>

    init(_ messages: [OutboxMessage]) { state = Mutex((messages, 0, 0)) }

    var delivered: Int { state.withLock { $0.delivered } }

    func fetchDue(limit: Int, leases: [PartitionLease]) async throws -> [OutboxMessage] {
        state.withLock { state in
            let batch = Array(state.messages[state.next..<min(state.next + limit, state.messages.count)])
            state.next += batch.count
            return batch
        }
    }

    func markDelivered(_ messages: [OutboxMessage], leases: [PartitionLease]) async throws -> Set<Int> {
        state.withLock { $0.delivered += messages.count }
        return []
    }

    func markFailed(_ failures: [FailedDelivery], leases: [PartitionLease]) async throws -> Set<Int> { [] }
}

struct AllPartitions: LeaseProvider {
    var current: [PartitionLease] { [PartitionLease(partition: 0, epoch: 1)] }
    func lost(_ partitions: Set<Int>) {}
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

struct ChildUsage {
    var cpuSeconds: Double
    var maxRSSKiB: Int
    /// The exit status, or 128 + the signal that ended it.
    var exitStatus: Int32 = 0
}

func spawnChild(_ arguments: [String], environment: [String: String], stdout: String? = nil) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    if let stdout { posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o644) }
    let argv = arguments.map { strdup($0) } + [nil]
    let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        argv.forEach { free($0) }
        envp.forEach { free($0) }
    }
    var pid: pid_t = 0
    let status = posix_spawn(&pid, arguments[0], &actions, nil, argv, envp)
    guard status == 0 else { throw ValidationError("cannot start \(arguments[0]): \(String(cString: strerror(status)))") }
    return pid
}

@discardableResult
func waitChild(_ pid: pid_t) -> ChildUsage {
    var status: Int32 = 0
    var usage = rusage()
    while wait4(pid, &status, 0, &usage) == -1 && errno == EINTR {}
    let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    let exit = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    return ChildUsage(cpuSeconds: cpu, maxRSSKiB: usage.ru_maxrss, exitStatus: exit)
}

/// Runs a child to completion; its CPU time and peak RSS from wait4.
func runChild(_ arguments: [String], environment: [String: String]) throws -> ChildUsage {
    waitChild(try spawnChild(arguments, environment: environment))
}
