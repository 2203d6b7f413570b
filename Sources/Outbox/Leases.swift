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

    public init(held: [PartitionLease], activeRelays: Int) {
        self.held = held
        self.activeRelays = activeRelays
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

/// How many partitions a relay should hold: an even share, rounded up.
public enum LeaseBalancer {
    public static func fairShare(partitions: Int, activeRelays: Int) -> Int {
        let relays = max(activeRelays, 1)
        return (partitions + relays - 1) / relays
    }
}

/// Keeps this relay's partition leases: renews them every `ttl / 3`, takes free or expired
/// partitions up to a fair share, hands back extras when more relays join, and drops everything
/// once it has not been able to renew for a whole TTL (another relay may own them by then). A
/// failed round is tried again soon instead of a third of a TTL later, so a single failed renewal
/// costs no lease.
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
    private let state = Mutex(State())

    struct State {
        var held: [PartitionLease] = []
        /// Partitions to hand back: no longer fetched, released at the next round (so a batch
        /// in flight can still be marked).
        var draining: Set<Int> = []
        var lastRenewal: ContinuousClock.Instant?
        var activeRelays = 1
    }

    public init(store: any LeaseStore, configuration: Configuration, logger: Logger) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
    }

    /// The leases this relay may use right now: none once renewal has failed for a TTL.
    public var current: [PartitionLease] {
        state.withLock { state in
            guard let last = state.lastRenewal, ContinuousClock.now - last < configuration.ttl else { return [] }
            return state.held.filter { !state.draining.contains($0.partition) }
        }
    }

    public var activeRelays: Int { state.withLock { $0.activeRelays } }

    /// Forgets partitions whose fenced write was refused (another relay owns them now).
    public func lost(_ partitions: Set<Int>) {
        guard !partitions.isEmpty else { return }
        state.withLock { $0.held.removeAll { partitions.contains($0.partition) } }
        logger.warning("lease lost: writes were fenced", metadata: ["outbox.partitions": "\(partitions.sorted())"])
    }

    /// One heartbeat / renew / balance round.
    public func tick() async throws {
        let (held, draining, active) = state.withLock { ($0.held, $0.draining, $0.activeRelays) }
        let share = LeaseBalancer.fairShare(partitions: configuration.partitions, activeRelays: active)
        let release = held.filter { draining.contains($0.partition) }
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
            // More than a fair share (a relay joined): stop fetching the extras now, release them next round.
            let fair = LeaseBalancer.fairShare(partitions: configuration.partitions, activeRelays: round.activeRelays)
            $0.draining = Set($0.held.suffix(max($0.held.count - fair, 0)).map(\.partition))
        }
        if before != after {
            logger.info(
                "partition leases changed",
                metadata: [
                    "outbox.partitions": "\(round.held.sorted().map(\.description))", "outbox.relays": "\(round.activeRelays)",
                    "outbox.gained": "\(after.subtracting(before).sorted())", "outbox.released_or_lost": "\(before.subtracting(after).sorted())",
                ])
        }
    }

    public func run() async throws {
        let interval = configuration.ttl / 3
        var failures = 0
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await tick()
                failures = 0
            } catch {
                failures += 1
                logger.warning("lease renewal failed", metadata: ["error": "\(error)", "relay.failed_rounds": "\(failures)"])
            }
            try? await Task.sleep(for: failures == 0 ? interval : Self.retryDelay(ttl: configuration.ttl, failures: failures))
        }
        // Released outside the (possibly cancelled) task, so the database calls still run.
        await Task { await self.resign() }.value
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
            logger.info("leases released", metadata: ["outbox.partitions": "\(held.map(\.partition))"])
        } catch {
            logger.warning("could not release leases; they expire by themselves", metadata: ["error": "\(error)"])
        }
    }
}
