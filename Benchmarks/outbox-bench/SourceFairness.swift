import ArgumentParser
import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The options of the fairness phase.
struct FairnessOptions: ParsableArguments {
    @Option(help: "Backlog of source A in the fairness phase (drained beside source B, then alone); 0 skips the phase.")
    var fairnessBacklog = 20_000

    @Option(help: "Events per second source B writes in the fairness phase, each in a transaction of its own.")
    var fairnessRate = 20

    @Option(help: "Seconds B writes at least in each run of the fairness phase (longer while A's backlog lasts).")
    var fairnessSeconds = 30

    @Option(help: "A file for B's events of the run with A draining, a line each: seconds from the relay's start to the commit, and ms to receipt.")
    var fairnessTimeline: String?

    func validate() throws {
        guard fairnessBacklog >= 0, fairnessRate > 0, fairnessSeconds > 0 else {
            throw ValidationError("--fairness-backlog must be 0 or more, --fairness-rate and --fairness-seconds more than 0")
        }
    }
}

/// Issue 26's fairness figure: one relay serving two outboxes, A and B, each in a database of its
/// own. B's steady trickle should reach the broker about as soon while A drains a backlog as while
/// A is idle, and A should drain about as fast beside B as alone.
extension Bench {
    /// One run of the fairness phase.
    struct SourcesRun {
        /// B's events: when each one's commit returned to the writer (milliseconds since the epoch)
        /// and how long it took from there to receipt at the bench's queue (milliseconds).
        var probes: [(committedAt: Double, latency: Double)]
        /// Seconds from the relay's start until the last of A's backlog was received; nil without one.
        var drainSeconds: Double?
        /// When the last of A's backlog was received, milliseconds since the epoch.
        var drainEnd: Double
        /// When the relay was started, milliseconds since the epoch.
        var startedAt: Double
    }

    /// The phase: B alone (A empty), B while A drains `options.fairnessBacklog` events, then A alone,
    /// each run on a new store with one `outbox-relay`; reports the target's three figures, and B's
    /// p99 and slowest over the events written while A's backlog lasted.
    func sourceFairness(_ options: FairnessOptions, report: (String, String) -> Void) async throws {
        let (backlog, rate, seconds) = (options.fairnessBacklog, options.fairnessRate, options.fairnessSeconds)
        print(
            "sources fairness: one relay serving outboxes A and B (a database each); B writes \(rate) events/s for at least \(seconds) s, "
                + "one transaction each; A holds a backlog of \(backlog); commit → receipt at a queue of the bench"
                + (stackScript == nil ? "" : "; a new store for each run")
        )
        let idle = try await sourcesRun(backlog: 0, probesPerSecond: rate, seconds: seconds, servingB: true)
        let busy = try await sourcesRun(backlog: backlog, probesPerSecond: rate, seconds: seconds, servingB: true)
        if let path = options.fairnessTimeline {
            let lines = busy.probes.map { String(format: "%.3f %.1f\n", ($0.committedAt - busy.startedAt) / 1000, $0.latency) }
            try lines.joined().write(toFile: path, atomically: true, encoding: .utf8)
        }
        let alone = try await sourcesRun(backlog: backlog, probesPerSecond: 0, seconds: 0, servingB: false)

        let idleLatencies = idle.probes.map(\.latency).sorted()
        let busyLatencies = busy.probes.map(\.latency).sorted()
        let target = max(2 * percentile(idleLatencies, 99), 250)
        let beside = Double(backlog) / (busy.drainSeconds ?? .nan)
        let byItself = Double(backlog) / (alone.drainSeconds ?? .nan)
        let share = beside / byItself
        // B's events written while A's backlog lasted: over a long run they are a small part of
        // all of B's, whose p99 could hide a wait that only they had.
        let whileDraining = busy.probes.filter { $0.committedAt <= busy.drainEnd }.map(\.latency).sorted()

        let labels = [
            "sources fairness: B's commit→broker p50 / p99, A idle",
            "sources fairness: B's commit→broker p50 / p99, A draining \(grouped(backlog))",
            "sources fairness: A's drain beside B / alone",
            "sources fairness: B's p99 / max, written while A's backlog lasted",
        ]
        // Aligned with one another (the longest is wider than the other phases' labels).
        let width = (labels.map(\.count).max() ?? 0) + 1
        let label = labels.map { $0.padding(toLength: width, withPad: " ", startingAt: 0) }
        report(label[0], String(format: "%.1f / %.1f ms", percentile(idleLatencies, 50), percentile(idleLatencies, 99)))
        let busyP99 = percentile(busyLatencies, 99)
        report(
            label[1],
            String(format: "%.1f / %.1f ms (target p99 ≤ %.0f ms) ", percentile(busyLatencies, 50), busyP99, target) + mark(busyP99 <= target))
        report(label[2], String(format: "%.0f / %.0f ev/s (%.2f of alone; target ≥ 0.8) ", beside, byItself, share) + mark(share >= 0.8))
        report(
            label[3],
            whileDraining.isEmpty
                ? "none of B's \(busy.probes.count) events was written before A's backlog was drained"
                : String(
                    format: "%.1f / %.1f ms  (%d of B's %d events)", percentile(whileDraining, 99), whileDraining.last ?? .nan, whileDraining.count,
                    busy.probes.count))
    }

    /// Writes `count` events into A (not timed), starts one relay serving A and, with `servingB`,
    /// B; two seconds on (leases taken, change streams open) writes an event into B every
    /// 1/`rate` s, for `seconds` or until A's backlog is received, whichever is later. A queue of the
    /// bench takes everything the relay publishes: B's events (numbered in `data.probe`) timed from
    /// the return of their commit to their receipt, A's counted. From the commit's return, not from
    /// before it: while A drains, B's own writes wait for the store too, which is not the relay's.
    func sourcesRun(backlog count: Int, probesPerSecond rate: Int, seconds: Int, servingB: Bool) async throws -> SourcesRun {
        let exchange = "bench.fairness"
        let (a, b) = ("bench_fair_a", "bench_fair_b")
        try await freshStore()
        let poolA = try await backlog(a, events: count, exchange: exchange)
        let poolB = try await backlog(b, events: 0, exchange: exchange)
        let admin = AMQPAdmin(configuration: amqp, logger: logger)
        try await admin.declareExchange(exchange)
        let topology = ConsumerTopology(exchange: exchange, queue: "\(exchange).q", bindings: ["#"], prefetch: 500)
        let consumer = AMQPConsumerChannel(configuration: amqp, topology: topology, logger: logger)
        try await consumer.connect()
        try await admin.purgeQueue(topology.queue)

        let receipts = Mutex<[Int: Double]>([:])
        let drained = Mutex((count: 0, last: 0.0))
        let receiver = Task {
            while !Task.isCancelled {
                guard let delivery = try await consumer.next(timeout: .milliseconds(200)) else { continue }
                let now = Date().timeIntervalSince1970 * 1000
                if case .number(let text)? = try JSONValue.parse(delivery.body)["data"]?["probe"], let probe = Int(text) {
                    receipts.withLock { if $0[probe] == nil { $0[probe] = now } }
                } else {
                    drained.withLock { $0 = ($0.count + 1, now) }
                }
                try await consumer.ack(delivery)
            }
        }
        defer { receiver.cancel() }

        var environment = relayEnvironment(database: a)
        environment["RELAY_EXCHANGE"] = exchange
        environment["OUTBOX_SOURCES"] = nil
        let sources = (servingB ? [a, b] : [a]).flatMap { ["--source", "\($0).outbox"] }
        let started = Date()
        let pid = try spawnChild(["\(bin)/outbox-relay"] + sources, environment: environment)
        var relayRunning = true
        func stopRelay() {
            guard relayRunning else { return }
            relayRunning = false
            kill(pid, SIGTERM)
            waitChild(pid)
        }
        defer { stopRelay() }

        // A backlog drains at some hundreds of events a second on the slowest store measured; give
        // it twenty times as long before calling the run failed.
        let drainDeadline = ContinuousClock.now + .seconds(120 + count / 20)
        let writer = OutboxWriter()
        var committed: [Double] = []
        if rate > 0 {
            try await Task.sleep(for: .seconds(2))  // leases taken, change streams open
            let interval = Duration.seconds(1) / rate
            var next = ContinuousClock.now
            while (committed.count < rate * seconds || drained.withLock({ $0.count }) < count) && ContinuousClock.now < drainDeadline {
                next += interval
                let event = NewEvent(
                    type: "FairnessProbe", aggregateType: "Probe", aggregateId: "probe-\(committed.count)",
                    data: ["probe": .int64(Int64(committed.count))], exchange: exchange)
                try await poolB.withTransaction { try writer.append([event], using: $0) }
                committed.append(Date().timeIntervalSince1970 * 1000)
                if ContinuousClock.now < next { try await Task.sleep(until: next) }
            }
        }
        // The rest of B's events, and A's backlog when no event of B was written.
        let deadline = max(ContinuousClock.now + .seconds(30), drainDeadline)
        while (receipts.withLock({ $0.count }) < committed.count || drained.withLock({ $0.count }) < count) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        receiver.cancel()
        _ = await receiver.result
        // Before the databases are dropped (a change stream cannot resume on a dropped database).
        stopRelay()
        await consumer.close()
        try await admin.deleteQueue(topology.queue)
        try await admin.deleteQueue(topology.deadLetterQueue)
        await admin.close()
        for pool in [poolA, poolB] { _ = try await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) } }

        let (drainedCount, last) = drained.withLock { ($0.count, $0.last) }
        let received = receipts.withLock { $0 }
        let probes = committed.enumerated().compactMap { probe, at in received[probe].map { (at, $0 - at) } }
        let run = SourcesRun(
            probes: probes, drainSeconds: count > 0 ? (last / 1000 - started.timeIntervalSince1970) : nil, drainEnd: last,
            startedAt: started.timeIntervalSince1970 * 1000)
        guard probes.count == committed.count, drainedCount >= count else {
            throw ValidationError("fairness run: received \(probes.count) of B's \(committed.count) events and \(drainedCount) of A's \(count)")
        }
        return run
    }
}

/// The `p`th percentile of sorted figures; nan for none.
private func percentile(_ sorted: [Double], _ p: Int) -> Double {
    sorted.isEmpty ? .nan : sorted[min(sorted.count - 1, sorted.count * p / 100)]
}

private func mark(_ met: Bool) -> String { met ? "✔" : "✘" }

/// `20000` as `20,000`.
private func grouped(_ number: Int) -> String {
    let digits = Array(String(number))
    return String(
        digits.enumerated().flatMap { index, digit in
            index > 0 && (digits.count - index) % 3 == 0 ? [",", digit] : [digit]
        })
}
