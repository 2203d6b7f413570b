import Foundation
import Outbox

/// What a token may do: a viewer reads, an operator reads and acts.
public enum ConsoleRole: String, Sendable, CaseIterable, Comparable {
    case viewer, `operator`

    public static func < (lhs: ConsoleRole, rhs: ConsoleRole) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// Who made a request: a token's role and its name (the audit trail's actor; never the token).
public struct ConsolePrincipal: Sendable, Equatable {
    public var name: String
    public var role: ConsoleRole

    public init(name: String, role: ConsoleRole) {
        self.name = name
        self.role = role
    }

    /// Without authentication (an explicit flag, loopback only).
    public static let unauthenticated = ConsolePrincipal(name: "unauthenticated", role: .operator)
}

/// The console's tokens, from the file `OUTBOX_CONSOLE_TOKENS_FILE` names: one `role:token` or
/// `role:name:token` a line (`#` starts a comment). A token without a name is named after its role
/// and line, e.g. `operator@3`.
public struct ConsoleTokens: Sendable {
    let entries: [(token: [UInt8], principal: ConsolePrincipal)]

    /// The shortest token accepted: a guessable one is refused at start.
    public static let minimumLength = 16

    public init(parsing text: String, setting: String) throws {
        var entries: [(token: [UInt8], principal: ConsolePrincipal)] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
            // The line is never quoted: it holds a token.
            guard fields.count >= 2, let role = ConsoleRole(rawValue: fields[0]) else {
                throw ConfigurationError(
                    setting: setting, reason: "line \(index + 1) is not role:token or role:name:token with role viewer or operator")
            }
            let name = fields.count == 3 ? fields[1] : "\(role.rawValue)@\(index + 1)"
            let token = fields.count == 3 ? fields[2] : fields[1]
            guard token.utf8.count >= Self.minimumLength else {
                throw ConfigurationError(setting: setting, reason: "line \(index + 1): a token has at least \(Self.minimumLength) characters")
            }
            guard !entries.contains(where: { $0.token == Array(token.utf8) }) else {
                throw ConfigurationError(setting: setting, reason: "line \(index + 1) repeats a token of an earlier line")
            }
            entries.append((Array(token.utf8), ConsolePrincipal(name: name, role: role)))
        }
        guard !entries.isEmpty else { throw ConfigurationError(setting: setting, reason: "the file holds no token") }
        self.entries = entries
    }

    /// The principal a token belongs to. Compares every token in full, in time that does not
    /// depend on where a guess first differs.
    public func principal(for token: String) -> ConsolePrincipal? {
        let guess = Array(token.utf8)
        var found: ConsolePrincipal?
        for entry in entries where Self.constantTimeEqual(entry.token, guess) { found = entry.principal }
        return found
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: a.count ^ b.count)
        for index in 0..<max(a.count, b.count) {
            difference |= (index < a.count ? a[index] : 0) ^ (index < b.count ? b[index] : 0)
        }
        return difference == 0
    }
}
