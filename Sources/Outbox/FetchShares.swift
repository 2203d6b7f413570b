import Synchronization

/// Shares the batch size between the sources of one relay. While several sources have events due,
/// each fetches at most its share of the limit, so a busy source's store commands (its fetch and
/// its marks) stay short and a quiet source waits less behind them: some stores serve one command
/// at a time. A source counts as busy for `window` after a pass that fetched something.
public final class FetchShares: Sendable {
    private struct State {
        var busySince: [Int: ContinuousClock.Instant] = [:]
        var next = 0
    }

    private let state = Mutex(State())
    private let window: Duration
    private let now: @Sendable () -> ContinuousClock.Instant

    public init(window: Duration = .seconds(1), now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        self.window = window
        self.now = now
    }

    /// A new member (a source's loop); its number for the other calls.
    public func join() -> Int {
        state.withLock { state in
            defer { state.next += 1 }
            return state.next
        }
    }

    /// A pass of `member` ended; `busy` when it fetched something.
    public func passEnded(_ member: Int, busy: Bool) {
        let instant = now()
        state.withLock { state in
            if busy { state.busySince[member] = instant } else { state.busySince[member] = nil }
        }
    }

    /// `member`'s share of `limit`: the limit divided by the members busy lately (itself among
    /// them), at least one event.
    public func share(of limit: Int, for member: Int) -> Int {
        let cutoff = now() - window
        let busy = state.withLock { state in
            state.busySince.filter { $0.key != member && $0.value >= cutoff }.count + 1
        }
        return max(limit / busy, 1)
    }
}
