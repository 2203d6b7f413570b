import Foundation
import Hummingbird
import HummingbirdTesting
import Outbox
import OutboxAMQP
import OutboxConsole
import OutboxMongo
import OutboxOps
import Testing

/// The operator console's API and pages over a real outbox: roles, CSRF, previews, the audit
/// trail, and actions that touch only what was selected.
@Suite("Operator console", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct ConsoleTests {
    static let viewerToken = "viewer-token-0123456789"
    static let operatorToken = "operator-token-0123456789"
    static let tokens = "# console tokens\nviewer:\(viewerToken)\noperator:alice:\(operatorToken)\n"

    func console(_ f: Fixture) throws -> Console {
        Console(
            admin: OutboxAdmin(pool: f.pool), tokens: try ConsoleTokens(parsing: Self.tokens, setting: "tokens"), secureCookies: true,
            throttle: LoginThrottle(maximumDelay: .seconds(1)), logger: f.logger)
    }

    func bearer(_ token: String, json: Bool = false) -> HTTPFields {
        var fields: HTTPFields = [.authorization: "Bearer \(token)"]
        if json { fields[.contentType] = "application/json" }
        return fields
    }

    func body(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    func json(_ response: TestResponse) throws -> JSONValue { try JSONValue.parse(Array(response.body.readableBytesView)) }

    /// Parks events with the given error, as a relay or an operator would have.
    func park(_ f: Fixture, _ ids: [String], error: String) async throws {
        try await f.pool.withConnection {
            try $0.collection("outbox").updateMany(
                ["_id": ["$in": .array(ids.map { .string($0) })]],
                ["$set": ["status": "parked", "lastError": .string(error), "parkedAt": .date(Date())]])
        }
    }

    @Test("roles: no token and a wrong one get 401 (the wrong one slowed), a viewer reads but gets 403 for an action")
    func roles() async throws {
        try await Fixture.with { f in
            let ids = try await f.appendEvents([f.event(aggregate: "r-1")])
            try await park(f, ids, error: "schema: data.total missing")
            let app = Application(router: try console(f).router())
            try await app.test(.router) { client in
                let anonymous = try await client.execute(uri: "/api/events?status=parked", method: .get)
                #expect(anonymous.status == .unauthorized)
                #expect(try json(anonymous)["error"] != nil, "a 401 says why in JSON")
                let started = ContinuousClock.now
                let wrong = try await client.execute(uri: "/api/status", method: .get, headers: bearer("not-a-token-of-ours-at-all"))
                #expect(wrong.status == .unauthorized)
                #expect(ContinuousClock.now - started >= .milliseconds(900), "a wrong token is answered only after a wait")
                let read = try await client.execute(uri: "/api/events?status=parked", method: .get, headers: bearer(Self.viewerToken))
                #expect(read.status == .ok)
                guard case .array(let events)? = try json(read)["events"] else {
                    Issue.record("no events array")
                    return
                }
                #expect(events.count == 1)
                #expect(events.first?["id"] == .string(ids[0]) && events.first?["status"] == .string("parked"))
                #expect(events.first?["lastError"] == .string("schema: data.total missing"))
                let act = try await client.execute(
                    uri: "/api/events/unpark", method: .post, headers: bearer(Self.viewerToken, json: true), body: body(#"{"ids":["\#(ids[0])"]}"#))
                #expect(act.status == .forbidden)
            }
            #expect(try await f.count("outbox", ["status": "parked"]) == 1, "a viewer's action changed nothing")
        }
    }

    @Test("a group's unpark touches only that group; the preview changes nothing; the audit trail names the actor; the relay delivers them")
    func groupUnpark() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("all")
            let ids = try await f.appendEvents((0..<6).map { f.event(aggregate: "g-\($0)") })
            try await park(f, Array(ids[0..<3]), error: "unroutable: no binding for order.eu")
            try await park(f, Array(ids[3..<5]), error: "body too large")
            let app = Application(router: try console(f).router())
            try await app.test(.router) { client in
                let groups = try json(try await client.execute(uri: "/api/groups?status=parked", method: .get, headers: bearer(Self.viewerToken)))
                guard case .array(let rows)? = groups["groups"] else {
                    Issue.record("no groups")
                    return
                }
                #expect(rows.map { $0["lastError"] } == [.string("unroutable: no binding for order.eu"), .string("body too large")])
                #expect(rows.map { $0["count"] } == [.number("3"), .number("2")])
                let select = #""status":"parked","lastError":"unroutable: no binding for order.eu""#
                let preview = try await client.execute(
                    uri: "/api/events/unpark", method: .post, headers: bearer(Self.operatorToken, json: true),
                    body: body("{\(select),\"dryRun\":true}"))
                #expect(preview.status == .ok)
                #expect(try json(preview)["matched"] == .number("3") && json(preview)["changed"] == .number("0"))
                #expect(try await f.count("outbox", ["status": "parked"]) == 5, "a preview changes nothing")
                let done = try await client.execute(
                    uri: "/api/events/unpark", method: .post, headers: bearer(Self.operatorToken, json: true), body: body("{\(select)}"))
                #expect(try json(done)["changed"] == .number("3"))
            }
            #expect(try await f.count("outbox", ["status": "parked", "lastError": "body too large"]) == 2, "the other group stays parked")
            let publisher = f.makePublisher()
            try await f.drain(try await f.makeRelay(store: f.makeStore(), publisher: publisher))
            await publisher.close()
            #expect(Set(try await f.admin.drain(queue).compactMap(\.messageId)) == Set(Array(ids[0..<3]) + [ids[5]]))
            let trail = try await AuditTrail(pool: f.pool).recent()
            #expect(trail.map(\.action) == ["unpark", "unpark"])
            #expect(trail.map(\.dryRun) == [false, true])
            #expect(trail.allSatisfy { $0.actor == "alice" && $0.role == "operator" && $0.via == "console api" })
            #expect(trail.first?.selection["lastError"] == "unroutable: no binding for order.eu" && trail.first?.changed == 3)
        }
    }

    @Test("the backlog by type and by partition, and pending events that failed grouped by their error, in one pass")
    func backlog() async throws {
        try await Fixture.with { f in
            let ids = try await f.appendEvents(
                (0..<5).map { f.event(aggregate: "k-\($0)", type: $0 < 3 ? "OrderCreated" : "OrderPaid") })
            try await f.pool.withConnection {
                try $0.collection("outbox").updateMany(
                    ["_id": ["$in": .array(ids.prefix(2).map { .string($0) })]],
                    ["$set": ["lastError": "NOT_FOUND - no exchange 'eu'", "attempts": 2]])
            }
            try await Application(router: try console(f).router()).test(.router) { client in
                let backlog = try json(try await client.execute(uri: "/api/backlog", method: .get, headers: bearer(Self.viewerToken)))
                guard case .array(let types)? = backlog["byType"], case .array(let partitions)? = backlog["byPartition"],
                    case .array(let failing)? = backlog["failing"]
                else {
                    Issue.record("\(backlog)")
                    return
                }
                #expect(types.map { $0["type"] } == [.string("OrderCreated"), .string("OrderPaid")])
                #expect(types.map { $0["count"] } == [.number("3"), .number("2")])
                #expect(partitions.reduce(0) { $0 + (Int($1["count"].flatMap { if case .number(let n) = $0 { n } else { nil } } ?? "0") ?? 0) } == 5)
                #expect(failing.count == 1 && failing.first?["lastError"] == .string("NOT_FOUND - no exchange 'eu'"))
                #expect(failing.first?["count"] == .number("2") && failing.first?["types"] == .array([.string("OrderCreated")]))
            }
        }
    }

    @Test("bad requests get a 4xx with a JSON message and change nothing")
    func badRequests() async throws {
        try await Fixture.with { f in
            let ids = try await f.appendEvents([f.event(aggregate: "b-1")])
            try await park(f, ids, error: "x")
            let app = Application(router: try console(f).router())
            try await app.test(.router) { client in
                let cases: [(String, HTTPRequest.Method, String?, HTTPResponse.Status, String)] = [
                    ("/api/events/unpark", .post, "{not json", .badRequest, "not JSON"),
                    ("/api/events/unpark", .post, "{}", .badRequest, "select events"),
                    ("/api/events/unpark", .post, #"{"ids":[1]}"#, .badRequest, "ids holds strings"),
                    ("/api/events/unpark", .post, #"{"ids":["a"],"dryRun":"yes"}"#, .badRequest, "dryRun"),
                    ("/api/events/purge", .post, #"{"olderThan":"soon"}"#, .badRequest, "olderThan"),
                    ("/api/events?status=stuck", .get, nil, .badRequest, "status is one of"),
                    ("/api/events?limit=0", .get, nil, .badRequest, "limit"),
                    ("/api/events/no-such-id", .get, nil, .notFound, "no event has id"),
                ]
                for (uri, method, text, status, message) in cases {
                    let response = try await client.execute(
                        uri: uri, method: method, headers: bearer(Self.operatorToken, json: true), body: text.map(body))
                    #expect(response.status == status, "\(method) \(uri) \(text ?? "")")
                    guard case .string(let error)? = try? json(response)["error"] else {
                        Issue.record("\(uri): no JSON error")
                        continue
                    }
                    #expect(error.contains(message), "\(uri): \(error)")
                }
                let plain = try await client.execute(
                    uri: "/api/events/unpark", method: .post, headers: bearer(Self.operatorToken), body: body(#"{"ids":["\#(ids[0])"]}"#))
                #expect(plain.status == .unsupportedMediaType, "an action is JSON only (a cross-site form cannot send it)")
            }
            #expect(try await f.count("outbox", ["status": "parked"]) == 1)
        }
    }

    @Test("pages: sign in sets an HttpOnly SameSite=Strict Secure cookie; an action without the CSRF token is refused; preview, then confirm")
    func pages() async throws {
        try await Fixture.with { f in
            let ids = try await f.appendEvents((0..<2).map { f.event(aggregate: "p-\($0)") })
            try await park(f, ids, error: "exchange <orders> not found")
            let app = Application(router: try console(f).router())
            try await app.test(.router) { client in
                #expect(try await client.execute(uri: "/", method: .get).headers[.location] == "/login", "signed out: to the sign-in page")
                let form: HTTPFields = [.contentType: "application/x-www-form-urlencoded"]
                let refused = try await client.execute(uri: "/login", method: .post, headers: form, body: body("token=wrong-token-guess-123"))
                #expect(refused.status == .unauthorized && refused.headers[.setCookie] == nil)
                let login = try await client.execute(uri: "/login", method: .post, headers: form, body: body("token=\(Self.operatorToken)"))
                #expect(login.status == .seeOther)
                let setCookie = login.headers[.setCookie] ?? ""
                #expect(setCookie.contains("HttpOnly") && setCookie.contains("SameSite=Strict") && setCookie.contains("Secure"), "\(setCookie)")
                let cookie = String(setCookie.prefix { $0 != ";" })
                var signedIn = form
                signedIn[.cookie] = cookie
                let overview = String(buffer: try await client.execute(uri: "/", method: .get, headers: signedIn).body)
                #expect(overview.contains("exchange &lt;orders&gt; not found"), "the group, escaped")
                #expect(!overview.contains("<orders>"), "nothing from a document is put in the page unescaped")
                guard let csrfRange = overview.range(of: #"name="csrf" value=""#) else {
                    Issue.record("no CSRF field on the overview")
                    return
                }
                let csrf = String(overview[csrfRange.upperBound...].prefix { $0 != "\"" })
                let group = "status=parked&lastError=exchange+%3Corders%3E+not+found"
                let forged = try await client.execute(uri: "/actions/unpark", method: .post, headers: signedIn, body: body(group))
                #expect(forged.status == .forbidden, "a form without the session's CSRF token is refused")
                let viaAPI = try await client.execute(
                    uri: "/api/events/unpark", method: .post, headers: [.cookie: cookie, .contentType: "application/json"],
                    body: body(#"{"ids":["\#(ids[0])"]}"#))
                #expect(viaAPI.status == .forbidden, "the API by cookie needs X-CSRF-Token too")
                #expect(try await f.count("outbox", ["status": "parked"]) == 2)
                let preview = String(
                    buffer: try await client.execute(uri: "/actions/unpark", method: .post, headers: signedIn, body: body("csrf=\(csrf)&\(group)"))
                        .body)
                #expect(preview.contains("2 event(s) would be unparked"), "\(preview)")
                #expect(try await f.count("outbox", ["status": "parked"]) == 2, "a preview changes nothing")
                let done = String(
                    buffer: try await client.execute(
                        uri: "/actions/unpark", method: .post, headers: signedIn, body: body("csrf=\(csrf)&\(group)&confirm=yes")
                    ).body)
                #expect(done.contains("2 of 2 event(s) unparked"), "\(done)")
                let audit = String(buffer: try await client.execute(uri: "/audit", method: .get, headers: signedIn).body)
                #expect(audit.contains("alice") && audit.contains("console page"))
            }
            #expect(try await f.count("outbox", ["status": "parked"]) == 0)
            #expect(try await AuditTrail(pool: f.pool).recent().map(\.dryRun) == [false, true])
        }
    }

    @Test("dead letters: grouped by reason per queue; a group's requeue moves only that group back to the consumer's queue, audited")
    func deadLetters() async throws {
        try await Fixture.with { f in
            let queue = try await f.queue("inventory", bindings: [])
            let deadLetterQueue = try await f.queue("inventory.dlq", bindings: [])
            for (id, reason) in [("d-1", "PermanentFailure: no such SKU"), ("d-2", "PermanentFailure: no such SKU"), ("d-3", "malformed body")] {
                let properties = AMQPProperties(
                    contentType: "application/json", headers: ["x-error": .string(reason), "x-consumer": .string("inventory")], deliveryMode: 2,
                    messageId: id, type: "OrderCreated")
                #expect(
                    await f.admin.publishConfirmed(exchange: "", routingKey: deadLetterQueue, properties: properties, body: Array("{}".utf8))
                        == .acked)
            }
            let console = Console(
                admin: OutboxAdmin(pool: f.pool), tokens: try ConsoleTokens(parsing: Self.tokens, setting: "tokens"),
                deadLetterQueues: [DeadLetters(queue: queue, amqp: f.amqp, logger: f.logger)], logger: f.logger)
            try await Application(router: console.router()).test(.router) { client in
                let listed = try json(try await client.execute(uri: "/api/dead-letters", method: .get, headers: bearer(Self.viewerToken)))
                guard case .array(let queues)? = listed["queues"], case .array(let groups)? = queues.first?["groups"] else {
                    Issue.record("no queues: \(listed)")
                    return
                }
                #expect(queues.first?["queue"] == .string(queue) && queues.first?["count"] == .number("3"))
                #expect(groups.map { $0["reason"] } == [.string("PermanentFailure: no such SKU"), .string("malformed body")])
                #expect(groups.map { $0["count"] } == [.number("2"), .number("1")])
                let select = #"{"queue":"\#(queue)","reason":"PermanentFailure: no such SKU""#
                let viewer = try await client.execute(
                    uri: "/api/dead-letters/requeue", method: .post, headers: bearer(Self.viewerToken, json: true), body: body(select + "}"))
                #expect(viewer.status == .forbidden)
                let preview = try json(
                    try await client.execute(
                        uri: "/api/dead-letters/requeue", method: .post, headers: bearer(Self.operatorToken, json: true),
                        body: body(select + #","dryRun":true}"#)))
                #expect(preview["matched"] == .number("2") && preview["changed"] == .number("0"))
                let done = try json(
                    try await client.execute(
                        uri: "/api/dead-letters/requeue", method: .post, headers: bearer(Self.operatorToken, json: true), body: body(select + "}")))
                #expect(done["changed"] == .number("2"), "\(done)")
                let unknown = try await client.execute(
                    uri: "/api/dead-letters/purge", method: .post, headers: bearer(Self.operatorToken, json: true),
                    body: body(#"{"queue":"elsewhere","reason":"x"}"#))
                #expect(unknown.status == .badRequest)
            }
            #expect(await eventually { (try? await f.admin.messageCount(queue)) == 2 })
            #expect(await eventually { (try? await f.admin.messageCount(deadLetterQueue)) == 1 }, "the other group stays")
            let trail = try await AuditTrail(pool: f.pool).recent()
            #expect(trail.map(\.action) == ["dlq requeue", "dlq requeue"] && trail.map(\.changed) == [2, 0])
            #expect(trail.first?.selection["queue"] == .string(queue))
        }
    }

    @Test("with a certificate and key the console serves HTTPS only and its session cookie is Secure; a key without a certificate fails the start")
    func tls() async throws {
        try await Fixture.with { f in
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("console-tls-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let (certificate, key, tokens) = (
                directory.appendingPathComponent("cert.pem"), directory.appendingPathComponent("key.pem"), directory.appendingPathComponent("tokens")
            )
            let made = try await Programs.run(
                "/usr/bin/openssl",
                [
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1",
                    "-keyout", key.path, "-out", certificate.path,
                ], environment: ["PATH": "/usr/bin:/bin"])
            #expect(made.status == 0, "\(made.errors)")
            try Self.tokens.write(to: tokens, atomically: true, encoding: .utf8)
            let keyOnly = try await Programs.product(
                "outboxctl", ["console", "--listen", "127.0.0.1:0"],
                environment: Programs.environment(f, ["OUTBOX_CONSOLE_TOKENS_FILE": tokens.path, "OUTBOX_CONSOLE_TLS_KEY_FILE": key.path]))
            #expect(keyOnly.status == 78 && keyOnly.errors.contains("OUTBOX_CONSOLE_TLS_CERT_FILE"), "\(keyOnly.errors)")

            let port = unusedPort()
            let console = try Program(
                "outboxctl", ["console", "--listen", "127.0.0.1:\(port)", "--tls-cert-file", certificate.path, "--tls-key-file", key.path],
                environment: Programs.environment(f, ["OUTBOX_CONSOLE_TOKENS_FILE": tokens.path]), label: "console-tls")
            defer { kill(console.pid, SIGKILL) }
            // Python's urllib, trusting only the test's certificate: HTTPS answers, the sign-in's
            // cookie is Secure, and plain HTTP gets nothing.
            let client = """
                import ssl, sys, time, urllib.request, urllib.error
                url, ca, token = sys.argv[1], sys.argv[2], sys.argv[3]
                context = ssl.create_default_context(cafile=ca)
                for _ in range(100):
                    try:
                        urllib.request.urlopen(url + "/health", context=context, timeout=2); break
                    except (urllib.error.URLError, ConnectionError): time.sleep(0.1)
                class Keep(urllib.request.HTTPRedirectHandler):
                    def redirect_request(self, *args): return None
                opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), Keep)
                try: opener.open(url + "/login", data=("token=" + token).encode(), timeout=5)
                except urllib.error.HTTPError as redirect: print("cookie:", redirect.headers.get("Set-Cookie"))
                try: urllib.request.urlopen(url.replace("https", "http") + "/health", timeout=2); print("plain: answered")
                except Exception: print("plain: refused")
                """
            let result = try await Programs.run(
                Programs.python, ["-c", client, "https://127.0.0.1:\(port)", certificate.path, Self.viewerToken],
                environment: ["PATH": "/usr/bin:/bin"],
                timeout: .seconds(60))
            #expect(result.status == 0, "\(result.errors) \(console.output)")
            #expect(result.output.contains("cookie: outbox_console_session=") && result.output.contains("Secure"), "\(result.output)")
            #expect(result.output.contains("plain: refused"), "\(result.output)")
            #expect(console.output.contains("https://127.0.0.1:\(port)/"), "\(console.output)")
        }
    }

    @Test(
        "outboxctl console refuses to start without tokens, unauthenticated beyond loopback, or with several outboxes and none chosen; audit lists actions"
    )
    func command() async throws {
        try await Fixture.with { f in
            let environment = Programs.environment(f)
            let noTokens = try await Programs.product("outboxctl", ["console", "--listen", "127.0.0.1:0"], environment: environment)
            #expect(noTokens.status == 78 && noTokens.errors.contains("OUTBOX_CONSOLE_TOKENS_FILE"), "\(noTokens.errors)")
            let open = try await Programs.product("outboxctl", ["console", "--listen", "0.0.0.0:0", "--no-auth"], environment: environment)
            #expect(open.status == 78 && open.errors.contains("--no-auth") && open.errors.contains("loopback"), "\(open.errors)")
            // A console serves one outbox: of several named, --source chooses.
            let several = try await Programs.product(
                "outboxctl", ["console", "--listen", "127.0.0.1:0", "--no-auth"],
                environment: environment.merging(["OUTBOX_SOURCES": "\(f.database).outbox,\(f.database)_2.outbox"]) { $1 })
            #expect(several.status == 78 && several.errors.contains("choose one with --source"), "\(several.errors)")
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("tokens-\(UUID().uuidString)")
            try "viewer:short\n".write(to: file, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(at: file) }
            let weak = try await Programs.product(
                "outboxctl", ["console", "--listen", "127.0.0.1:0"],
                environment: environment.merging(["OUTBOX_CONSOLE_TOKENS_FILE": file.path]) { $1 })
            #expect(weak.status == 78 && weak.errors.contains("at least 16") && !weak.errors.contains("short"), "\(weak.errors)")

            try await AuditTrail(pool: f.pool).record(
                AuditEntry(
                    actor: "alice", role: "operator", action: "park", selection: ["ids": ["e-1"]], matched: 1, changed: 1, dryRun: false,
                    via: "console api"))
            let listed = try await Programs.product("outboxctl", ["audit"], environment: environment)
            #expect(listed.status == 0 && listed.output.contains("alice") && listed.output.contains("park"), "\(listed.output) \(listed.errors)")
        }
    }
}
