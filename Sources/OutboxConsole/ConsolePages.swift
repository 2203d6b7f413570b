import Foundation
import Hummingbird
import Outbox
import OutboxMongo
import OutboxOps

/// The server-rendered pages: sign-in, the overview (counts, failure groups, backlog), event lists,
/// one event with its aggregate's history, the audit trail, and the action forms (preview, then
/// confirm). Every form carries the session's CSRF token.
extension Console {
    func addPages(to router: Router<BasicRequestContext>) {
        router.get("/login") { _, _ in self.loginPage() }
        router.post("/login") { request, _ in
            let form = try await Self.form(request)
            guard let tokens = self.tokens else { return Self.redirect("/") }
            guard let principal = tokens.principal(for: form["token"]?.first ?? "") else {
                await self.throttle.failed()
                self.logger.warning("refused a console sign-in with a wrong token")
                return self.loginPage(error: "That token is not one of the console's.", status: .unauthorized)
            }
            let (id, _) = self.sessions.open(for: principal)
            var response = Self.redirect("/")
            response.setCookie(
                Cookie(
                    name: ConsoleSessions.cookieName, value: id, maxAge: Int(self.sessions.lifetime.components.seconds), path: "/",
                    secure: self.secureCookies, httpOnly: true, sameSite: .strict))
            self.logger.notice("signed in to the console", metadata: ["actor": .string(principal.name)])
            return response
        }
        router.post("/logout") { request, _ in
            let form = try await Self.form(request)
            if let id = request.cookies[ConsoleSessions.cookieName]?.value, let session = self.sessions.session(id),
                self.csrfMatches(form["csrf"]?.first, session: session)
            {
                self.sessions.close(id)
            }
            var response = Self.redirect("/login")
            response.setCookie(
                Cookie(
                    name: ConsoleSessions.cookieName, value: "", maxAge: 0, path: "/", secure: self.secureCookies, httpOnly: true, sameSite: .strict))
            return response
        }
        router.get("/") { request, _ in
            try await self.signedIn(request) { principal, csrf in
                async let status = self.admin.status()
                async let parked = self.admin.groups(status: OutboxSchema.Status.parked)
                async let backlog = self.admin.backlog()
                return try await self.overview(principal, csrf, status, parked, backlog)
            }
        }
        router.get("/events") { request, _ in
            try await self.signedIn(request) { principal, csrf in
                let query = request.uri.queryParameters
                let status = try Self.status(query.get("status"))
                let offset = try Self.integer(query.get("offset"), name: "offset", default: 0, range: 0...100_000)
                let filter = EventFilter(
                    status: status, type: query.get("type").flatMap { $0.isEmpty ? nil : $0 },
                    aggregateId: query.get("aggregateId").flatMap { $0.isEmpty ? nil : $0 }, lastError: query.get("lastError"))
                let events = try await self.admin.list(filter, limit: 51, offset: offset)
                return self.eventList(principal, csrf, filter, Array(events.prefix(50)), offset: offset, more: events.count > 50)
            }
        }
        router.get("/events/:id") { request, context in
            try await self.signedIn(request) { principal, csrf in
                let id = try context.parameters.require("id")
                guard let event = try await self.admin.show(id: id) else { throw ConsoleError(.notFound, "no event has id \(id)") }
                let history = try await self.history(of: event)
                return self.eventPage(principal, csrf, id: id, event, history: Array(history.prefix(200)))
            }
        }
        router.get("/audit") { request, _ in
            try await self.signedIn(request) { principal, csrf in
                let entries = try await self.audit.recent(limit: 200)
                let rows = entries.map { entry in
                    [
                        ConsoleHTML.date(entry.at), ConsoleHTML.escape(entry.actor), entry.role, entry.action,
                        ConsoleHTML.escape(ExtendedJSON.render(.document(entry.selection))), String(entry.matched), String(entry.changed),
                        entry.dryRun ? "preview" : "done", ConsoleHTML.escape(entry.via),
                    ]
                }
                return ConsoleHTML.page(
                    title: "Audit trail", principal: principal, csrf: csrf,
                    ConsoleHTML.table(["TIME", "WHO", "ROLE", "ACTION", "SELECTION", "MATCHED", "CHANGED", "", "VIA"], rows, numeric: [5, 6]))
            }
        }
        router.get("/dead-letters") { request, _ in
            try await self.signedIn(request) { principal, csrf in
                self.deadLetterPage(principal, csrf, await self.deadLetterViews())
            }
        }
        router.post("/actions/dead-letters/:action") { request, context in
            try await self.signedIn(request) { principal, csrf in
                let (form, action) = try await Self.postedForm(request, context, csrf: csrf, as: DeadLetterAction.self)
                let ids = Self.ids(form)
                let dryRun = form["confirm"]?.first != "yes"
                let queue = form["queue"]?.first ?? ""
                let result = try await self.perform(
                    action, queue: queue, ids: ids, reason: form["reason"]?.first, dryRun: dryRun, by: principal, via: "console page")
                return self.resultPage(
                    principal, csrf, verb: action.pastTense, noun: "dead letter(s)", matched: result.selected.count, changed: result.changed,
                    ids: result.selected.compactMap(\.messageId),
                    dryRun: dryRun, failures: result.failures.map { "\($0.messageId ?? "-"): \($0.reason)" }
                ) { label in
                    ConsoleHTML.actionForm(
                        action, label: label, fields: ["queue", "ids", "reason"].flatMap { key in (form[key] ?? []).map { (key, $0) } }, csrf: csrf,
                        confirm: true)
                }
            }
        }
        router.post("/actions/:action") { request, context in
            try await self.signedIn(request) { principal, csrf in
                let (form, action) = try await Self.postedForm(request, context, csrf: csrf, as: ConsoleAction.self)
                let actionRequest = try Self.actionRequest(action, form: form)
                let result = try await self.perform(actionRequest, by: principal, via: "console page")
                return self.actionPage(principal, csrf, actionRequest, form: form, result)
            }
        }
    }

    /// Runs a page's body for a signed-in caller; sends others to the sign-in page and shows
    /// refusals as a page with the message.
    func signedIn(_ request: Request, _ body: (ConsolePrincipal, String) async throws -> Response) async throws -> Response {
        let principal: ConsolePrincipal
        let session: ConsoleSessions.Session?
        do { (principal, session) = try await authenticate(request) } catch { return Self.redirect("/login") }
        do {
            return try await body(principal, csrfToken(of: session))
        } catch let error as ConsoleError {
            return ConsoleHTML.page(
                title: "Not done", principal: principal, csrf: csrfToken(of: session), status: error.status,
                #"<p class="error">\#(ConsoleHTML.escape(error.message))</p><p><a href="/">Back to the overview</a></p>"#)
        }
    }

    func loginPage(error: String? = nil, status: HTTPResponse.Status = .ok) -> Response {
        let message = error.map { #"<p class="error">\#(ConsoleHTML.escape($0))</p>"# } ?? ""
        return ConsoleHTML.page(
            title: "Sign in", principal: nil, csrf: nil, status: status,
            """
            \(message)<form method="post" action="/login"><p><label>Token <input type="password" name="token" autocomplete="current-password" \
            size="40" autofocus></label></p><p><button id="sign-in">Sign in</button></p></form>\
            <p class="note">A viewer's or an operator's token from the console's tokens file.</p>
            """)
    }

    func overview(
        _ principal: ConsolePrincipal, _ csrf: String, _ status: OutboxStatus, _ parked: [EventGroup], _ backlog: BacklogBreakdown
    ) -> Response {
        func card(_ label: String, _ value: String) -> String {
            #"<div class="card"><div class="note">\#(label)</div><strong>\#(value)</strong></div>"#
        }
        let cards = [
            card("pending", "\(status.pending)"), card("oldest pending", status.oldestPendingAge.map { String(format: "%.1f s", $0) } ?? "-"),
            card("parked", "\(status.parked)"), card("scheduled", "\(status.scheduled)"),
            card("delivered in the last minute", "\(status.deliveredLastMinute)"), card("unwritable", "\(status.unwritable)"),
        ].joined()
        func groupRows(_ groups: [EventGroup], status: String, actions: [(ConsoleAction, String)]) -> [[String]] {
            groups.map { group in
                let link = "/events?status=\(status)&lastError=\(ConsoleHTML.query(group.lastError))"
                let buttons =
                    principal.role >= .operator
                    ? actions.map {
                        ConsoleHTML.actionForm($0.0, label: $0.1, fields: [("status", status), ("lastError", group.lastError)], csrf: csrf)
                    }
                    .joined(separator: " ") : ""
                return [
                    #"<a href="\#(ConsoleHTML.escape(link))">\#(ConsoleHTML.escape(group.lastError.isEmpty ? "(no error)" : group.lastError))</a>"#,
                    String(group.count), ConsoleHTML.escape(group.types.joined(separator: ", ")), ConsoleHTML.date(group.oldest),
                    ConsoleHTML.date(group.newest), buttons,
                ]
            }
        }
        let header = ["LAST ERROR", "EVENTS", "TYPES", "OLDEST", "NEWEST", ""]
        let body = """
            <div class="cards">\(cards)</div>
            <h2>Parked events by error</h2>
            \(ConsoleHTML.table(header, groupRows(parked, status: OutboxSchema.Status.parked, actions: [(.unpark, "Retry (unpark)")]), numeric: [1]))
            <h2>Pending events that failed, by error</h2>
            \(ConsoleHTML.table(header, groupRows(backlog.failing, status: OutboxSchema.Status.pending, actions: [(.retry, "Retry now"), (.park, "Park")]), numeric: [1]))
            <h2>Pending backlog by type</h2>
            \(ConsoleHTML.table(["TYPE", "EVENTS"], backlog.byType.map { [ConsoleHTML.escape($0.type), String($0.count)] }, numeric: [1]))
            <h2>Pending backlog by partition</h2>
            \(ConsoleHTML.table(["PARTITION", "EVENTS"], backlog.byPartition.map { [$0.partition.map(String.init) ?? "not yet seen", String($0.count)] }, numeric: [1]))
            """
        return ConsoleHTML.page(title: "Overview", principal: principal, csrf: csrf, body)
    }

    func eventList(_ principal: ConsolePrincipal, _ csrf: String, _ filter: EventFilter, _ events: [Document], offset: Int, more: Bool) -> Response {
        let rows = events.map { event -> [String] in
            let id = event["_id"].flatMap(OutboxDocument.messageId(of:)) ?? ExtendedJSON.render(event["_id"] ?? .null)
            return [
                #"<a href="/events/\#(ConsoleHTML.query(id))">\#(ConsoleHTML.escape(id))</a>"#,
                ConsoleHTML.escape(event["status"]?.stringValue ?? OutboxSchema.Status.pending),
                ConsoleHTML.escape(event["type"]?.stringValue ?? "-"),
                ConsoleHTML.escape(event["aggregateId"]?.stringValue ?? "-"), ConsoleHTML.date(event["timestamp"]?.dateValue),
                event["attempts"].map { ExtendedJSON.render($0) } ?? "0", ConsoleHTML.escape(event["lastError"]?.stringValue ?? ""),
            ]
        }
        var query = "status=\(ConsoleHTML.query(filter.status ?? ""))"
        if let lastError = filter.lastError { query += "&lastError=\(ConsoleHTML.query(lastError))" }
        if let type = filter.type { query += "&type=\(ConsoleHTML.query(type))" }
        var pager = ""
        if offset > 0 { pager += #"<a href="/events?\#(ConsoleHTML.escape(query))&offset=\#(max(0, offset - 50))">previous 50</a> "# }
        if more { pager += #"<a href="/events?\#(ConsoleHTML.escape(query))&offset=\#(offset + 50)">next 50</a>"# }
        let title =
            (filter.status.map { "\($0.prefix(1).uppercased())\($0.dropFirst()) events" } ?? "Events")
            + (filter.lastError.map { ": \($0.isEmpty ? "(no error)" : $0)" } ?? "")
        return ConsoleHTML.page(
            title: title, principal: principal, csrf: csrf,
            ConsoleHTML.table(["ID", "STATUS", "TYPE", "AGGREGATE", "OCCURRED", "ATTEMPTS", "LAST ERROR"], rows, numeric: [5]) + "<p>\(pager)</p>")
    }

    func eventPage(_ principal: ConsolePrincipal, _ csrf: String, id: String, _ event: Document, history: [Document]) -> Response {
        let status = event["status"]?.stringValue ?? OutboxSchema.Status.pending
        var actions: [(ConsoleAction, String)] = []
        switch status {
        case OutboxSchema.Status.parked: actions = [(.unpark, "Retry (unpark)")]
        case OutboxSchema.Status.pending: actions = [(.retry, "Retry now"), (.park, "Park")]
        case OutboxSchema.Status.scheduled: actions = [(.cancel, "Cancel"), (.park, "Park")]
        default: break
        }
        let buttons =
            principal.role >= .operator
            ? actions.map { ConsoleHTML.actionForm($0.0, label: $0.1, fields: [("ids", id)], csrf: csrf) }.joined(separator: " ") : ""
        let rows = history.map { event -> [String] in
            let eventId = event["_id"].flatMap(OutboxDocument.messageId(of:)) ?? "-"
            return [
                event["aggregateVersion"].map { ExtendedJSON.render($0) } ?? "-",
                #"<a href="/events/\#(ConsoleHTML.query(eventId))">\#(ConsoleHTML.escape(eventId))</a>"#,
                ConsoleHTML.escape(event["type"]?.stringValue ?? "-"),
                ConsoleHTML.escape(event["status"]?.stringValue ?? OutboxSchema.Status.pending),
                ConsoleHTML.date(event["timestamp"]?.dateValue),
            ]
        }
        return ConsoleHTML.page(
            title: "Event \(id)", principal: principal, csrf: csrf,
            """
            <p>Status <strong id="status">\(ConsoleHTML.escape(status))</strong> \(buttons)</p>
            <pre>\(ConsoleHTML.escape(ExtendedJSON.render(.document(event))))</pre>
            <h2>Its aggregate's events</h2>
            \(ConsoleHTML.table(["VERSION", "ID", "TYPE", "STATUS", "OCCURRED"], rows))
            """)
    }

    func actionPage(_ principal: ConsolePrincipal, _ csrf: String, _ request: ActionRequest, form: [String: [String]], _ result: ChangeResult)
        -> Response
    {
        resultPage(
            principal, csrf, verb: request.action.pastTense, matched: result.matched, changed: result.changed, ids: result.ids, dryRun: request.dryRun
        ) { label in
            let kept = ["ids", "status", "lastError", "type", "aggregateId", "reason", "olderThan"].flatMap { key in
                (form[key] ?? []).map { (key, $0) }
            }
            return ConsoleHTML.actionForm(request.action, label: label, fields: kept, csrf: csrf, confirm: true)
        }
    }

    /// What an action did, or with a preview what it would do and a button that confirms it.
    func resultPage(
        _ principal: ConsolePrincipal, _ csrf: String, verb: String, noun: String = "event(s)", matched: Int, changed: Int, ids: [String],
        dryRun: Bool,
        failures: [String] = [],
        confirm: (String) -> String
    ) -> Response {
        let links = ids.prefix(20).map { #"<li><a href="/events/\#(ConsoleHTML.query($0))">\#(ConsoleHTML.escape($0))</a></li>"# }.joined()
        let more = ids.count > 20 ? "<li>… and \(ids.count - 20) more</li>" : ""
        let failed = failures.map { #"<li class="error">\#(ConsoleHTML.escape($0))</li>"# }.joined()
        guard dryRun else {
            return ConsoleHTML.page(
                title: "Done", principal: principal, csrf: csrf,
                #"<p id="result">\#(changed) of \#(matched) \#(noun) \#(verb).</p><ul>\#(failed)\#(links)\#(more)</ul><p><a href="/">Back to the overview</a></p>"#
            )
        }
        let button = matched > 0 ? confirm("Confirm: \(matched) \(noun) to be \(verb)") : ""
        return ConsoleHTML.page(
            title: "Preview", principal: principal, csrf: csrf,
            #"<p id="preview">\#(matched) \#(noun) would be \#(verb); nothing has changed yet.</p><ul>\#(links)\#(more)</ul><p>\#(button) <a href="/">Cancel</a></p>"#
        )
    }

    func deadLetterPage(_ principal: ConsolePrincipal, _ csrf: String, _ views: [DeadLetterQueueView]) -> Response {
        guard !views.isEmpty else {
            return ConsoleHTML.page(
                title: "Dead letters", principal: principal, csrf: csrf,
                #"<p class="note">No consumer queues are configured: set OUTBOX_CONSOLE_QUEUES (and AMQP_URL).</p>"#)
        }
        let sections = views.map { view -> String in
            let heading =
                "<h2>\(ConsoleHTML.escape(view.queue)) <span class=\"note\">(\(view.total) in \(ConsoleHTML.escape(view.deadLetterQueue)))</span></h2>"
            if let problem = view.problem { return heading + #"<p class="error">\#(ConsoleHTML.escape(problem))</p>"# }
            let rows = view.groups.map { group -> [String] in
                let fields = [("queue", view.queue), ("reason", group.reason)]
                let buttons =
                    principal.role >= .operator
                    ? ConsoleHTML.actionForm(DeadLetterAction.requeue, label: "Requeue", fields: fields, csrf: csrf) + " "
                        + ConsoleHTML.actionForm(DeadLetterAction.purge, label: "Purge", fields: fields, csrf: csrf) : ""
                return [
                    ConsoleHTML.escape(group.reason.isEmpty ? "(no reason)" : group.reason), String(group.count),
                    ConsoleHTML.escape(group.types.joined(separator: ", ")), ConsoleHTML.date(group.oldest), ConsoleHTML.date(group.newest), buttons,
                ]
            }
            return heading + ConsoleHTML.table(["REASON", "MESSAGES", "TYPES", "OLDEST", "NEWEST", ""], rows, numeric: [1])
        }
        return ConsoleHTML.page(title: "Dead letters", principal: principal, csrf: csrf, sections.joined())
    }

    // MARK: Forms

    static func redirect(_ location: String) -> Response {
        Response(status: .seeOther, headers: [.location: location, .cacheControl: "no-store"])
    }

    /// An `application/x-www-form-urlencoded` body: each name's values in order.
    static func form(_ request: Request) async throws -> [String: [String]] {
        let body = try await request.body.collect(upTo: 1 << 20)
        var fields: [String: [String]] = [:]
        for pair in String(buffer: body).split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ text: Substring) -> String { text.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? "" }
            fields[decode(parts[0]), default: []].append(parts.count > 1 ? decode(parts[1]) : "")
        }
        return fields
    }

    /// A posted form that carries the session's CSRF token, and the action the path names.
    static func postedForm<Action: RawRepresentable>(
        _ request: Request, _ context: BasicRequestContext, csrf: String, as: Action.Type
    ) async throws -> ([String: [String]], Action) where Action.RawValue == String {
        let form = try await form(request)
        guard csrfMatches(form["csrf"]?.first, expected: csrf) else { throw ConsoleError.csrf }
        guard let action = Action(rawValue: try context.parameters.require("action")) else { throw ConsoleError(.notFound, "no such action") }
        return (form, action)
    }

    /// The ids a form names: each `ids` field, split at commas and white space.
    static func ids(_ form: [String: [String]]) -> [String] {
        (form["ids"] ?? []).flatMap { $0.split(whereSeparator: { $0 == "," || $0.isWhitespace }).map(String.init) }
    }

    /// A form's action: its fields as the API's JSON names them; `confirm=yes` does it, anything
    /// else previews.
    static func actionRequest(_ action: ConsoleAction, form: [String: [String]]) throws -> ActionRequest {
        func value(_ key: String) -> String? { form[key]?.first.flatMap { $0.isEmpty ? nil : $0 } }
        let ids = ids(form)
        let olderThan = try value("olderThan").map { text in
            do { return try Setting.duration(text, setting: "olderThan") } catch let error as ConfigurationError {
                throw ConsoleError(.badRequest, "olderThan: \(error.reason)")
            }
        }
        let selection = EventSelection(
            ids: ids, status: try status(value("status")), lastError: form["lastError"]?.first, type: value("type"), aggregateId: value("aggregateId")
        )
        return ActionRequest(action: action, selection: selection, dryRun: value("confirm") != "yes", reason: value("reason"), olderThan: olderThan)
    }
}
