import Foundation
import Synchronization

/// The database server's clock as this process sees it: this machine's clock plus the offset to
/// the server's `localTime`, measured now and then with half the round trip allowed for.
///
/// Every time the relay compares with or writes into the outbox (what is due, retry times, first
/// sights, deliveries, the scan ids it gives) comes from it, so relays whose clocks disagree, with
/// each other or with the writers' clocks near the server's, still agree on what is due and on
/// the order in which events were seen. Leases compare with `$$NOW` on the server itself.
public final class DatabaseClock: Sendable {
    /// How long a measured offset is used before it is measured again.
    public static let remeasureInterval: Duration = .seconds(30)

    private struct State {
        var offset: TimeInterval = 0
        var measured: ContinuousClock.Instant?
    }

    private let state = Mutex(State())

    public init() {}

    /// The database's time now (this machine's until the first measurement).
    public func now() -> Date { Date().addingTimeInterval(offset) }

    /// The database's clock minus this machine's, in seconds, as last measured.
    public var offset: TimeInterval { state.withLock { $0.offset } }

    /// Measures the offset on `connection` unless it was measured within `remeasureInterval`.
    /// A server that gives no `localTime` leaves this machine's clock in use.
    func measureIfStale(on connection: MongoConnection) throws {
        if let measured = state.withLock({ $0.measured }), .now - measured < Self.remeasureInterval { return }
        let sent = Date()
        let reply = try connection.runCommand(["isMaster": 1], database: "admin")
        let received = Date()
        let offset = reply["localTime"]?.dateValue.map { Self.offset(server: $0, sent: sent, received: received) }
        state.withLock { state in
            if let offset { state.offset = offset }
            state.measured = .now
        }
    }

    /// The server's clock minus ours, taking its `localTime` as read halfway between sending and
    /// receiving.
    static func offset(server: Date, sent: Date, received: Date) -> TimeInterval {
        server.timeIntervalSince(sent) - received.timeIntervalSince(sent) / 2
    }
}
