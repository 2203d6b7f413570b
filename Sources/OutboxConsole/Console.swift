import Foundation
import Hummingbird
import Logging
import OutboxMongo
import OutboxOps

/// The operator console: a JSON API under `/api` and server-rendered pages, over one outbox.
/// Authentication by tokens (`ConsoleTokens`): `Authorization: Bearer …` for the API, a session
/// cookie for the pages; or none, which `outboxctl console` allows on a loopback address only.
public final class Console: Sendable {
    let admin: OutboxAdmin
    let audit: AuditTrail
    /// The consumers' queues whose dead letters the console shows (none without a broker).
    let deadLetterQueues: [DeadLetters]
    let tokens: ConsoleTokens?
    let sessions: ConsoleSessions
    let throttle: LoginThrottle
    /// Whether cookies carry `Secure`: served over TLS, or reached through a proxy that is.
    let secureCookies: Bool
    let tls: ConsoleTLS?
    /// The forms' CSRF token when there is no login (and so no session to hold one).
    let unauthenticatedCSRF = ConsoleSessions.randomToken()
    let logger: Logger

    public init(
        admin: OutboxAdmin, tokens: ConsoleTokens?, deadLetterQueues: [DeadLetters] = [], tls: ConsoleTLS? = nil, secureCookies: Bool = false,
        sessions: ConsoleSessions = .init(), throttle: LoginThrottle = .init(), logger: Logger
    ) {
        self.tls = tls
        self.admin = admin
        self.deadLetterQueues = deadLetterQueues
        self.audit = AuditTrail(pool: admin.pool)
        self.tokens = tokens
        self.secureCookies = secureCookies || tls != nil
        self.sessions = sessions
        self.throttle = throttle
        self.logger = logger
    }

    /// Every route: the API, the pages, and `/health`.
    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/health") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: "ok\n")))
        }
        addAPI(to: router.group("api"))
        addPages(to: router)
        return router
    }

    /// The HTTP server, for a `ServiceGroup`; `onRunning` gets the port it listens on (useful
    /// with port 0).
    public func application(host: String, port: Int, onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) throws -> some ApplicationProtocol
    {
        Application(
            router: router(), server: try tls.map { try .tls(.http1(), tlsConfiguration: $0.configuration) } ?? .http1(),
            configuration: .init(address: .hostname(host, port: port), serverName: "outbox-console"),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? port) }, logger: logger)
    }

    /// `https` when the console serves TLS itself.
    public var scheme: String { tls == nil ? "http" : "https" }

    /// Who sent the request, by bearer token or session cookie; throws 401 (after the login
    /// throttle's wait for a wrong token) when neither identifies anyone.
    func authenticate(_ request: Request) async throws -> (principal: ConsolePrincipal, session: ConsoleSessions.Session?) {
        guard let tokens else { return (.unauthenticated, nil) }
        if let authorization = request.headers[.authorization] {
            guard authorization.hasPrefix("Bearer "), let principal = tokens.principal(for: String(authorization.dropFirst(7))) else {
                await throttle.failed()
                logger.warning("refused a request with a wrong token", metadata: ["path": .string(request.uri.path)])
                throw ConsoleError(.unauthorized, "the bearer token is not one of OUTBOX_CONSOLE_TOKENS_FILE's")
            }
            return (principal, nil)
        }
        if let id = request.cookies[ConsoleSessions.cookieName]?.value, let session = sessions.session(id) {
            return (session.principal, session)
        }
        throw ConsoleError.unauthenticated
    }

    /// The event's aggregate's events in version order (none without an aggregate id).
    func history(of event: Document) async throws -> [Document] {
        guard let aggregateId = event["aggregateId"]?.stringValue else { return [] }
        return try await admin.history(aggregateId: aggregateId)
    }

    /// The CSRF token forms of this session must carry.
    func csrfToken(of session: ConsoleSessions.Session?) -> String { session?.csrf ?? unauthenticatedCSRF }

    /// Whether `given` is the session's CSRF token, compared in constant time.
    func csrfMatches(_ given: String?, session: ConsoleSessions.Session?) -> Bool {
        Self.csrfMatches(given, expected: csrfToken(of: session))
    }

    static func csrfMatches(_ given: String?, expected: String) -> Bool {
        guard let given else { return false }
        return ConsoleTokens.constantTimeEqual(Array(given.utf8), Array(expected.utf8))
    }
}
