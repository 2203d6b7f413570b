import Foundation
import HTTPTypes
import Hummingbird

/// The pages' HTML: escaping, the layout, tables and action forms. No script anywhere: every action
/// is a form that posts, previews and asks to confirm.
enum ConsoleHTML {
    static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for character in text {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(character)
            }
        }
        return out
    }

    /// A query string's value.
    static func query(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
    }

    static let style = """
        body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}header{background:#1f3a5f;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center}
        header a{color:#fff}main{padding:1em 1.2em}table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border-bottom:1px solid #ddd;padding:.3em .7em;text-align:left;vertical-align:top}
        th{background:#f3f5f8}.num{text-align:right}form.inline{display:inline}button{cursor:pointer}.error{color:#a00}.note{color:#555}
        pre{background:#f6f6f6;padding:.8em;overflow:auto;max-width:100%}.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #ccd;padding:.5em 1em;border-radius:4px}
        """

    /// A whole page. `principal` nil: not signed in (the login page).
    static func page(title: String, principal: ConsolePrincipal?, csrf: String?, status: HTTPResponse.Status = .ok, _ body: String) -> Response {
        var header = "<header><strong>Outbox console</strong>"
        if let principal {
            header += """
                <a href="/">Overview</a><a href="/events?status=parked">Parked</a><a href="/events?status=pending">Pending</a>\
                <a href="/dead-letters">Dead letters</a><a href="/audit">Audit trail</a><span class="note" style="color:#cde">\(escape(principal.name)) (\(principal.role.rawValue))</span>
                """
            if let csrf {
                header +=
                    #"<form class="inline" method="post" action="/logout"><input type="hidden" name="csrf" value="\#(escape(csrf))"><button>Sign out</button></form>"#
            }
        }
        header += "</header>"
        let html = """
            <!doctype html><html lang="en"><head><meta charset="utf-8"><title>\(escape(title)) · Outbox console</title>\
            <style>\(style)</style></head><body>\(header)<main><h1>\(escape(title))</h1>\(body)</main></body></html>
            """
        return Response(
            status: status,
            headers: [
                .contentType: "text/html; charset=utf-8", .cacheControl: "no-store",
                .contentSecurityPolicy: "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
                HTTPField.Name("X-Content-Type-Options")!: "nosniff",
            ],
            body: .init(byteBuffer: ByteBuffer(string: html)))
    }

    static func table(_ header: [String], _ rows: [[String]], numeric: Set<Int> = []) -> String {
        guard !rows.isEmpty else { return #"<p class="note">None.</p>"# }
        let head = header.map { "<th>\(escape($0))</th>" }.joined()
        // Cells are HTML already: callers escape what they put in.
        let body = rows.map { row in
            "<tr>" + row.enumerated().map { numeric.contains($0.offset) ? "<td class=\"num\">\($0.element)</td>" : "<td>\($0.element)</td>" }.joined()
                + "</tr>"
        }.joined()
        return "<table><thead><tr>\(head)</tr></thead><tbody>\(body)</tbody></table>"
    }

    /// A button that posts `fields` to an action; without `confirm` the console answers with a
    /// preview and a second button that confirms.
    static func actionForm(_ action: ConsoleAction, label: String, fields: [(String, String)], csrf: String, confirm: Bool = false) -> String {
        actionForm(path: "/actions/\(action.rawValue)", name: action.rawValue, label: label, fields: fields, csrf: csrf, confirm: confirm)
    }

    /// A dead-letter action's button (see `actionForm`).
    static func actionForm(_ action: DeadLetterAction, label: String, fields: [(String, String)], csrf: String, confirm: Bool = false) -> String {
        actionForm(
            path: "/actions/dead-letters/\(action.rawValue)", name: action.rawValue, label: label, fields: fields, csrf: csrf, confirm: confirm)
    }

    static func actionForm(path: String, name: String, label: String, fields: [(String, String)], csrf: String, confirm: Bool) -> String {
        var inputs = #"<input type="hidden" name="csrf" value="\#(escape(csrf))">"#
        for (name, value) in fields { inputs += #"<input type="hidden" name="\#(escape(name))" value="\#(escape(value))">"# }
        if confirm { inputs += #"<input type="hidden" name="confirm" value="yes">"# }
        return
            #"<form class="inline" method="post" action="\#(path)">\#(inputs)<button name="do" value="\#(name)">\#(escape(label))</button></form>"#
    }

    static func date(_ date: Date?) -> String {
        guard let date else { return "-" }
        let formatter = ISO8601DateFormatter()
        return formatter.string(from: date)
    }
}
