import Foundation
import HTTPTypes
import Hummingbird
import Outbox
import OutboxMongo
import OutboxOps

/// The JSON API (docs/console-api.yaml): reads for every role, actions for operators. Errors are
/// `{"error": "..."}` with a 4xx status.
extension Console {
    func addAPI(to api: RouterGroup<BasicRequestContext>) {
        api.get("status") { request, _ in
            _ = try await self.authenticate(request)
            return Self.json(try await self.admin.status().document)
        }
        api.get("backlog") { request, _ in
            _ = try await self.authenticate(request)
            let backlog = try await self.admin.backlog()
            return Self.json([
                "byType": .array(backlog.byType.map { ["type": .string($0.type), "count": .int64(Int64($0.count))] }),
                "byPartition": .array(
                    backlog.byPartition.map { ["partition": $0.partition.map { .int64(Int64($0)) } ?? .null, "count": .int64(Int64($0.count))] }),
                "failing": .array(backlog.failing.map(Self.groupDocument)),
            ])
        }
        api.get("events") { request, _ in
            _ = try await self.authenticate(request)
            let query = request.uri.queryParameters
            let status = try Self.status(query.get("status"))
            let limit = try Self.integer(query.get("limit"), name: "limit", default: 50, range: 1...500)
            let offset = try Self.integer(query.get("offset"), name: "offset", default: 0, range: 0...100_000)
            let filter = EventFilter(
                status: status, type: query.get("type"), aggregateId: query.get("aggregateId"), lastError: query.get("lastError"))
            let events = try await self.admin.list(filter, limit: limit + 1, offset: offset)
            return Self.json([
                "events": .array(events.prefix(limit).map(Self.summary)), "offset": .int64(Int64(offset)), "limit": .int64(Int64(limit)),
                "nextOffset": events.count > limit ? .int64(Int64(offset + limit)) : .null,
            ])
        }
        api.get("events/:id") { request, context in
            _ = try await self.authenticate(request)
            let id = try context.parameters.require("id")
            guard let event = try await self.admin.show(id: id) else { throw ConsoleError(.notFound, "no event has id \(id)") }
            let history = try await self.history(of: event)
            return Self.json(["event": .document(event), "history": .array(history.prefix(200).map(Self.summary))])
        }
        api.get("groups") { request, _ in
            _ = try await self.authenticate(request)
            let status = try Self.status(request.uri.queryParameters.get("status")) ?? OutboxSchema.Status.parked
            let groups = try await self.admin.groups(status: status)
            return Self.json(["status": .string(status), "groups": .array(groups.map(Self.groupDocument))])
        }
        api.get("audit") { request, _ in
            _ = try await self.authenticate(request)
            let limit = try Self.integer(request.uri.queryParameters.get("limit"), name: "limit", default: 50, range: 1...1000)
            let entries = try await self.audit.recent(limit: limit, action: request.uri.queryParameters.get("action"))
            return Self.json(["entries": .array(entries.map { .document($0.document) })])
        }
        for action in ConsoleAction.allCases {
            api.post("events/\(action.rawValue)") { request, _ in
                let (principal, body) = try await self.actionBody(request)
                let actionRequest = try Self.actionRequest(action, body: body)
                let result = try await self.perform(actionRequest, by: principal, via: "console api")
                return Self.json(Self.resultDocument(result))
            }
        }
        api.get("dead-letters") { request, _ in
            _ = try await self.authenticate(request)
            return Self.json(["queues": .array(await self.deadLetterViews().map(Self.deadLetterViewDocument))])
        }
        for action in DeadLetterAction.allCases {
            api.post("dead-letters/\(action.rawValue)") { request, _ in
                let (principal, body) = try await self.actionBody(request)
                let json = try Self.object(body)
                guard let queue = try Self.string(json, "queue") else { throw ConsoleError(.badRequest, "queue names the consumer's queue") }
                let result = try await self.perform(
                    action, queue: queue, ids: try Self.strings(json, "ids"), reason: try Self.string(json, "reason"),
                    dryRun: try Self.bool(json, "dryRun"),
                    by: principal, via: "console api")
                return Self.json(Self.deadLetterResultDocument(result))
            }
        }
    }

    /// An action's caller and JSON body. A form of another site cannot send JSON without the
    /// browser asking first, and a request signed in by cookie must also carry the session's CSRF
    /// token in `X-CSRF-Token`.
    func actionBody(_ request: Request) async throws -> (ConsolePrincipal, [UInt8]) {
        let (principal, session) = try await authenticate(request)
        guard request.headers[.contentType]?.hasPrefix("application/json") == true else {
            throw ConsoleError(.unsupportedMediaType, "send the action as JSON (Content-Type: application/json)")
        }
        if session != nil, !csrfMatches(request.headers[HTTPField.Name("X-CSRF-Token")!], session: session) {
            throw ConsoleError.csrf
        }
        let body = try await request.body.collect(upTo: 1 << 20)
        return (principal, Array(body.readableBytesView))
    }

    // MARK: Requests

    static func actionRequest(_ action: ConsoleAction, body: [UInt8]) throws -> ActionRequest {
        let json = try object(body)
        let olderThan = try string(json, "olderThan").map { text in
            do { return try Setting.duration(text, setting: "olderThan") } catch let error as ConfigurationError {
                throw ConsoleError(.badRequest, "olderThan: \(error.reason)")
            }
        }
        let selection = EventSelection(
            ids: try strings(json, "ids"), status: try status(try string(json, "status")), lastError: try string(json, "lastError"),
            type: try string(json, "type"), aggregateId: try string(json, "aggregateId"))
        let request = ActionRequest(
            action: action, selection: selection, dryRun: try bool(json, "dryRun"), reason: try string(json, "reason"), olderThan: olderThan)
        if let problem = request.problem { throw ConsoleError(.badRequest, problem) }
        return request
    }

    /// A body that is a JSON object.
    static func object(_ body: [UInt8]) throws -> JSONValue {
        let json: JSONValue
        do { json = try JSONValue.parse(body) } catch { throw ConsoleError(.badRequest, "the body is not JSON: \(error)") }
        guard case .object = json else { throw ConsoleError(.badRequest, "the body is a JSON object, not \(json.typeName)") }
        return json
    }

    static func string(_ json: JSONValue, _ key: String) throws -> String? {
        switch json[key] {
        case nil, .null?: return nil
        case .string(let value)?: return value
        case let other?: throw ConsoleError(.badRequest, "\(key) is a string, not \(other.typeName)")
        }
    }

    static func strings(_ json: JSONValue, _ key: String) throws -> [String] {
        switch json[key] {
        case nil, .null?: return []
        case .array(let values)?:
            return try values.map { value in
                guard case .string(let text) = value else { throw ConsoleError(.badRequest, "\(key) holds strings, not \(value.typeName)") }
                return text
            }
        case let other?: throw ConsoleError(.badRequest, "\(key) is an array of strings, not \(other.typeName)")
        }
    }

    static func bool(_ json: JSONValue, _ key: String) throws -> Bool {
        switch json[key] {
        case nil, .null?: return false
        case .bool(let value)?: return value
        case let other?: throw ConsoleError(.badRequest, "\(key) is true or false, not \(other.typeName)")
        }
    }

    static func status(_ value: String?) throws -> String? {
        guard let value, !value.isEmpty else { return nil }
        guard OutboxSchema.Status.known.contains(value) else {
            throw ConsoleError(.badRequest, "status is one of \(OutboxSchema.Status.known.joined(separator: ", ")), not '\(value)'")
        }
        return value
    }

    static func integer(_ value: String?, name: String, default fallback: Int, range: ClosedRange<Int>) throws -> Int {
        guard let value, !value.isEmpty else { return fallback }
        guard let number = Int(value), range.contains(number) else {
            throw ConsoleError(.badRequest, "\(name) is a whole number from \(range.lowerBound) to \(range.upperBound), not '\(value)'")
        }
        return number
    }

    // MARK: Responses

    static func json(_ document: Document, status: HTTPResponse.Status = .ok) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(bytes: ExtendedJSON.renderBytes(document))))
    }

    /// An event without its data: what lists show.
    static func summary(_ event: Document) -> BSON {
        var summary: Document = [
            "id": event["_id"].flatMap(OutboxDocument.messageId(of:)).map { .string($0) } ?? .null,
            "type": event["type"] ?? .null, "aggregateId": event["aggregateId"] ?? .null,
            "status": event["status"] ?? .string(OutboxSchema.Status.pending), "lastError": event["lastError"] ?? .null,
            "attempts": event["attempts"] ?? .int32(0), "timestamp": event["timestamp"] ?? .null,
        ]
        for key in ["aggregateVersion", "partition", "deliverAt", "dueAt", "nextAttemptAt", "parkedAt", "deliveredAt"] {
            if let value = event[key] { summary[key] = value }
        }
        return .document(summary)
    }

    static func groupDocument(_ group: EventGroup) -> BSON {
        [
            "lastError": .string(group.lastError), "count": .int64(Int64(group.count)), "types": .array(group.types.map { .string($0) }),
            "oldest": group.oldest.map { .date($0) } ?? .null, "newest": group.newest.map { .date($0) } ?? .null,
        ]
    }

    static func resultDocument(_ result: ChangeResult) -> Document {
        [
            "matched": .int64(Int64(result.matched)), "changed": .int64(Int64(result.changed)), "dryRun": .bool(result.dryRun),
            "ids": .array(result.ids.prefix(AuditTrail.idsKept).map { .string($0) }),
        ]
    }
}
