import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Outbox
import OutboxMongo

/// An API error rendered as `{"error": {"message": "...", "field": "..."}}` with its status.
public struct APIError: HTTPResponseError, CustomStringConvertible {
    public let status: HTTPResponse.Status
    public let message: String
    public let field: String?

    public init(_ status: HTTPResponse.Status, _ message: String, field: String? = nil) {
        self.status = status
        self.message = message
        self.field = field
    }

    public var description: String { "\(status.code) \(message)" }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var error: Document = ["message": .string(message)]
        if let field { error["field"] = .string(field) }
        return jsonResponse(status, ["error": .document(error)])
    }
}

func jsonResponse(_ status: HTTPResponse.Status, _ document: Document) -> Response {
    jsonResponse(status, json: ExtendedJSON.render(.document(document)))
}

func jsonResponse(_ status: HTTPResponse.Status, json: String, headers extra: HTTPFields = [:]) -> Response {
    var headers: HTTPFields = [.contentType: "application/json"]
    headers.append(contentsOf: extra)
    return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: json)))
}

/// Turns every error into a JSON body: API errors as they are, Hummingbird's own (unknown route,
/// body too large) with their status, anything else as a 500 that is logged and not leaked.
struct JSONErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            return try error.response(from: request, context: context)
        } catch let error as HTTPError {
            return jsonResponse(error.status, ["error": ["message": .string(error.body ?? error.status.reasonPhrase)]])
        } catch is NIOTooManyBytesError {
            return jsonResponse(.contentTooLarge, ["error": ["message": "request body is too large"]])
        } catch {
            context.logger.error("request failed", metadata: ["error": "\(error)", "http.path": "\(request.uri.path)"])
            return jsonResponse(.internalServerError, ["error": ["message": "internal error"]])
        }
    }
}

/// The reference order service's HTTP API.
public struct OrderAPI: Sendable {
    public let store: OrderStore
    public let limits: OrderLimits

    public init(store: OrderStore, limits: OrderLimits = OrderLimits()) {
        self.store = store
        self.limits = limits
    }

    public func buildRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.middlewares.add(JSONErrorMiddleware())
        router.post("/orders") { request, context in try await createOrder(request, context: context) }
        router.get("/orders/{id}") { _, context in try await getOrder(context) }
        router.get("/health") { _, _ in await health() }
        return router
    }

    func createOrder(_ request: Request, context: some RequestContext) async throws -> Response {
        let contentType = request.headers[.contentType]?.lowercased() ?? ""
        guard contentType.split(separator: ";").first?.trimmingCharacters(in: .whitespaces) == "application/json" else {
            throw APIError(.unsupportedMediaType, "Content-Type must be application/json")
        }
        let key = request.headers[HTTPField.Name("Idempotency-Key")!]
        if let key, key.isEmpty || key.count > 128 {
            throw APIError(.badRequest, "Idempotency-Key must be 1 to 128 characters", field: "Idempotency-Key")
        }
        let body = try await request.body.collect(upTo: limits.maxBodyBytes)
        let order: ValidatedOrder
        do {
            order = try OrderValidation.validate(body.readableBytesView, limits: limits)
        } catch {
            throw APIError(.badRequest, error.message, field: error.field)
        }
        // The caller's trace (W3C traceparent) goes on through OrderCreated to the consumers.
        let trace = request.headers[HTTPField.Name("traceparent")!].flatMap {
            TraceContext(traceparent: $0, tracestate: request.headers[HTTPField.Name("tracestate")!])
        }
        switch try await store.create(order, idempotencyKey: key, requestFingerprint: fingerprint(order), traceContext: trace) {
        case .created(let document):
            context.logger.info("order created", metadata: ["order.id": "\(document["_id"].map { ExtendedJSON.render($0) } ?? "")"])
            return created(document)
        case .replayed(let document):
            return created(document)
        case .conflict:
            throw APIError(.conflict, "Idempotency-Key was already used with a different request", field: "Idempotency-Key")
        }
    }

    private func created(_ document: Document) -> Response {
        let id = document["_id"]?.objectIdValue?.hex ?? ""
        return jsonResponse(.created, json: OrderStore.publicJSON(document), headers: [.location: "/orders/\(id)"])
    }

    /// The request's meaning, independent of whitespace and key order: what an idempotent replay must match.
    func fingerprint(_ order: ValidatedOrder) -> String {
        let items = order.items.map { "\($0.sku)|\($0.quantity)|\($0.unitPrice)" }.joined(separator: ";")
        return "\(order.customerId)#\(items)"
    }

    func getOrder(_ context: some RequestContext) async throws -> Response {
        let raw = context.parameters.get("id") ?? ""
        guard let id = ObjectId(raw) else {
            throw APIError(.badRequest, "order id must be 24 hexadecimal characters", field: "id")
        }
        guard let order = try await store.find(id: id) else {
            throw APIError(.notFound, "order \(raw) not found")
        }
        return jsonResponse(.ok, json: OrderStore.publicJSON(order))
    }

    func health() async -> Response {
        do {
            try await store.pool.ping()
            return jsonResponse(.ok, ["status": "ok", "database": "up"])
        } catch {
            return jsonResponse(.serviceUnavailable, ["status": "unavailable", "database": "down", "error": .string("\(error)")])
        }
    }
}
