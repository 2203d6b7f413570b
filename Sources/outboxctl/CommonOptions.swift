import ArgumentParser
import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import OutboxOps
import OutboxRuntime

/// The outbox a command acts on: `--source`; else those `OUTBOX_SOURCES` names; else
/// `OUTBOX_DATABASE`.`OUTBOX_COLLECTION`.
struct SourceOptions: ParsableArguments {
    @Option(name: SettingDeclaration.collection.name, help: SettingDeclaration.collection.argumentHelp)
    var collection: String?

    @Option(
        name: SettingDeclaration.relaySources.name,
        help: ArgumentHelp(
            "The outbox to act on, database.collection (the first dot splits); where \(SettingDeclaration.relaySources.env) names "
                + "several, one of them (status shows each). Default: \(SettingDeclaration.relaySources.shownDefault).",
            valueName: "database.collection"))
    var source: String?

    /// Every outbox in question.
    func sources(_ settings: Settings, mongo: MongoOptions) throws -> [OutboxSource] {
        if let source { return [try OutboxSource(parsing: source, setting: "--source")] }
        if let listed = Setting.fromEnvironment(SettingDeclaration.relaySources.env, settings.environment) {
            return try OutboxSource.parseList(listed, setting: SettingDeclaration.relaySources.env)
        }
        return [OutboxSource(database: try mongo.resolvedDatabase(settings), collection: try settings.string(collection, .collection))]
    }

    /// The one outbox in question; several named and none chosen fails, naming `--source`.
    func source(_ settings: Settings, mongo: MongoOptions) throws -> OutboxSource {
        let sources = try self.sources(settings, mongo: mongo)
        guard sources.count == 1 else { throw Self.chooseOne(sources) }
        return sources[0]
    }

    static func chooseOne(_ sources: [OutboxSource]) -> ConfigurationError {
        ConfigurationError(
            setting: SettingDeclaration.relaySources.env,
            reason: "names \(sources.count) outboxes (\(sources.map(\.description).joined(separator: ", "))); choose one with --source")
    }
}

struct Common: ParsableArguments {
    @OptionGroup var mongo: MongoOptions
    @OptionGroup var outbox: SourceOptions

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    /// Connects, runs `body` on the one outbox in question, and maps failures to exit codes.
    /// Several configured and none chosen fails, naming `--source`.
    func run<R>(_ body: (OutboxAdmin, Logger) async throws -> R) async throws -> R {
        try await runEach(several: false) { _, admin, logger in try await body(admin, logger) }[0]
    }

    /// Runs `body` on each outbox in question (`several`), or on the one (else several fail).
    func runEach<R>(several: Bool, _ body: (OutboxSource, OutboxAdmin, Logger) async throws -> R) async throws -> [R] {
        let settings = Settings()
        var admins: [(OutboxSource, OutboxAdmin)] = []
        let logger: Logger
        do {
            logger = Runtime.bootstrap(label: "outboxctl", level: try settings.logLevel(mongo.logLevel ?? "error"))
            let sources = try outbox.sources(settings, mongo: mongo)
            guard several || sources.count == 1 else { throw SourceOptions.chooseOne(sources) }
            let uri = try mongo.resolvedURI(settings)
            for source in sources {
                let pool = try settings.mongoPool(uri: uri, database: source.database, appName: "outboxctl", threads: 1)
                if admins.isEmpty { await Runtime.checkLinks(program: "outboxctl", mongo: pool, amqp: nil, broker: .exit, logger: logger) }
                admins.append((source, OutboxAdmin(pool: pool, collection: source.collection)))
            }
        } catch {
            Runtime.failConfiguration(error, program: "outboxctl")
        }
        do {
            var results: [R] = []
            for (source, admin) in admins { results.append(try await body(source, admin, logger)) }
            return results
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
