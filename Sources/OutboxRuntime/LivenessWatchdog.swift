import Synchronization

/// Tells whether a loop still makes progress: live while its last completed iteration (successful
/// or failed) is at most `timeout` ago. A process whose loop hangs (a call that never returns, a
/// deadlock) keeps serving HTTP, so "the process answers" alone says nothing; this does.
///
/// Pure logic: the clock is injected (monotonic time since some origin), so tests drive it.
public final class LivenessWatchdog: Sendable {
    /// What `/health/live` reports.
    public enum Status: Equatable, Sendable {
        case live
        /// No iteration completed for `since` (longer than the timeout).
        case stalled(since: Duration)
    }

    public let timeout: Duration
    private let now: @Sendable () -> Duration
    /// The clock reading of the last iteration (or of the start).
    private let last: Mutex<Duration>

    /// The timeout counts from now until the first `iterationCompleted()`.
    public init(timeout: Duration, now: @escaping @Sendable () -> Duration = LivenessWatchdog.monotonicNow) {
        precondition(timeout > .zero, "the liveness timeout must be positive")
        self.timeout = timeout
        self.now = now
        self.last = Mutex(now())
    }

    /// The loop starts (again) now: the timeout counts from here, e.g. after a long start-up.
    public func start() {
        let reading = now()
        last.withLock { $0 = reading }
    }

    /// One iteration of the loop ended, whatever its outcome.
    public func iterationCompleted() {
        let reading = now()
        last.withLock { $0 = max($0, reading) }
    }

    public var status: Status {
        let elapsed = now() - last.withLock { $0 }
        return elapsed > timeout ? .stalled(since: elapsed) : .live
    }

    private static let origin = ContinuousClock.now

    /// Monotonic time since the first use in this process.
    @Sendable public static func monotonicNow() -> Duration { ContinuousClock.now - origin }
}
