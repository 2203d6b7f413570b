import Logging
import ServiceLifecycle
import Synchronization

/// The right to relay one partition of the outbox, with its fencing token.
public struct PartitionLease: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var partition: Int
    /// Increases every time the partition changes owner; every write the owner makes is guarded by it.
    public var epoch: Int64

    public init(partition: Int, epoch: Int64) {
        self.partition = partition
        self.epoch = epoch
    }

    public static func < (lhs: PartitionLease, rhs: PartitionLease) -> Bool { lhs.partition < rhs.partition }
    public var description: String { "\(partition)@\(epoch)" }
}

/// What the lease store reports after one round of heartbeat, renewal and acquisition.
public struct LeaseRound: Sendable, Equatable {
    /// Leases held after the round (renewed or newly taken).
    public var held: [PartitionLease]
    /// Relays that heartbeated within their TTL, this one included.
    public var activeRelays: Int
    /// Partitions other relays hold live leases on (after this round).
    public var heldByOthers: Int
    /// This relay's place among the live relays ordered by id (0 for the first): which of them
    /// hold one partition more when the partitions do not divide evenly.
    public var rank: Int

    public init(held: [PartitionLease], activeRelays: Int, heldByOthers: Int = 0, rank: Int = 0) {
        self.held = held
        self.activeRelays = activeRelays
        self.heldByOthers = heldByOthers
        self.rank = rank
    }
}

/// Where leases live. Expiry is judged by the store's clock (for MongoDB, `$$NOW`), never by the
/// relay's, so clock skew between relays cannot make two of them owners at once.
public protocol LeaseStore: Sendable {
    /// Heartbeats `owner`, renews `held`, releases `release`, then takes up to `want` more
    /// partitions that are free or expired.
    func round(owner: String, held: [PartitionLease], release: [PartitionLease], want: Int, ttl: Duration) async throws -> LeaseRound
    /// Gives up the leases and the heartbeat (graceful shutdown).
    func resign(owner: String, leases: [PartitionLease]) async throws
}

/// How many partitions a relay should hold: an even split, the shares differing by at most one
/// (16 over 3 relays: 6, 5, 5), the larger ones going to the first relays by id, so the shares
/// of relays that see the same live relays add up to the partitions exactly. (Rounding every
/// share up would let the first relays take 6, 6 and leave 4 to the third: a third less work
/// than the others, idle for a quarter of a drain.)
public enum LeaseBalancer {
    public static func share(partitions: Int, activeRelays: Int, rank: Int) -> Int {
        let relays = max(activeRelays, 1)
        return partitions / relays + (min(max(rank, 0), relays - 1) < partitions % relays ? 1 : 0)
    }
}

/// Keeps this relay's partition leases: renews them every `ttl / 3`, takes free or expired
/// partitions up to its share (`LeaseBalancer`), hands back extras when more relays join, and drops everything
/// once it has not been able to renew for a whole TTL (another relay may own them by then). A
/// failed round is tried again soon instead of a third of a TTL later, so a single failed renewal
/// costs no lease.
///
/// Partitions move within a few rounds when relays start together, and within a third of a TTL
/// when one joins running relays: extras are handed back as soon as the relay has started a pass
/// without them (so no batch of theirs is in flight), and a relay below its share while the others
/// hold more than theirs tries again every `ttl / 20` until it has it (so do all in their first
/// third of a TTL, when they may not have seen one another yet).
public final class LeaseManager: Service {
    public struct Configuration: Sendable {
        public var owner: String
        public var partitions: Int
        public var ttl: Duration

        public init(owner: String, partitions: Int = 16, ttl: Duration = .seconds(10)) {
            self.owner = owner
            self.partitions = partitions
            self.ttl = ttl
        }
    }

    public let configuration: Configuration
    private let store: any LeaseStore
    private let logger: Logger
    private let state: Mutex<State>

    struct State {
        var held: [PartitionLease] = []
        /// Partitions to hand back: no longer fetched, released at the next round (so a batch
        /// in flight can still be marked).
        var draining: Set<Int> = []
        /// A pass has started since `draining` was set: none of those partitions is in flight.
        var drainedPassStarted = false
        /// A pass is under way (from `leasesForPass` to `passEnded`).
        var passActive = false
        /// Partitions are moving (below its share while other relays hold more than theirs, or
        /// in the first third of a TTL): rounds come every TTL/20.
        var rebalancing = false
        var firstRound: ContinuousClock.Instant?
        var lastRenewal: ContinuousClock.Instant?
        var activeRelays = 1
        /// How many partitions to hold, from the last round (`LeaseBalancer`); every one before
        /// the first round.
        var share: Int
    }

    public init(store: any LeaseStore, configuration: Configuration, logger: Logger) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
        state = Mutex(State(share: configuration.partitions))
    }

    /// The leases this relay may use right now: none once renewal has failed for a TTL.
    public var current: [PartitionLease] {
        state.withLock { state in
            guard let last = state.lastRenewal, ContinuousClock.now - last < configuration.ttl else { return [] }
            return state.held.filter { !state.draining.contains($0.partition) }
        }
    }

    public var activeRelays: Int { state.withLock { $0.activeRelays } }

    /// Whether `lease` is held for long enough to publish a batch under it, set aside for
    /// hand-back or not (a pass that began with it may still use it): not lost, and renewed
    /// within the last two thirds of the TTL, so at least a third is left, the time a pass is
    /// given (`RelayConfiguration.passTarget`). A lease whose renewals lag (a busy store) is not
    /// published under until a renewal lands: another relay may take it over when it runs out,
    /// and would publish the same events while this relay's batch is still unmarked.
    public func isHeld(_ lease: PartitionLease) -> Bool {
        state.withLock { state in
            guard let last = state.lastRenewal, ContinuousClock.now - last < configuration.ttl - configuration.ttl / 3 else { return false }
            return state.held.contains(lease)
        }
    }

    /// The leases for the pass that starts now. The relay runs one pass at a time, so partitions
    /// set aside before this call are in no batch any more and can be handed back at once.
    public func leasesForPass() -> [PartitionLease] {
        state.withLock { state in
            if !state.draining.isEmpty { state.drainedPassStarted = true }
            state.passActive = true
        }
        return current
    }

    public func passEnded() {
        state.withLock { $0.passActive = false }
    }

    /// Forgets partitions whose fenced write was refused (another relay owns them now).
    public func lost(_ partitions: Set<Int>) {
        guard !partitions.isEmpty else { return }
        state.withLock { $0.held.removeAll { partitions.contains($0.partition) } }
        logger.warning("lease lost: writes were fenced", metadata: [LogKey.outboxPartitions: "\(partitions.sorted())"])
    }

    /// One heartbeat / renew / balance round. Rounds run one at a time: by `run()`, or (before
    /// it runs, and in tests) by the caller.
    public func tick() async throws {
        let (held, draining, share, free) = state.withLock { ($0.held, $0.draining, $0.share, $0.drainedPassStarted || !$0.passActive) }
        // Extras are handed back only once no pass holds a batch of theirs: a pass longer than the
        // wait (slow confirms, a blocked broker, a large batch) keeps them until it ends, or a
        // joining relay would publish the same pending events at the same time.
        let release = free ? held.filter { draining.contains($0.partition) } : []
        let keeping = held.count - release.count
        let want = max(share - keeping, 0)
        let started = ContinuousClock.now
        let round = try await store.round(owner: configuration.owner, held: held, release: release, want: want, ttl: configuration.ttl)
        let before = Set(held.map(\.partition))
        let after = Set(round.held.map(\.partition))
        state.withLock {
            $0.held = round.held.sorted()
            $0.activeRelays = round.activeRelays
            // Measured from before the round: the store's expiry started no later than that.
            $0.lastRenewal = started
            // More than its share (a relay joined): stop fetching the extras now, hand them back
            // at the next round, which comes once a pass has started without them.
            let partitions = configuration.partitions
            let share = LeaseBalancer.share(partitions: partitions, activeRelays: round.activeRelays, rank: round.rank)
            $0.share = share
            let draining = Set($0.held.suffix(max($0.held.count - share, 0)).map(\.partition))
            // Partitions set aside earlier and still held stay set aside: a pass that started
            // since then holds none of them, which stays true.
            if !draining.isSubset(of: $0.draining) || draining.isEmpty { $0.drainedPassStarted = false }
            $0.draining = draining
            // Relays started together may not see one another in their first round: the rounds of
            // the first third of a TTL come often too.
            let firstRound = $0.firstRound ?? started
            $0.firstRound = firstRound
            $0.rebalancing =
                started - firstRound < configuration.ttl / 3
                || $0.held.count < share && round.heldByOthers > partitions - share
        }
        if before != after {
            logger.info(
                "partition leases changed",
                metadata: [
                    LogKey.outboxPartitions: "\(round.held.sorted().map(\.description))", LogKey.outboxRelays: "\(round.activeRelays)",
                    LogKey.outboxGained: "\(after.subtracting(before).sorted())",
                    LogKey.outboxReleasedOrLost: "\(before.subtracting(after).sorted())",
                ])
        }
    }

    public func run() async throws {
        var failures = 0
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await tick()
                failures = 0
            } catch {
                failures += 1
                logger.warning("lease renewal failed", metadata: [LogKey.error: "\(error)", LogKey.relayFailedRounds: "\(failures)"])
            }
            await waitForNextRound(failures == 0 ? roundInterval : Self.retryDelay(ttl: configuration.ttl, failures: failures))
        }
        // Released outside the (possibly cancelled) task, so the database calls still run.
        await Task { await self.resign() }.value
    }

    /// A third of the TTL; a twentieth (at least 100 ms) while partitions move between relays.
    var roundInterval: Duration {
        state.withLock { $0.rebalancing } ? max(configuration.ttl / 20, .milliseconds(100)) : configuration.ttl / 3
    }

    /// Extras set aside by the last round that no pass holds any more: the next round can hand
    /// them back now.
    var handBackReady: Bool { state.withLock { !$0.draining.isEmpty && $0.drainedPassStarted } }

    /// Sleeps `delay`, or less: with extras to hand back, until the relay has started a pass
    /// without them.
    private func waitForNextRound(_ delay: Duration) async {
        let deadline = ContinuousClock.now + delay
        while !Task.isCancelled && ContinuousClock.now < deadline && !handBackReady {
            let handingBack = state.withLock { !$0.draining.isEmpty }
            try? await Task.sleep(until: handingBack ? min(deadline, .now + .milliseconds(20)) : deadline)
        }
    }

    /// The wait before trying a failed round again: short (TTL/20, doubling, at most TTL/6), so
    /// that one failed renewal, or a few, cost no lease; the leases stay usable until one TTL
    /// after the last successful round.
    static func retryDelay(ttl: Duration, failures: Int) -> Duration {
        let first = max(ttl / 20, .milliseconds(20))
        return min(first * (1 << min(max(failures - 1, 0), 4)), max(ttl / 6, first))
    }

    /// Releases every lease so another relay can take over at once.
    public func resign() async {
        let held = state.withLock { state -> [PartitionLease] in
            defer { state.held = [] }
            return state.held
        }
        do {
            try await store.resign(owner: configuration.owner, leases: held)
            logger.info("leases released", metadata: [LogKey.outboxPartitions: "\(held.map(\.partition))"])
        } catch {
            logger.warning("could not release leases; they expire by themselves", metadata: [LogKey.error: "\(error)"])
        }
    }
}
