import Synchronization

/// Lets one waiter sleep until signalled or until a timeout, whichever comes first. Signals that
/// arrive while nobody waits are remembered (once), so a wake-up is never lost between polls.
public final class WakeSignal: Sendable {
    private struct State {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
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

    /// Returns when signalled (or a signal was pending) or after `timeout`.
    public func wait(timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withCheckedContinuation { continuation in
                    let resumeNow = self.state.withLock { state -> Bool in
                        if state.pending {
                            state.pending = false
                            return true
                        }
                        state.waiter = continuation
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            }
            group.addTask {
                // Only a timeout that really elapsed wakes the waiter; a cancelled sleep does not.
                if (try? await Task.sleep(for: timeout)) != nil { self.expire() }
            }
            await group.next()
            group.cancelAll()
        }
    }

    /// Resumes the waiter because its time is up, without leaving a pending signal behind.
    private func expire() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }
}
