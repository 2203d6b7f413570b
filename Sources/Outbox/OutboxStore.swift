/// A failed delivery and what to do about it.
public struct FailedDelivery: Sendable, Equatable {
    public var id: String
    /// Attempts made so far, this one included.
    public var attempts: Int
    public var error: String
    public var decision: RetryPolicy.Decision

    public init(id: String, attempts: Int, error: String, decision: RetryPolicy.Decision) {
        self.id = id
        self.attempts = attempts
        self.error = error
        self.decision = decision
    }
}

/// Where the relay reads pending events and records what happened to them.
public protocol OutboxStore: Sendable {
    /// Up to `limit` pending events that are due, at most one per aggregate and only an
    /// aggregate's lowest pending version, in the order they were written.
    func fetchDue(limit: Int) async throws -> [OutboxMessage]
    /// Marks events delivered. Only called with ids the broker acked.
    func markDelivered(_ ids: [String]) async throws
    /// Reschedules or parks events whose delivery failed.
    func markFailed(_ failures: [FailedDelivery]) async throws
}
