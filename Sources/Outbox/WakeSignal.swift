import Synchronization

/// Lets one waiter sleep until signalled or until a timeout, whichever comes first. Signals that
/// arrive while nobody waits are remembered (once), so a wake-up is never lost between polls.
public final class WakeSignal: Sendable {
    private struct State {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
        /// Numbers the waits; `expired` holds the last one whose timeout elapsed, so a timeout
        /// that fires before its waiter registered still ends that wait.
        var wait = 0
        var expired = 0
    }

    private let state = Mutex(State())

    public init() {}

    /// True while someone waits (and no signal is pending): a wake-up now would be used at once.
    public var isWaiting: Bool { state.withLock { $0.waiter != nil } }

    public func signal() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.pending = true
            return nil
        }
        waiter?.resume()
    }

    /// Returns when signalled (or a signal was pending), after `timeout`, or once cancelled.
    public func wait(timeout: Duration) async {
        let wait = state.withLock { state -> Int in
            state.wait += 1
            return state.wait
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withCheckedContinuation { continuation in
                    let resumeNow = self.state.withLock { state -> Bool in
                        if state.pending {
                            state.pending = false
                            return true
                        }
                        // The timeout may have fired before this child ran.
                        if state.expired == wait { return true }
                        state.waiter = continuation
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            }
            group.addTask {
                // The time is up, or the wait was cancelled (a shutdown): either ends it. After a
                // signal ended it, this finds no waiter and leaves no signal pending.
                try? await Task.sleep(for: timeout)
                self.expire(wait)
            }
            await group.next()
            group.cancelAll()
        }
    }

    /// Ends wait number `wait` because its time is up, without leaving a pending signal behind.
    private func expire(_ wait: Int) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.expired = wait
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }
}
