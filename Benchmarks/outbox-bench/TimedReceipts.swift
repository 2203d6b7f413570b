import ArgumentParser
import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The frame of the timing phases (latency, scheduled delivery): a relay and a consumer of its
/// exchange run while the phase writes events; the consumer takes a figure from each message at
/// its receipt.
extension Bench {
    /// Starts a relay (`relayArguments`) on `database` and a consumer of `exchange`, runs `write`,
    /// and waits up to `wait` after it for `count` messages; `measure` makes a figure of each
    /// message's body at its receipt (milliseconds since the epoch), nil for none. Returns the
    /// figures sorted, or throws when fewer than `count` arrived.
    func timedReceipts(
        database: String, exchange: String, relayArguments: [String] = [], count: Int, wait: Duration,
        write: (MongoClientPool) async throws -> Void, measure: @escaping @Sendable (JSONValue, Double) -> Double?
    ) async throws -> [Double] {
        let pool = try await backlog(database, events: 0, exchange: exchange)
        let admin = AMQPAdmin(configuration: amqp, logger: logger)
        try await admin.declareExchange(exchange)
        let queue = "\(exchange).q"
        let consumer = AMQPConsumerChannel(
            configuration: amqp, topology: ConsumerTopology(exchange: exchange, queue: queue, bindings: ["#"], prefetch: 500), logger: logger)
        try await consumer.connect()
        try await admin.purgeQueue(queue)
        let pid = try spawnChild(["\(bin)/outbox-relay"] + relayArguments, environment: relayEnvironment(database: database))
        var relayRunning = true
        func stopRelay() {
            guard relayRunning else { return }
            relayRunning = false
            kill(pid, SIGTERM)
            _ = waitChild(pid)
        }
        defer { stopRelay() }
        try await Task.sleep(for: .seconds(2))  // leases taken, watch open

        let figures = Mutex<[Double]>([])
        let receiver = Task {
            while figures.withLock({ $0.count }) < count {
                guard let delivery = try await consumer.next(timeout: .milliseconds(200)) else { continue }
                let now = Date().timeIntervalSince1970 * 1000
                if let figure = measure(try JSONValue.parse(delivery.body), now) { figures.withLock { $0.append(figure) } }
                try await consumer.ack(delivery)
            }
        }
        try await write(pool)
        let deadline = ContinuousClock.now + wait
        while figures.withLock({ $0.count }) < count && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(100)) }
        receiver.cancel()
        // Before its database is dropped: a change stream whose database is dropped under it cannot
        // resume (the server's last resume token then names the database's command namespace), and
        // the relay would log it.
        stopRelay()
        await consumer.close()
        try await admin.deleteQueue(queue)
        await admin.close()
        _ = try await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
        let sorted = figures.withLock { $0 }.sorted()
        guard sorted.count == count else { throw ValidationError("\(database) received \(sorted.count) of \(count)") }
        return sorted
    }
}
