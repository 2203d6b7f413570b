import ArgumentParser
import Foundation
import Inventory
import Logging
import Outbox
import OutboxAMQP
import OutboxConsumer
import OutboxMongo
import OutboxRuntime
import Synchronization

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Drives the whole flow against running processes and checks the outcome.
@main
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-demo",
        abstract: "Creates orders through the order service and checks that every event is delivered and applied exactly once.",
        discussion: """
            Expects order-service, outbox-relay, inventory-consumer and notification-consumer to be \
            running against the same database (ops/demo starts them). Seeds stock, creates orders \
            over HTTP, re-publishes some OrderCreated messages with their original ids to show that \
            consumers skip duplicates, waits until everything has flowed, prints a summary and exits \
            0 only if nothing is missing or applied twice.
            """)

    @OptionGroup var mongo: MongoOptions

    @Option(name: SettingDeclaration.amqpURL.name, help: SettingDeclaration.amqpURL.argumentHelp)
    var amqpURL: String?

    @Option(help: "Base URL of the order service.")
    var serviceURL = "http://127.0.0.1:8080"

    @Option(help: "Orders to create.")
    var orders = 300

    @Option(help: "Concurrent HTTP requests.")
    var concurrency = 8

    @Option(help: "Every Nth OrderCreated is published a second time with the same message id (0: none).")
    var duplicateEvery = 10

    @Option(help: "How long to wait for everything to flow, in seconds.")
    var timeout = 120

    static let skus = ["SKU-APPLE", "SKU-BREAD", "SKU-CHEESE", "SKU-DATES", "SKU-EGGS", "SKU-FLOUR"]
    /// One SKU runs short on purpose, so some orders get InventoryReservationFailed.
    static let initialStock = [
        "SKU-APPLE": 100_000, "SKU-BREAD": 100_000, "SKU-CHEESE": 100_000, "SKU-DATES": 100_000, "SKU-EGGS": 100_000, "SKU-FLOUR": 40,
    ]

    func run() async throws {
        let settings = Settings()
        let logger = Runtime.bootstrap(label: "outbox-demo", level: .warning)
        let pool = try settings.mongoPool(
            uri: try mongo.resolvedURI(settings), database: try mongo.resolvedDatabase(settings), appName: "outbox-demo")
        let amqp = try settings.amqp(amqpURL)
        let started = ContinuousClock.now

        // Follow-up events from the inventory consumer go to the "inventory" exchange; a queue of
        // the demo's own makes them routable and lets it count them.
        let admin = AMQPAdmin(configuration: amqp, logger: logger)
        try await admin.declareExchange("inventory")
        try await admin.declareQueue("demo.inventory-events")
        try await admin.bindQueue("demo.inventory-events", exchange: "inventory", routingKey: "inventory.#")
        try await admin.purgeQueue("demo.inventory-events")
        try await InventoryHandler.setStock(Self.initialStock, pool: pool)
        print("stock seeded: \(Self.initialStock.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")

        print("creating \(orders) orders through \(serviceURL)/orders (\(concurrency) at a time)")
        let stages = Stages(expected: orders, started: started)
        let watching = Task { await stages.watch(pool: pool, admin: admin) }
        defer { watching.cancel() }
        let created = try await createOrders()
        stages.finished(.created)
        let quantities = created.reduce(into: [String: Int]()) { totals, order in
            for (sku, quantity) in order.items { totals[sku, default: 0] += quantity }
        }
        print("created \(created.count) orders in \(formatted(ContinuousClock.now - started))")

        let duplicates = try await republishDuplicates(pool: pool, amqp: amqp, logger: logger)
        if duplicates > 0 { print("re-published \(duplicates) OrderCreated messages with their original ids (as a broker redelivery would)") }

        let report = try await waitForFlow(pool: pool, admin: admin, stages: stages, expectedOrders: created.count, duplicates: duplicates)
        watching.cancel()
        await admin.close()
        let elapsed = ContinuousClock.now - started

        // Stock must have gone down by exactly the reserved orders' quantities.
        let reservedQuantities = try await pool.withConnection { connection -> [String: Int] in
            var totals: [String: Int] = [:]
            for reservation in try connection.collection(InventoryHandler.reservationsCollection).find(["status": "reserved"]) {
                for line in reservation["items"]?.arrayValue ?? [] {
                    if let line = line.documentValue, let sku = line["sku"]?.stringValue, let q = line["quantity"]?.intValue {
                        totals[sku, default: 0] += q
                    }
                }
            }
            return totals
        }
        let stock = try await pool.withConnection { connection in
            try connection.collection(InventoryHandler.stockCollection).find().reduce(into: [String: Int]()) {
                $0[$1["_id"]?.stringValue ?? ""] = $1["available"]?.intValue ?? 0
            }
        }
        var stockErrors: [String] = []
        for (sku, initial) in Self.initialStock where stock[sku] != initial - (reservedQuantities[sku] ?? 0) {
            stockErrors.append("\(sku): expected \(initial - (reservedQuantities[sku] ?? 0)), found \(stock[sku] ?? -1)")
        }

        var problems = report.problems
        if created.count != orders { problems.append("only \(created.count) of \(orders) orders were created") }
        problems += stockErrors.map { "stock \($0)" }
        let requested = quantities.values.reduce(0, +)

        print("")
        print("──────── summary ────────")
        print("orders created (HTTP 201)        \(created.count)")
        print("OrderCreated events delivered    \(report.orderEventsDelivered) / \(report.orders)")
        print(
            "inventory effects applied        \(report.reservations) (reserved \(report.reserved), failed for lack of stock \(report.reservations - report.reserved))"
        )
        print("notifications recorded           \(report.notifications)")
        print("follow-up events delivered       \(report.followUpsDelivered) (received on demo.inventory-events: \(report.followUpsReceived))")
        print("duplicates suppressed            \(report.duplicatesSkipped) (re-published \(duplicates) × 2 consumers)")
        print("items requested / stock checked  \(requested) / \(stockErrors.isEmpty ? "exact" : "MISMATCH")")
        print("parked events                    \(report.parked)")
        print("elapsed                          \(formatted(elapsed))")
        if let flow = stages.report() { print(flow) }
        if problems.isEmpty {
            print("result: OK — every order's event was delivered and applied exactly once")
        } else {
            print("result: FAILED")
            for problem in problems { print("  - \(problem)") }
            throw ExitCode.failure
        }
    }

    struct CreatedOrder: Sendable {
        var id: String
        var items: [(String, Int)]
    }

    func createOrders() async throws -> [CreatedOrder] {
        let url = URL(string: "\(serviceURL)/orders")!
        let total = orders
        var results: [CreatedOrder] = []
        var failures = 0
        try await withThrowingTaskGroup(of: CreatedOrder?.self) { group in
            var next = 0
            func add() {
                let index = next
                next += 1
                group.addTask { try await Self.createOrder(index: index, url: url) }
            }
            for _ in 0..<min(concurrency, total) { add() }
            while let result = try await group.next() {
                if let result { results.append(result) } else { failures += 1 }
                if results.count % 50 == 0 && results.count > 0 { print("  \(results.count)/\(total) orders created") }
                if next < total { add() }
            }
        }
        if failures > 0 { print("  \(failures) order requests failed") }
        return results
    }

    static func createOrder(index: Int, url: URL) async throws -> CreatedOrder? {
        var generator = SystemRandomNumberGenerator()
        let lineCount = Int.random(in: 1...3, using: &generator)
        let items = Array(skus.shuffled(using: &generator).prefix(lineCount)).map { ($0, Int.random(in: 1...3, using: &generator)) }
        let prices = ["SKU-APPLE": "0.45", "SKU-BREAD": "2.10", "SKU-CHEESE": "7.99", "SKU-DATES": "4.25", "SKU-EGGS": "3.10", "SKU-FLOUR": "1.05"]
        let lines = items.map { #"{"sku":"\#($0.0)","quantity":\#($0.1),"unitPrice":"\#(prices[$0.0]!)"}"# }
        var request = URLRequest(url: url)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue("demo-\(UUID().uuidString)", forHTTPHeaderField: "Idempotency-Key")
        request.httpBody = Data(#"{"customerId":"customer-\#(index % 37)","items":[\#(lines.joined(separator: ","))]}"#.utf8)
        for attempt in 1...5 {
            do {
                let (data, response) = try await URLSession.shared.data(for: request)
                let status = (response as? HTTPURLResponse)?.statusCode ?? 0
                guard status == 201, case .string(let id)? = try JSONValue.parse(Array(data))["id"] else {
                    print("  order \(index): HTTP \(status) \(String(decoding: data, as: UTF8.self))")
                    return nil
                }
                return CreatedOrder(id: id, items: items)
            } catch  where attempt < 5 {
                // The same Idempotency-Key makes the retry safe: at most one order results.
                try await Task.sleep(for: .milliseconds(200 * attempt))
            }
        }
        return nil
    }

    /// Publishes every Nth delivered OrderCreated again, with its original message id and body.
    func republishDuplicates(pool: MongoClientPool, amqp: AMQPConfiguration, logger: Logger) async throws -> Int {
        guard duplicateEvery > 0 else { return 0 }
        let every = duplicateEvery
        // Wait until the relay has delivered them once, so the copy is a true redelivery.
        let deadline = ContinuousClock.now + .seconds(timeout)
        // A count once a second: the store is what the flow waits for, so the demo asks little of it.
        while ContinuousClock.now < deadline {
            let undelivered = try await pool.withConnection {
                try $0.collection("outbox").countDocuments(["status": "pending", "type": "OrderCreated"])
            }
            if undelivered == 0 { break }
            try await Task.sleep(for: .seconds(1))
        }
        let documents = try await pool.withConnection { try $0.collection("outbox").find(["type": "OrderCreated"], options: ["sort": ["_id": 1]]) }
        let copies = documents.enumerated().filter { $0.offset % every == 0 }.compactMap {
            OutboxDocument.decode($0.element, options: .init(), isNew: true).success
        }
        let publisher = ConfirmPublisher(configuration: amqp, options: .init(appId: "outbox-demo"), logger: logger)
        let outcomes = await publisher.publish(copies)
        await publisher.close()
        return outcomes.filter(\.isDelivered).count
    }

    struct Report {
        var orders = 0
        var orderEventsDelivered = 0
        var reservations = 0
        var reserved = 0
        var notifications = 0
        var followUps = 0
        var followUpsDelivered = 0
        var followUpsReceived = 0
        var duplicatesSkipped = 0
        var parked = 0
        var problems: [String] = []
    }

    /// Waits until the watcher saw every stage complete (or the timeout), then counts everything
    /// exactly, once.
    func waitForFlow(pool: MongoClientPool, admin: AMQPAdmin, stages: Stages, expectedOrders: Int, duplicates: Int) async throws -> Report {
        let deadline = ContinuousClock.now + .seconds(timeout)
        var lastLine = ""
        while ContinuousClock.now < deadline {
            let progress = stages.latest
            let line =
                progress.map {
                    "  OrderCreated pending \($0.orderEventsPending) · inventory \($0.reservations) · notifications \($0.notifications) · "
                        + "follow-ups received \($0.followUpsReceived), pending \($0.followUpsPending) · duplicates skipped \($0.duplicatesSkipped)/\(duplicates * 2)"
                } ?? ""
            if line != lastLine {
                print(line)
                lastLine = line
            }
            if stages.allDone, let progress, progress.duplicatesSkipped >= duplicates * 2 { break }
            try await Task.sleep(for: .seconds(1))
        }
        var report = try await pool.withConnection { connection in
            var r = Report()
            let outbox = connection.collection("outbox")
            r.orders = try connection.collection("orders").countDocuments()
            r.orderEventsDelivered = try outbox.countDocuments(["type": "OrderCreated", "status": "delivered"])
            r.followUps = try outbox.countDocuments(["aggregateType": .string(InventoryHandler.aggregateType)])
            r.followUpsDelivered = try outbox.countDocuments(["aggregateType": .string(InventoryHandler.aggregateType), "status": "delivered"])
            r.parked = try outbox.countDocuments(["status": "parked"])
            r.reservations = try connection.collection(InventoryHandler.reservationsCollection).countDocuments()
            r.reserved = try connection.collection(InventoryHandler.reservationsCollection).countDocuments(["status": "reserved"])
            r.notifications = try connection.collection("notifications").countDocuments()
            r.duplicatesSkipped = try Stages.duplicatesSkipped(connection)
            return r
        }
        report.followUpsReceived = try await admin.declareQueue("demo.inventory-events")
        func check(_ ok: Bool, _ text: String) { if !ok { report.problems.append(text) } }
        check(report.orders == expectedOrders, "orders in the database: \(report.orders), expected \(expectedOrders)")
        check(report.orderEventsDelivered == expectedOrders, "OrderCreated delivered: \(report.orderEventsDelivered) of \(expectedOrders)")
        check(report.reservations == expectedOrders, "inventory effects: \(report.reservations) of \(expectedOrders)")
        check(report.notifications == expectedOrders, "notifications: \(report.notifications) of \(expectedOrders)")
        check(report.followUpsDelivered == expectedOrders, "follow-up events delivered: \(report.followUpsDelivered) of \(expectedOrders)")
        check(report.followUpsReceived == expectedOrders, "follow-up events received: \(report.followUpsReceived) of \(expectedOrders)")
        check(report.duplicatesSkipped == duplicates * 2, "duplicates skipped: \(report.duplicatesSkipped), expected \(duplicates * 2)")
        check(report.parked == 0, "\(report.parked) events parked")
        return report
    }

    func formatted(_ duration: Duration) -> String {
        String(format: "%.1f s", Double(duration.milliseconds) / 1000)
    }
}

/// When each stage of the flow had handled every order, sampled once a second while the orders
/// are created and flow: which stage held the flow back, and the flow's rate end to end.
///
/// The samples ask the store only what stays cheap however far the flow has come (the demo
/// shares the store with the flow it measures): events still pending (an index range that holds
/// only those), the number of reservations and notifications (collection counts, no document
/// read), and the follow-up events the demo's own queue received (from the broker).
final class Stages: Sendable {
    enum Stage: String, CaseIterable, Sendable {
        case created = "orders created over HTTP"
        case delivered = "OrderCreated delivered by the relay"
        case inventory = "inventory consumer applied"
        case notifications = "notification consumer applied"
        case followUps = "follow-up events delivered by the relay"

        /// The stage this one waits for. The consumers receive what the relay publishes, which
        /// is before the relay marks it delivered, so they are timed against order creation.
        var input: Stage? {
            switch self {
            case .created: nil
            case .delivered, .inventory, .notifications: .created
            case .followUps: .inventory
            }
        }
    }

    /// One sample.
    struct Progress: Sendable {
        var orderEventsPending = 0
        var reservations = 0
        var notifications = 0
        var followUpsPending = 0
        var followUpsReceived = 0
        var duplicatesSkipped = 0
    }

    let expected: Int
    let started: ContinuousClock.Instant
    private let state = Mutex<(done: [Stage: Duration], latest: Progress?)>(([:], nil))

    init(expected: Int, started: ContinuousClock.Instant) {
        self.expected = expected
        self.started = started
    }

    func finished(_ stage: Stage) {
        let now = ContinuousClock.now - started
        state.withLock { if $0.done[stage] == nil { $0.done[stage] = now } }
    }

    var latest: Progress? { state.withLock { $0.latest } }
    var allDone: Bool { state.withLock { $0.done.count } == Stage.allCases.count }

    /// Samples once a second until cancelled (also after every stage completed, so the demo's
    /// wait for skipped duplicates sees fresh counts).
    func watch(pool: MongoClientPool, admin: AMQPAdmin) async {
        while !Task.isCancelled {
            await sample(pool: pool, admin: admin)
            try? await Task.sleep(for: .seconds(1))
        }
    }

    static func duplicatesSkipped(_ connection: MongoConnection) throws -> Int {
        try connection.collection(InboxConsumer.statsCollection).find().reduce(0) { $0 + ($1["duplicatesSkipped"]?.intValue ?? 0) }
    }

    /// Counts once and notes the stages that are complete.
    func sample(pool: MongoClientPool, admin: AMQPAdmin) async {
        guard
            var progress = try? await pool.withConnection({ connection -> Progress in
                let outbox = connection.collection("outbox")
                var p = Progress()
                p.orderEventsPending = try outbox.countDocuments(["status": "pending", "type": "OrderCreated"])
                p.followUpsPending = try outbox.countDocuments(["status": "pending", "aggregateType": .string(InventoryHandler.aggregateType)])
                p.reservations = try connection.collection(InventoryHandler.reservationsCollection).estimatedCount()
                p.notifications = try connection.collection("notifications").estimatedCount()
                p.duplicatesSkipped = try Self.duplicatesSkipped(connection)
                return p
            }),
            let received = try? await admin.declareQueue("demo.inventory-events")
        else { return }
        progress.followUpsReceived = received
        let created = state.withLock { $0.done[.created] != nil }
        // Every order's event is written with it, pending: none pending once all are created means all were delivered.
        if created && progress.orderEventsPending == 0 { finished(.delivered) }
        if progress.reservations >= expected { finished(.inventory) }
        if progress.notifications >= expected { finished(.notifications) }
        if progress.followUpsReceived >= expected && progress.followUpsPending == 0 { finished(.followUps) }
        state.withLock { $0.latest = progress }
    }

    /// The stages in the order they finished, each with the time it took after its input was
    /// complete; the one that took longest is the slowest.
    func report() -> String? {
        let times = state.withLock { $0.done }
        guard times.count == Stage.allCases.count, let end = times.values.max() else { return nil }
        func seconds(_ d: Duration) -> Double { Double(d.milliseconds) / 1000 }
        func lag(_ stage: Stage) -> Duration { max(times[stage]! - (stage.input.map { times[$0]! } ?? .zero), .zero) }
        var lines = ["──────── flow (sampled every second) ────────"]
        for stage in Stage.allCases.sorted(by: { times[$0]! < times[$1]! }) {
            lines.append(
                stage.rawValue.padding(toLength: 40, withPad: " ", startingAt: 0)
                    + String(format: " %6.1f s  (+%.1f s after its input)", seconds(times[stage]!), seconds(lag(stage))))
        }
        let slowest = Stage.allCases.max { lag($0) < lag($1) }!
        lines.append(String(format: "end-to-end: %.1f orders/s (%d orders in %.1f s)", Double(expected) / seconds(end), expected, seconds(end)))
        lines.append("slowest stage: \(slowest.rawValue)")
        return lines.joined(separator: "\n")
    }
}

extension Result {
    var success: Success? { if case .success(let value) = self { value } else { nil } }
}
