/// When to try a failed delivery again, and when to give up and park it.
public struct RetryPolicy: Sendable, Equatable {
    /// Attempts (publishes) before an event is parked when its last failure was permanent
    /// (unroutable); transient failures never park it.
    public var maxAttempts: Int
    /// Delay after the first failure; doubles with each further failure.
    public var baseDelay: Duration
    /// Upper bound for the delay.
    public var maxDelay: Duration
    /// Transient failures park an event once it is this old (since it was written); nil, the
    /// default: never, the event stays pending until the broker takes it.
    public var parkTransientAfter: Duration?

    public init(
        maxAttempts: Int = 10, baseDelay: Duration = .milliseconds(500), maxDelay: Duration = .seconds(300), parkTransientAfter: Duration? = nil
    ) {
        self.maxAttempts = maxAttempts
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.parkTransientAfter = parkTransientAfter
    }

    public enum Decision: Sendable, Equatable {
        case retry(after: Duration)
        case park
    }

    /// The decision after `attempts` failed attempts of which the last was `transient` (a nack, a
    /// confirm timeout): the same capped backoff, but not parked, since time will fix it, unless
    /// the event's `age` reached `parkTransientAfter`.
    public func decision(afterAttempts attempts: Int, transient: Bool, age: Duration? = nil) -> Decision {
        guard transient else { return decision(afterAttempts: attempts) }
        if let limit = parkTransientAfter, let age, age >= limit { return .park }
        var generator = SystemRandomNumberGenerator()
        return backoff(afterAttempts: attempts, using: &generator)
    }

    /// The decision after `attempts` failed attempts (1 after the first failure).
    /// The delay is exponential with "equal jitter": half fixed, half random, so retries of
    /// events that failed together spread out instead of hitting the broker at once.
    public func decision<G: RandomNumberGenerator>(afterAttempts attempts: Int, using generator: inout G) -> Decision {
        guard attempts < maxAttempts else { return .park }
        return backoff(afterAttempts: attempts, using: &generator)
    }

    /// A retry after exponential, capped delay with equal jitter.
    public func backoff<G: RandomNumberGenerator>(afterAttempts attempts: Int, using generator: inout G) -> Decision {
        let exponent = min(max(attempts - 1, 0), 30)
        let base = baseDelay * (1 << exponent)
        let capped = min(base, maxDelay)
        let half = capped / 2
        let jitterMs = Int64.random(in: 0...max(half.milliseconds, 0), using: &generator)
        return .retry(after: half + .milliseconds(jitterMs))
    }

    public func decision(afterAttempts attempts: Int) -> Decision {
        var generator = SystemRandomNumberGenerator()
        return decision(afterAttempts: attempts, using: &generator)
    }
}

extension Duration {
    /// Whole milliseconds, rounded down.
    public var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
