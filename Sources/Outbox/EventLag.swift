import Metrics
import Synchronization

/// Event types as metric labels, bounded: the first `limit` types a process sees get a label
/// each, every later one shares `other`, so writers adding types cannot grow the series without
/// bound. A process has one set (`shared`), sized once at start-up by `configure(limit:)`.
public final class EventTypeLabels: Sendable {
    public static let other = "other"
    /// Labels longer than this are cut (a type is the writer's text).
    static let maxLength = 100
    public static let defaultLimit = 20
    public static let shared = EventTypeLabels(limit: defaultLimit)

    private struct State {
        var limit: Int
        var seen: Set<String> = []
    }
    private let state: Mutex<State>

    public init(limit: Int) { state = Mutex(State(limit: limit)) }

    /// Sets how many types get a label of their own; types seen before keep theirs.
    public func configure(limit: Int) { state.withLock { $0.limit = max(limit, 0) } }

    /// The label for `type`: the type itself while there is room (or it had one already), else
    /// `other`; a message without a type is `other` too.
    public func label(_ type: String?) -> String {
        guard let type, !type.isEmpty else { return Self.other }
        let name = type.count > Self.maxLength ? String(type.prefix(Self.maxLength)) : type
        return state.withLock { state in
            if state.seen.contains(name) { return name }
            guard state.seen.count < state.limit else { return Self.other }
            state.seen.insert(name)
            return name
        }
    }
}

/// The time from an event's occurrence to a point of its delivery (the broker's confirm, a
/// consumer's commit), as a histogram per event type (`EventTypeLabels`): what a delivery SLO is
/// set on. Lags below zero (clocks apart) count as zero.
public final class EventLag: Sendable {
    public let name: String
    private let dimensions: [(String, String)]
    private let labels: EventTypeLabels
    private let timers = Mutex<[String: Timer]>([:])

    public init(name: String, dimensions: [(String, String)] = [], labels: EventTypeLabels = .shared) {
        self.name = name
        self.dimensions = dimensions
        self.labels = labels
    }

    /// Records `nowMilliseconds - occurredAtMilliseconds` for an event of `type`.
    public func record(type: String?, occurredAt: Int64, now: Int64) {
        let label = labels.label(type)
        let timer = timers.withLock { timers in
            if let timer = timers[label] { return timer }
            let timer = Timer(label: name, dimensions: dimensions + [("type", label)])
            timers[label] = timer
            return timer
        }
        timer.recordMilliseconds(max(now - occurredAt, 0))
    }

    /// Removes the histogram of every type recorded so far from the backend.
    public func destroy() {
        let recorded = timers.withLock { timers in
            defer { timers.removeAll() }
            return Array(timers.values)
        }
        for timer in recorded { timer.destroy() }
    }

    /// The buckets of a lag histogram, in seconds: 5 ms to 10 minutes.
    public static let buckets: [Duration] = [
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
        .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30), .seconds(60),
        .seconds(120), .seconds(300), .seconds(600),
    ]
}
