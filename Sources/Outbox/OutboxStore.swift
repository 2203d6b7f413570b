/// A failed delivery and what to do about it.
public struct FailedDelivery: Sendable, Equatable {
    public var id: String
    public var partition: Int
    /// Attempts made so far, this one included.
    public var attempts: Int
    public var error: String
    public var decision: RetryPolicy.Decision
    /// The store's key and first-sight flag of the event (see `OutboxMessage`).
    public var storeKey: [UInt8]
    public var isFirstSight: Bool

    public init(
        id: String, partition: Int, attempts: Int, error: String, decision: RetryPolicy.Decision, storeKey: [UInt8] = [],
        isFirstSight: Bool = false
    ) {
        self.id = id
        self.partition = partition
        self.attempts = attempts
        self.error = error
        self.decision = decision
        self.storeKey = storeKey
        self.isFirstSight = isFirstSight
    }

    public init(_ message: OutboxMessage, attempts: Int, error: String, decision: RetryPolicy.Decision) {
        self.init(
            id: message.id, partition: message.partition, attempts: attempts, error: error, decision: decision,
            storeKey: message.storeKey, isFirstSight: message.isFirstSight)
    }
}

/// Where the relay reads pending events and records what happened to them.
///
/// Every write is fenced: it happens only while the relay still holds the lease of the event's
/// partition with the same epoch. The write methods return the partitions whose lease was no
/// longer held; nothing was written for those.
public protocol OutboxStore: Sendable {
    /// Up to `limit` pending, due events of the leased partitions, at most one per aggregate and
    /// only an aggregate's lowest pending version, in the order they were written.
    func fetchDue(limit: Int, leases: [PartitionLease]) async throws -> [OutboxMessage]
    /// Marks events delivered. Only called with events the broker acked.
    func markDelivered(_ messages: [OutboxMessage], leases: [PartitionLease]) async throws -> Set<Int>
    /// Reschedules or parks events whose delivery failed.
    func markFailed(_ failures: [FailedDelivery], leases: [PartitionLease]) async throws -> Set<Int>
    /// How soon the store wants the next fetch, when sooner than the relay's next poll: e.g. when
    /// a scheduled event comes due, or at once when the last fetch had more to do than it
    /// returned. The relay waits no longer than that. By default nil.
    func nextFetchIn() -> Duration?
}

extension OutboxStore {
    public func nextFetchIn() -> Duration? { nil }
}

/// The leases a relay works under.
public protocol LeaseProvider: Sendable {
    var current: [PartitionLease] { get }
    /// The leases for a pass that starts now (the relay runs one pass at a time); by default
    /// `current`.
    func leasesForPass() -> [PartitionLease]
    /// Called with partitions whose fenced writes were refused.
    func lost(_ partitions: Set<Int>)
    /// Called when the pass that `leasesForPass` began has finished: nothing of it is in flight.
    func passEnded()
    /// Whether `lease` is still this relay's for long enough to publish a batch under it (not
    /// lost, and renewed recently enough); by default, whether `current` holds it.
    func isHeld(_ lease: PartitionLease) -> Bool
}

extension LeaseProvider {
    public func leasesForPass() -> [PartitionLease] { current }
    public func passEnded() {}
    public func isHeld(_ lease: PartitionLease) -> Bool { current.contains(lease) }
}

extension LeaseManager: LeaseProvider {}
