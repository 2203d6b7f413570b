import ArgumentParser
import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Synchronization

/// Issue 25's soak: the relay and both consumers at a steady load for a long while, watched for
/// memory growth, latency creep and loss.
extension Bench {
    struct Soak {
        var ordersPerSecond: Int
        var written: Int
        /// (minute, p99 ms) of commit → receipt by a consumer of the bench.
        var p99ByMinute: [(Int, Double)]
        /// The relay's RSS over the run: (seconds since the start, MiB).
        var relayRSS: [(Double, Double)]
        /// Least-squares slope of the relay's RSS over the run's last 10 minutes (or its second
        /// half, when shorter), in MiB per 10 minutes.
        var rssSlope: Double
        var consumersRSS: (inventory: Double, notification: Double)
        var received: Int
        var reservations: Int
        var notifications: Int
        var undelivered: Int
        /// Follow-up events that reached the inventory exchange's queue.
        var followUps: Int
        /// Seconds from the first write until every order was delivered, received and applied and
        /// every follow-up delivered.
        var completedIn: Double
    }

    /// Writes OrderCreated events (through `OutboxWriter`, each in its own transaction, as the
    /// order service does) at `ordersPerSecond` for `minutes`, while `outbox-relay`,
    /// `inventory-consumer` and `notification-consumer` run with default settings (the inventory
    /// consumer's follow-up events go through the outbox too, so the relay publishes twice the
    /// order rate). A queue of the bench takes every OrderCreated and times commit → receipt.
    /// Then waits for the rest to be delivered and applied.
    ///
    /// With `burst`, writes that many orders at once instead (a backlog in batches of 500) and the
    /// run measures how soon the whole pipeline is through them: its ceiling in orders per second.
    func soak(ordersPerSecond rate: Int, minutes: Int, burst: Int? = nil) async throws -> Soak {
        let name = "bench_soak"
        let exchange = "orders"
        let pool = try database(name)
        _ = try await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
        try await MongoOutboxStore(pool: pool, owner: "bench", logger: logger).ensureIndexes()
        let stock: Int64 = Int64((burst ?? rate * 60 * minutes) * 2)
        try await pool.withConnection { try $0.collection("stock").insertOne(["_id": "A", "available": .int64(stock), "reserved": 0]) }
        let admin = AMQPAdmin(configuration: amqp, logger: logger)
        try await admin.declareExchange(exchange)
        let queue = "bench.soak.orders"
        let measuring = AMQPConsumerChannel(
            configuration: amqp, topology: ConsumerTopology(exchange: exchange, queue: queue, bindings: ["order.created"], prefetch: 500),
            logger: logger)
        try await measuring.connect()
        try await admin.purgeQueue(queue)
        // The inventory consumer's follow-ups go to the inventory exchange: a queue of the bench
        // takes them, as a downstream service would (unroutable, they would be retried and parked).
        let followUps = ConsumerTopology(exchange: "inventory", queue: "bench.soak.inventory", bindings: ["#"], prefetch: 500)
        let downstream = AMQPConsumerChannel(configuration: amqp, topology: followUps, logger: logger)
        try await downstream.connect()
        try await admin.purgeQueue(followUps.queue)

        let environment = productEnvironment(database: name, ["CONSUMER_HTTP_ADDRESS": "off"])
        let relay = try spawnChild(["\(bin)/outbox-relay"], environment: environment)
        let inventory = try spawnChild(["\(examples)/inventory-consumer"], environment: environment)
        let notification = try spawnChild(["\(examples)/notification-consumer"], environment: environment)
        let pids = [relay, inventory, notification]
        var stopped = false
        func stopAll() {
            guard !stopped else { return }
            stopped = true
            for pid in pids { kill(pid, SIGTERM) }
            for pid in pids { waitChild(pid) }
        }
        defer { stopAll() }
        try await Task.sleep(for: .seconds(3))  // queues declared, leases taken

        let started = ContinuousClock.now
        let latencies = Mutex<[Int: [Double]]>([:])
        let received = Mutex(0)
        let receiver = Task {
            while !Task.isCancelled {
                guard let delivery = try await measuring.next(timeout: .milliseconds(200)) else { continue }
                let now = Date().timeIntervalSince1970 * 1000
                if case .number(let sent)? = try JSONValue.parse(delivery.body)["data"]?["sentAt"], let sentAt = Double(sent) {
                    let minute = Int((ContinuousClock.now - started).seconds / 60)
                    latencies.withLock { $0[minute, default: []].append(now - sentAt * 1000) }
                    received.withLock { $0 += 1 }
                }
                try await measuring.ack(delivery)
            }
        }
        let followed = Mutex(0)
        let follower = Task {
            while !Task.isCancelled {
                guard let delivery = try await downstream.next(timeout: .milliseconds(200)) else { continue }
                followed.withLock { $0 += 1 }
                try await downstream.ack(delivery)
            }
        }
        let rss = Mutex<[(Double, Double)]>([])
        let sampler = Task {
            while !Task.isCancelled {
                if let mib = residentMiB(relay) { rss.withLock { $0.append(((ContinuousClock.now - started).seconds, mib)) } }
                try await Task.sleep(for: .seconds(10))
            }
        }

        let writer = OutboxWriter()
        let total = burst ?? rate * 60 * minutes
        @Sendable func order(_ i: Int) -> NewEvent {
            let data: Document = [
                "orderId": .string("soak-\(i)"), "customerId": "c", "totalAmount": .decimal128(Decimal128("1.00")!),
                "items": [["sku": "A", "quantity": 1, "unitPrice": .decimal128(Decimal128("1.00")!)]],
                "sentAt": .double(Date().timeIntervalSince1970),
            ]
            return NewEvent(type: "OrderCreated", aggregateType: "Order", aggregateId: "soak-\(i)", data: data, exchange: exchange)
        }
        if burst != nil {
            for start in stride(from: 0, to: total, by: 500) {
                let events = (start..<min(start + 500, total)).map(order)
                try await pool.withTransaction { try writer.append(events, using: $0) }
            }
        } else {
            let interval = Duration.seconds(1) / rate
            var next = ContinuousClock.now
            for i in 0..<total {
                next += interval
                try await pool.withTransaction { try writer.append([order(i)], using: $0) }
                if ContinuousClock.now < next { try await Task.sleep(until: next) }
            }
        }
        let consumerRSS = (residentMiB(inventory) ?? 0, residentMiB(notification) ?? 0)
        sampler.cancel()

        // The rest: delivered, received, applied by both consumers.
        let deadline = ContinuousClock.now + .seconds(300)
        func counts() async throws -> (undelivered: Int, reservations: Int, notifications: Int) {
            try await pool.withConnection { connection in
                (
                    try connection.collection("outbox").countDocuments(["status": ["$ne": "delivered"]]),
                    try connection.collection("reservations").countDocuments(), try connection.collection("notifications").countDocuments()
                )
            }
        }
        var now = try await counts()
        while ContinuousClock.now < deadline
            && (now.undelivered > 0 || now.reservations < total || now.notifications < total || received.withLock({ $0 }) < total
                || followed.withLock({ $0 }) < total)
        {
            try await Task.sleep(for: .seconds(1))
            now = try await counts()
        }
        let completedIn = (ContinuousClock.now - started).seconds
        receiver.cancel()
        follower.cancel()
        _ = await receiver.result
        _ = await follower.result
        stopAll()
        await measuring.close()
        await downstream.close()
        try await admin.deleteQueue(queue)
        try await admin.deleteQueue(followUps.queue)
        try await admin.deleteQueue(followUps.deadLetterQueue)
        await admin.close()
        _ = try await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }

        let samples = rss.withLock { $0 }
        let window = Double(min(10, max(1, minutes / 2)) * 60)
        let tail = samples.filter { $0.0 >= Double(minutes * 60) - window }
        let byMinute = latencies.withLock { $0 }.sorted { $0.key < $1.key }.map { minute, values -> (Int, Double) in
            let sorted = values.sorted()
            return (minute, sorted[min(sorted.count - 1, sorted.count * 99 / 100)])
        }
        return Soak(
            ordersPerSecond: rate, written: total, p99ByMinute: byMinute, relayRSS: samples, rssSlope: slope(tail) * 600,
            consumersRSS: consumerRSS, received: received.withLock { $0 }, reservations: now.reservations, notifications: now.notifications,
            undelivered: now.undelivered, followUps: followed.withLock { $0 }, completedIn: completedIn)
    }
}

/// A process's resident set in MiB, from /proc.
func residentMiB(_ pid: pid_t) -> Double? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
        let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
        let kib = Double(line.split(separator: " ").dropFirst().first ?? "")
    else { return nil }
    return kib / 1024
}

/// The least-squares slope of y over x.
func slope(_ points: [(Double, Double)]) -> Double {
    guard points.count > 1 else { return 0 }
    let n = Double(points.count)
    let meanX = points.map(\.0).reduce(0, +) / n, meanY = points.map(\.1).reduce(0, +) / n
    let covariance = points.map { ($0.0 - meanX) * ($0.1 - meanY) }.reduce(0, +)
    let variance = points.map { ($0.0 - meanX) * ($0.0 - meanX) }.reduce(0, +)
    return variance == 0 ? 0 : covariance / variance
}
