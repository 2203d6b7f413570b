import Foundation

/// An AMQP failure. Any AMQPError means the connection is no longer usable.
public struct AMQPError: Error, CustomStringConvertible, Sendable {
    /// Why a connection failed, as far as the client can tell.
    public enum Cause: Sendable, Equatable {
        /// The broker could not be reached or went away (refused, timed out, closed, no route).
        case unreachable
        /// The broker refused the user name or password, or the user's access to the virtual host.
        case authentication
        /// The broker's certificate does not chain to a trusted CA.
        case certificate
        /// The broker's certificate does not name the host connected to.
        case hostname
        /// The TLS handshake failed (e.g. `amqps://` to a plain AMQP port, or no client certificate
        /// where the broker requires one).
        case tlsHandshake
        /// The broker closed the connection before speaking AMQP (e.g. `amqp://` to a TLS port).
        case protocolMismatch
        /// A settings file (CA, certificate, key) could not be used.
        case tlsSettings
        /// A declaration differs from what exists on the broker (406 PRECONDITION_FAILED, e.g. a
        /// classic queue declared as a quorum queue).
        case inequivalent
        /// Anything else (a channel error, a refused declaration, ...).
        case other

        /// True when retrying cannot help: the settings must change.
        public var isConfiguration: Bool {
            switch self {
            case .authentication, .certificate, .hostname, .tlsHandshake, .protocolMismatch, .tlsSettings, .inequivalent: true
            case .unreachable, .other: false
            }
        }
    }

    public let operation: String
    public let message: String
    public let cause: Cause

    public init(operation: String, message: String, cause: Cause = .other) {
        self.operation = operation
        self.message = message
        self.cause = cause
    }

    public var description: String { "AMQP \(operation) failed: \(message)" }
}
