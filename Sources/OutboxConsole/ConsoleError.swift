import Hummingbird
import OutboxMongo

/// A refusal the API answers with its status and `{"error": "..."}`; the pages show the message.
public struct ConsoleError: HTTPResponseError, CustomStringConvertible {
    public let status: HTTPResponse.Status
    public let message: String

    public init(_ status: HTTPResponse.Status, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { message }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if status == .unauthorized { headers[.wwwAuthenticate] = #"Bearer realm="outbox-console""# }
        return Response(
            status: status, headers: headers,
            body: .init(byteBuffer: ByteBuffer(bytes: ExtendedJSON.renderBytes(["error": .string(message)] as Document))))
    }

    static let unauthenticated = ConsoleError(.unauthorized, "sign in: send Authorization: Bearer <token> (OUTBOX_CONSOLE_TOKENS_FILE)")
    static let viewerOnly = ConsoleError(.forbidden, "this token's role is viewer: only an operator's token may act")
    static let csrf = ConsoleError(.forbidden, "the form's CSRF token is missing or wrong: reload the page and try again")
}
