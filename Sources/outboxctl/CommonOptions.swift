import ArgumentParser
import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import OutboxOps
import OutboxRuntime

struct Common: ParsableArguments {
    @OptionGroup var mongo: MongoOptions

    @Option(name: SettingDeclaration.collection.name, help: SettingDeclaration.collection.argumentHelp)
    var collection: String?

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    /// Connects, runs `body`, and maps failures to exit codes.
    func run<R>(_ body: (OutboxAdmin, Logger) async throws -> R) async throws -> R {
        let settings = Settings()
        let admin: OutboxAdmin
        let logger: Logger
        do {
            logger = Runtime.bootstrap(label: "outboxctl", level: try settings.logLevel(mongo.logLevel ?? "error"))
            let pool = try settings.mongoPool(
                uri: try mongo.resolvedURI(settings), database: try mongo.resolvedDatabase(settings), appName: "outboxctl", threads: 1)
            await Runtime.checkLinks(program: "outboxctl", mongo: pool, amqp: nil, broker: .exit, logger: logger)
            admin = OutboxAdmin(pool: pool, collection: try settings.string(collection, .collection))
        } catch {
            Runtime.failConfiguration(error, program: "outboxctl")
        }
        do {
            return try await body(admin, logger)
        } catch let error as MongoError where error.isConnectionFailure {
            FileHandle.standardError.write(Data("outboxctl: \(error)\n".utf8))
            throw ExitCode(Exit.unavailable)
        }
    }
}

struct Filters: ParsableArguments {
    @Option(name: .customLong("id"), help: "Event id (repeatable).")
    var ids: [String] = []

    @Option(help: "Event type, e.g. OrderCreated.")
    var type: String?

    @Option(help: "Aggregate id.")
    var aggregate: String?

    @Option(help: "Only events that occurred longer ago than this, e.g. 10m, 2h.")
    var olderThan: String?

    @Option(help: "Only events that occurred at or after this ISO 8601 time.")
    var since: String?

    @Option(help: "Only events that occurred before this ISO 8601 time.")
    var until: String?

    func filter(status: String? = nil) throws -> EventFilter {
        EventFilter(
            ids: ids, status: status, type: type, aggregateId: aggregate, olderThan: try olderThan.map { try duration($0, "--older-than") },
            since: try since.map { try date($0, "--since") }, until: try until.map { try date($0, "--until") })
    }

    func validate() throws { _ = try filter() }

    /// Whether any event is selected by id or by a criterion.
    var selectsSomething: Bool {
        !ids.isEmpty || type != nil || aggregate != nil || olderThan != nil || since != nil || until != nil
    }

    func date(_ text: String, _ option: String) throws -> Date {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return date }
        formatter.formatOptions = [.withInternetDateTime]
        if let date = formatter.date(from: text) { return date }
        throw ValidationError("\(option): '\(text)' is not an ISO 8601 time such as 2026-11-26T18:00:00Z")
    }
}

/// A duration option; a bad one is a usage error (exit 64).
func duration(_ text: String, _ option: String) throws -> Duration {
    do { return try Setting.duration(text, setting: option) } catch let error as ConfigurationError {
        throw ValidationError("\(option): \(error.reason)")
    }
}

func statusOption(_ value: String?) throws -> String? {
    guard let value else { return nil }
    let statuses = OutboxSchema.Status.known
    guard statuses.contains(value) else {
        throw ValidationError("--status must be \(statuses.dropLast().joined(separator: ", ")) or \(statuses.last!), not '\(value)'")
    }
    return value
}
