import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// Settings of the relay loop.
public struct RelayConfiguration: Sendable {
    /// Events fetched and published per batch.
    public var batchSize: Int
    /// Wait between polls when the outbox had nothing due.
    public var pollInterval: Duration
    /// Longest wait after a failed poll (store or broker down); doubles from `pollInterval`.
    public var maxErrorBackoff: Duration
    public var retryPolicy: RetryPolicy
    /// Tries of a mark (delivered or failed) before the pass gives up; the delay between them
    /// starts at `markRetryDelay` and quadruples. Marks are idempotent and fenced, so trying again
    /// is always safe, and it saves publishing confirmed events a second time.
    public var markAttempts: Int
    public var markRetryDelay: Duration
    /// Message bodies per batch, in bytes, so memory stays bounded in bytes whatever the events'
    /// size: the fetch asks for as many events as the budget holds at the size seen last, and a
    /// batch is cut at the budget (an event larger than the budget still goes out, alone). In
    /// flight there is at most one batch.
    public var batchMaxBytes: Int
    /// The body size assumed before a batch was seen (e.g. the largest body allowed), so the first
    /// fetch stays within the budget too; nil: the first fetch asks for `batchSize`.
    public var assumedBytesPerEvent: Int?

    /// Milliseconds since the epoch, for the age of events (`RetryPolicy.parkTransientAfter`) and
    /// their delivery lag (`outbox_delivery_lag_seconds`); nil: ages are unknown, transient
    /// failures never park and no lag is recorded.
    public var wallClock: (@Sendable () -> Int64)?

    /// The longest a pass (fetch, publish, mark) should take: a pass that took longer makes the
    /// next fetches ask for fewer events, in proportion, and passes well within it let the number
    /// grow back (doubling) to `batchSize`. The relay sets it to a third of the lease TTL, so a
    /// batch is published and marked while its leases hold (a slow store or broker otherwise lets
    /// another relay take the partitions over mid-pass and publish the same events). nil: fetches
    /// always ask for `batchSize`.
    public var passTarget: Duration?

    public static let defaultBatchMaxBytes = 16 << 20

    public init(
        batchSize: Int = 500, pollInterval: Duration = .milliseconds(200), maxErrorBackoff: Duration = .seconds(5),
        retryPolicy: RetryPolicy = RetryPolicy(), markAttempts: Int = 4, markRetryDelay: Duration = .milliseconds(25),
        batchMaxBytes: Int = RelayConfiguration.defaultBatchMaxBytes, assumedBytesPerEvent: Int? = nil,
        wallClock: (@Sendable () -> Int64)? = nil, passTarget: Duration? = nil
    ) {
        self.wallClock = wallClock
        self.passTarget = passTarget
        self.batchSize = batchSize
        self.pollInterval = pollInterval
        self.maxErrorBackoff = maxErrorBackoff
        self.retryPolicy = retryPolicy
        self.markAttempts = max(markAttempts, 1)
        self.markRetryDelay = markRetryDelay
        self.batchMaxBytes = max(batchMaxBytes, 1)
        self.assumedBytesPerEvent = assumedBytesPerEvent.map { max($0, 1) }
    }
}

/// What one pass of the relay did.
public struct RelayPassResult: Sendable, Equatable {
    public var fetched = 0
    public var delivered = 0
    public var retried = 0
    public var parked = 0
    /// Left pending untouched because the broker connection was lost.
    public var unsent = 0
    /// Not marked because the partition's lease was taken over meanwhile.
    public var fenced = 0

    public init(fetched: Int = 0, delivered: Int = 0, retried: Int = 0, parked: Int = 0, unsent: Int = 0, fenced: Int = 0) {
        self.fetched = fetched
        self.delivered = delivered
        self.retried = retried
        self.parked = parked
        self.unsent = unsent
        self.fenced = fenced
    }
}

/// Moves events from the outbox to the broker: fetch a bounded batch of due events, publish
/// them with confirms, mark the acked ones delivered, reschedule or park the rest.
///
/// An event is marked delivered only after its `basic.ack` (I3). If the process dies between the
/// ack and the mark, the event stays pending and is published again: delivery is at least once,
/// and consumers de-duplicate by message id.
public final class Relay: Service {
    private let store: any OutboxStore
    private let publisher: any ConfirmingPublisher
    private let leases: any LeaseProvider
    private let configuration: RelayConfiguration
    private let logger: Logger
    private let idle: @Sendable () async -> Void
    private let wake: WakeSignal?
    private let onIteration: @Sendable () -> Void
    private let metrics: RelayMetrics
    private let failedPassCount = Mutex(0)
    /// How the store is shared with the other sources of the process (see `StoreShares`), and this
    /// loop's number there (its pool holds its commands back by the same number).
    private let shares: (shares: StoreShares, member: Int)?
    /// Events the broker acked whose delivered mark failed even after retries, by partition
    /// (bodies dropped). They are marked before the next fetch and never published again while
    /// this relay holds their partition; once another relay owns it, they are forgotten (that relay
    /// publishes them again: at least once).
    private let unmarked = Mutex<[Int: [OutboxMessage]]>([:])
    /// Mean body size of the last batch; nil before the first.
    private let bytesPerEvent = Mutex<Int?>(nil)
    /// The most events a fetch asks for while passes run longer than `passTarget`; nil: no limit
    /// beyond `batchSize`.
    private let adaptedLimit = Mutex<Int?>(nil)

    /// `idle` runs when a poll found nothing due (e.g. to let the broker connection answer heartbeats).
    /// `wake`, when given, cuts the wait between polls short (e.g. on a change-stream event); the
    /// poll stays the source of truth, so a missed wake-up only costs latency. `onIteration` runs
    /// at the end of every pass of `run()`, whatever its outcome. `metrics` carry the source's label.
    public init(
        store: any OutboxStore, publisher: any ConfirmingPublisher, leases: any LeaseProvider,
        configuration: RelayConfiguration = .init(), metrics: RelayMetrics = RelayMetrics(), shares: (shares: StoreShares, member: Int)? = nil,
        logger: Logger,
        wake: WakeSignal? = nil,
        idle: @escaping @Sendable () async -> Void = {},
        onIteration: @escaping @Sendable () -> Void = {}
    ) {
        self.onIteration = onIteration
        self.metrics = metrics
        self.shares = shares
        self.wake = wake
        self.store = store
        self.publisher = publisher
        self.leases = leases
        self.configuration = configuration
        self.logger = logger
        self.idle = idle
    }

    public func run() async throws {
        logger.info("relay started", metadata: [LogKey.outboxBatchSize: "\(configuration.batchSize)"])
        metrics.fetchLimit.record(fetchLimit())
        var failures = 0
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            defer { onIteration() }  // each pass, delivered, idle or failed (a liveness watchdog counts them)
            do {
                let result = try await runOnce()
                passSucceeded(true)
                if result.unsent > 0 {
                    // The broker is unreachable: wait before trying again instead of spinning.
                    failures += 1
                    try? await Task.sleep(for: errorBackoff(failures))
                    continue
                }
                failures = 0
                if result.fetched == 0 {
                    await idle()
                    // Until the next poll, or sooner if the store asks (a scheduled event comes due).
                    // A shutdown ends the wait: a long poll interval must not hold it up.
                    let wait = max(min(configuration.pollInterval, store.nextFetchIn() ?? configuration.pollInterval), .zero)
                    try? await cancelWhenGracefulShutdown { [wake] in
                        if let wake {
                            await wake.wait(timeout: wait)
                        } else {
                            try await Task.sleep(for: wait)
                        }
                    }
                }
            } catch {
                failures += 1
                passSucceeded(false)
                let delay = errorBackoff(failures)
                logger.warning("relay pass failed; retrying", metadata: [LogKey.error: "\(error)", LogKey.retryIn: "\(delay)"])
                try? await Task.sleep(for: delay)
            }
        }
        if let (shares, member) = shares { shares.leave(member) }
        logger.info("relay stopped")
    }

    /// Passes in a row that failed on the store (0 after one that did not): a source whose
    /// collection cannot be read or written shows here, in `outbox_source_up` and in readiness.
    public var failedPasses: Int { failedPassCount.withLock { $0 } }

    private func passSucceeded(_ succeeded: Bool) {
        let count = failedPassCount.withLock { count in
            count = succeeded ? 0 : count + 1
            return count
        }
        metrics.sourceUp.record(count == 0 ? 1 : 0)
    }

    private func errorBackoff(_ failures: Int) -> Duration {
        min(configuration.pollInterval * (1 << min(failures, 10)), configuration.maxErrorBackoff)
    }

    /// One fetch → publish → mark pass. Throws only when the store fails; broker failures become
    /// rescheduled events.
    @discardableResult
    public func runOnce() async throws -> RelayPassResult {
        let held = leases.leasesForPass()
        defer { leases.passEnded() }
        metrics.partitionsOwned.record(held.count)
        guard !held.isEmpty else { return RelayPassResult() }
        let limit = shares.map { $0.shares.share(of: fetchLimit(), for: $0.member) } ?? fetchLimit()
        var result = RelayPassResult()
        if let (shares, member) = shares {
            let delay = shares.delayBeforePass(member)
            if delay > .zero { try? await Task.sleep(for: delay) }
            shares.passStarted(member)
        }
        defer { shares.map { $0.shares.passEnded($0.member, full: result.fetched >= limit) } }
        let started = ContinuousClock.now
        result = try await pass(held: held, limit: limit)
        adapt(limit: limit, took: ContinuousClock.now - started)
        return result
    }

    /// Events a mark writes in one store command while the relay serves other sources too.
    static let markPart = 50

    /// Runs store work (a fetch, a mark) in turn with the other sources: a quiet source's first
    /// (see `StoreShares`).
    private func storeWork<T>(_ work: () async throws -> T) async rethrows -> T {
        guard let (shares, member) = shares else { return try await work() }
        return try await shares.storeWork(member, work)
    }

    /// The pass itself, fetching at most `limit` events.
    private func pass(held: [PartitionLease], limit: Int) async throws -> RelayPassResult {
        let earlier = try await markRemembered(held: held)
        var batch = try await storeWork { try await store.fetchDue(limit: limit, leases: held) }
        let remembered = unmarked.withLock { Set($0.values.joined().map(\.id)) }
        if !remembered.isEmpty { batch.removeAll { remembered.contains($0.id) } }
        guard !batch.isEmpty else { return RelayPassResult(delivered: earlier) }
        let bodies = batch.reduce(0) { $0 + $1.body.count }
        bytesPerEvent.withLock { $0 = max(bodies / batch.count, 1) }
        batch = Self.cut(batch, toBytes: configuration.batchMaxBytes)
        // A lease lost since the fetch (fenced, or renewal failing for a whole TTL), or not renewed
        // for two thirds of it (the store is slow): its events may be another relay's to publish
        // before this batch is marked; they stay as they are.
        let gone = Set(held.filter { !leases.isHeld($0) }.map(\.partition))
        if !gone.isEmpty {
            batch.removeAll { gone.contains($0.partition) }
            logger.warning(
                "lease lost or not renewed lately; its events stay pending until a renewal lands, or for the partition's new owner",
                metadata: [LogKey.outboxPartitions: "\(gone.sorted())"])
            guard !batch.isEmpty else { return RelayPassResult(delivered: earlier) }
        }
        metrics.batchSize.record(batch.count)
        let started = ContinuousClock.now
        let spans = PublishSpans(&batch, now: configuration.wallClock?())
        let outcomes = await publisher.publish(batch)
        spans.end(outcomes)
        metrics.confirmDuration.recordNanoseconds((ContinuousClock.now - started).nanoseconds)
        precondition(outcomes.count == batch.count, "publisher must answer every message")
        var byResult: [String: Int] = [:]
        for outcome in outcomes { byResult[outcome.label, default: 0] += 1 }
        for (label, count) in byResult { metrics.publishes(label).increment(by: count) }

        var (delivered, failed, unsent) = sort(batch, by: outcomes)
        if let now = configuration.wallClock?() {
            for message in delivered { metrics.deliveryLag.record(type: message.type, occurredAt: message.dueSince, now: now) }
        }
        var fencedPartitions = Set<Int>()
        if !delivered.isEmpty {
            // Beside other sources in parts, each after its turn: a quiet source's pass waits
            // behind one part at most.
            let partSize = shares.map { $0.shares.isShared ? Self.markPart : delivered.count } ?? delivered.count
            if partSize < delivered.count {
                // A partition's events share statements (one fence each): parts by partition keep
                // them few, where parts of a batch in publishing order would hold a statement or
                // more for every partition each. (Stable: an aggregate's events stay in order.)
                delivered = delivered.enumerated().sorted { ($0.element.partition, $0.offset) < ($1.element.partition, $1.offset) }.map(\.element)
            }
            var marked = 0
            do {
                while marked < delivered.count {
                    let part = Array(delivered[marked..<min(marked + partSize, delivered.count)])
                    fencedPartitions.formUnion(
                        try await storeWork { try await retryingMark { [store] in try await store.markDelivered(part, leases: held) } })
                    marked += part.count
                }
            } catch {
                // Confirmed, still pending in the store: remembered, marked before the next fetch.
                remember(Array(delivered[marked...]))
                throw error
            }
        }
        if !failed.isEmpty {
            // Not marked: they stay pending as they were and are published again (not confirmed anyway).
            fencedPartitions.formUnion(try await retryingMark { [store, failed] in try await store.markFailed(failed, leases: held) })
            logFailures(failed)
        }
        if unsent > 0 {
            logger.warning("broker connection lost or blocked; events stay pending", metadata: [LogKey.outboxUnsent: "\(unsent)"])
        }
        var fenced = 0
        if !fencedPartitions.isEmpty {
            leases.lost(fencedPartitions)
            fenced =
                delivered.filter { fencedPartitions.contains($0.partition) }.count
                + failed.filter { fencedPartitions.contains($0.partition) }.count
            delivered.removeAll { fencedPartitions.contains($0.partition) }
            failed.removeAll { fencedPartitions.contains($0.partition) }
        }
        let parked = failed.filter { $0.decision == .park }.count
        return RelayPassResult(
            fetched: batch.count, delivered: earlier + delivered.count, retried: failed.count - parked, parked: parked,
            unsent: unsent, fenced: fenced)
    }

    /// The batch by outcome: delivered; failed, with the retry policy's decision; and how many
    /// were not sent (broker gone or blocked: not the event's fault, so no attempt is counted).
    func sort(_ batch: [OutboxMessage], by outcomes: [PublishOutcome]) -> (delivered: [OutboxMessage], failed: [FailedDelivery], unsent: Int) {
        var delivered: [OutboxMessage] = []
        var failed: [FailedDelivery] = []
        var unsent = 0
        delivered.reserveCapacity(batch.count)
        for (message, outcome) in zip(batch, outcomes) {
            if outcome.isDelivered {
                delivered.append(message)
            } else if outcome.leavesEventUntouched {
                unsent += 1
            } else {
                // Transient outcomes count for the backoff only; they park only if parkTransientAfter says so.
                let attempts = message.attempts + 1
                let age = configuration.wallClock.map { Duration.milliseconds($0() - message.occurredAt) }
                failed.append(
                    FailedDelivery(
                        message, attempts: attempts, error: outcome.reason,
                        decision: configuration.retryPolicy.decision(afterAttempts: attempts, transient: outcome.isTransient, age: age)))
            }
        }
        return (delivered, failed, unsent)
    }

    /// Events to ask the store for: the batch size, or fewer if the byte budget holds fewer at the
    /// size seen last (before any batch, at the assumed size), or while passes run long (`adapt`).
    func fetchLimit() -> Int {
        let limit = min(configuration.batchSize, adaptedLimit.withLock { $0 } ?? configuration.batchSize)
        guard let size = bytesPerEvent.withLock({ $0 }) ?? configuration.assumedBytesPerEvent else { return limit }
        return min(limit, max(configuration.batchMaxBytes / size, 1))
    }

    /// After a pass that asked for `limit` events and took `took`: longer than `passTarget`, the
    /// next fetches ask for fewer in proportion (at least one); within half of it, for twice as
    /// many, up to `batchSize`.
    func adapt(limit: Int, took: Duration) {
        guard let target = configuration.passTarget, target > .zero else { return }
        let batchSize = configuration.batchSize
        let (before, after) = adaptedLimit.withLock { adapted -> (Int, Int) in
            let before = adapted ?? batchSize
            if took > target {
                adapted = max(Int(Double(limit) * (target / took)), 1)
            } else if took * 2 < target && adapted != nil {
                let grown = min(before * 2, batchSize)
                adapted = grown >= batchSize ? nil : grown
            }
            return (before, adapted ?? batchSize)
        }
        guard after != before else { return }
        metrics.fetchLimit.record(after)
        if after < before {
            logger.debug(
                "pass took longer than its target; fetching fewer events",
                metadata: [LogKey.outboxBatchSize: "\(after)", LogKey.relayPassDuration: "\(took)"])
        }
    }

    /// The longest prefix of `batch` whose bodies fit in `budget` bytes, at least one event. The
    /// rest stay pending and come again with the next fetch.
    static func cut(_ batch: [OutboxMessage], toBytes budget: Int) -> [OutboxMessage] {
        var total = 0
        for (index, message) in batch.enumerated() {
            total += message.body.count
            if total > budget { return Array(batch.prefix(max(index, 1))) }
        }
        return batch
    }

    /// Runs a mark, trying again after a store error with a short, growing delay.
    private func retryingMark(_ mark: @Sendable () async throws -> Set<Int>) async throws -> Set<Int> {
        var delay = configuration.markRetryDelay
        var attempt = 1
        while true {
            do {
                return try await mark()
            } catch {
                guard attempt < configuration.markAttempts, !Task.isCancelled else { throw error }
                metrics.markRetries.increment()
                logger.debug("marking failed; trying again", metadata: [LogKey.error: "\(error)", LogKey.retryIn: "\(delay)"])
                try? await Task.sleep(for: delay)
                delay *= 4
                attempt += 1
            }
        }
    }

    private func remember(_ confirmed: [OutboxMessage]) {
        unmarked.withLock { state in
            for var message in confirmed {
                message.body = []
                state[message.partition, default: []].append(message)
            }
        }
        logger.warning(
            "confirmed events could not be marked; marking them before the next fetch", metadata: [LogKey.outboxUnmarked: "\(confirmed.count)"])
    }

    /// Marks the events remembered as confirmed but unmarked whose partitions this relay still
    /// holds, and forgets the others (another relay owns them now). Throws, keeping them, when
    /// the store still fails: nothing is fetched until they are marked.
    private func markRemembered(held: [PartitionLease]) async throws -> Int {
        let owned = Set(held.map(\.partition))
        let waiting = unmarked.withLock { state -> [OutboxMessage] in
            state = state.filter { owned.contains($0.key) }
            return Array(state.values.joined())
        }
        guard !waiting.isEmpty else { return 0 }
        let fenced = try await retryingMark { [store] in try await store.markDelivered(waiting, leases: held) }
        unmarked.withLock { state in
            for partition in Set(waiting.map(\.partition)) { state[partition] = nil }
        }
        if !fenced.isEmpty { leases.lost(fenced) }
        let marked = waiting.filter { !fenced.contains($0.partition) }.count
        logger.info("marked events confirmed in an earlier pass", metadata: [LogKey.outboxMarked: "\(marked)"])
        return marked
    }

    private func logFailures(_ failed: [FailedDelivery]) {
        for failure in failed.prefix(5) {
            let action = failure.decision == .park ? "parked" : "will retry"
            logger.warning(
                "delivery failed; \(action)",
                metadata: [
                    LogKey.outboxEventID: "\(failure.id)", LogKey.outboxAttempts: "\(failure.attempts)",
                    LogKey.error: "\(failure.error)",
                ])
        }
        if failed.count > 5 { logger.warning("\(failed.count - 5) more deliveries failed in this batch") }
    }
}

extension Duration {
    public var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
