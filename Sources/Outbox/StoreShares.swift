import Synchronization

/// Shares the store between the sources of one relay, for stores that serve one command at a
/// time (SecantusDB here), where a quiet source's commands would otherwise each wait behind a busy
/// one's.
/// - A source is *draining* while its last fetch was full (more is waiting), *quiet* otherwise;
///   until its first pass ends, neither: it yields as a draining one does (its start-up reads, a
///   first backlog sample and the first lookups, may be long), and takes a full share.
///   While a quiet source's store work (a fetch, a mark, any command of its pool) is under way,
///   the draining sources hold their store commands back (`shouldYield`; their pools wait before
///   each command, at most `longestYield` at a time). The quiet source's commands then wait behind the one command in
///   flight at most, instead of behind one of the others' for each of their own.
/// - While several sources drain, each fetches at most its share of the batch size, so that
///   their store commands stay short.
/// - While another source drains, a quiet source starts a pass at most once every `quietInterval`,
///   so that its events share passes (each pass costs the store about the same, whatever it
///   carries) and leave the store to the backlog.
public final class StoreShares: Sendable {
    private struct Member {
        /// The last pass fetched its whole limit; nil before the first pass ended.
        var draining: Bool?
        /// Store work of the member, while quiet, under way (nested or side by side).
        var quietWork = 0
        var lastPassStart: ContinuousClock.Instant?
    }

    private struct State {
        var members: [Int: Member] = [:]
        var next = 0

        func othersDraining(_ member: Int) -> Int {
            members.filter { $0.key != member && $0.value.draining == true }.count
        }
    }

    private let state = Mutex(State())
    private let quietInterval: Duration
    /// The longest a draining source holds one store command back.
    public let longestYield: Duration
    private let now: @Sendable () -> ContinuousClock.Instant

    public init(
        quietInterval: Duration = .milliseconds(100), longestYield: Duration = .seconds(1),
        now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }
    ) {
        self.quietInterval = quietInterval
        self.longestYield = longestYield
        self.now = now
    }

    /// A new member (a source's loop); its number for the other calls.
    public func join() -> Int {
        state.withLock { state in
            defer { state.next += 1 }
            state.members[state.next] = Member()
            return state.next
        }
    }

    /// A member that stops (its source is retired) no longer counts.
    public func leave(_ member: Int) {
        _ = state.withLock { $0.members.removeValue(forKey: member) }
    }

    /// Whether more than one source shares the store.
    public var isShared: Bool { state.withLock { $0.members.count > 1 } }

    /// `member`'s share of `limit`: the limit divided by the sources draining (itself among them),
    /// at least one event.
    public func share(of limit: Int, for member: Int) -> Int {
        max(limit / (state.withLock { $0.othersDraining(member) } + 1), 1)
    }

    /// How long `member` should wait before its next pass: a quiet member while another drains
    /// waits until `quietInterval` after the start of its last pass; otherwise zero.
    public func delayBeforePass(_ member: Int) -> Duration {
        let instant = now()
        return state.withLock { state in
            guard let me = state.members[member], me.draining == false, let last = me.lastPassStart, state.othersDraining(member) > 0 else {
                return .zero
            }
            return max(last + quietInterval - instant, .zero)
        }
    }

    /// `member` starts a pass.
    public func passStarted(_ member: Int) {
        let instant = now()
        state.withLock { $0.members[member]?.lastPassStart = instant }
    }

    /// A pass of `member` ended; `full` when it fetched its whole limit (more is waiting).
    public func passEnded(_ member: Int, full: Bool) {
        state.withLock { $0.members[member]?.draining = full }
    }

    /// Runs store work of `member` (a fetch or a mark, several commands; or one command): while
    /// it runs, if `member` is quiet, the draining members hold their commands back.
    public func storeWork<T>(_ member: Int, _ work: () async throws -> T) async rethrows -> T {
        let quiet = quietWorkStarted(member)
        defer { if quiet { quietWorkEnded(member) } }
        return try await work()
    }

    /// One store command of `member`, as `storeWork`.
    public func storeCommand<T>(_ member: Int, _ command: () throws -> T) rethrows -> T {
        let quiet = quietWorkStarted(member)
        defer { if quiet { quietWorkEnded(member) } }
        return try command()
    }

    private func quietWorkStarted(_ member: Int) -> Bool {
        state.withLock { state in
            guard let me = state.members[member], me.draining == false else { return false }
            state.members[member]?.quietWork += 1
            return true
        }
    }

    private func quietWorkEnded(_ member: Int) {
        state.withLock { $0.members[member]?.quietWork -= 1 }
    }

    /// Whether `member` should hold its next store command back: it drains (or has not ended a
    /// pass yet) and a quiet member's store work is under way.
    public func shouldYield(_ member: Int) -> Bool {
        state.withLock { state in
            guard let me = state.members[member], me.draining != false else { return false }
            return state.members.contains { $0.key != member && $0.value.quietWork > 0 }
        }
    }
}
