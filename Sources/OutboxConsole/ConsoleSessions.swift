import Foundation
import Synchronization

/// The pages' logins: a random session id in an `HttpOnly`, `SameSite=Strict` cookie, and a CSRF
/// token per session that every form carries. Kept in memory: a restart logs everyone out.
public final class ConsoleSessions: Sendable {
    public struct Session: Sendable {
        public var principal: ConsolePrincipal
        /// The token each form action of this session must carry.
        public var csrf: String
        public var expires: Date
    }

    public static let cookieName = "outbox_console_session"
    /// How long a login lasts.
    public let lifetime: Duration
    private let sessions = Mutex<[String: Session]>([:])

    public init(lifetime: Duration = .seconds(8 * 3600)) { self.lifetime = lifetime }

    /// Opens a session; returns its id (the cookie's value).
    public func open(for principal: ConsolePrincipal, now: Date = Date()) -> (id: String, session: Session) {
        let id = Self.randomToken()
        let session = Session(principal: principal, csrf: Self.randomToken(), expires: now.addingTimeInterval(Double(lifetime.components.seconds)))
        sessions.withLock { all in
            all = all.filter { $0.value.expires > now }
            all[id] = session
        }
        return (id, session)
    }

    public func session(_ id: String, now: Date = Date()) -> Session? {
        sessions.withLock { all in
            guard let session = all[id] else { return nil }
            guard session.expires > now else {
                all[id] = nil
                return nil
            }
            return session
        }
    }

    public func close(_ id: String) { _ = sessions.withLock { $0.removeValue(forKey: id) } }

    /// 32 random bytes from the system's secure generator, as hex.
    static func randomToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: .min ... .max, using: &generator)) }.joined()
    }
}

/// Slows failed logins: each failure waits a second per failure in the last minute (at most
/// `maximumDelay`), across all clients, so guessing tokens costs time whoever guesses.
public final class LoginThrottle: Sendable {
    private let failures = Mutex<[Date]>([])
    let maximumDelay: Duration

    public init(maximumDelay: Duration = .seconds(5)) { self.maximumDelay = maximumDelay }

    /// Records a failure and waits before the answer goes out.
    public func failed(now: Date = Date()) async {
        let recent = failures.withLock { all in
            all = all.filter { now.timeIntervalSince($0) < 60 } + [now]
            return all.count
        }
        try? await Task.sleep(for: min(.seconds(recent), maximumDelay))
    }
}
