import ArgumentParser
import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import OutboxOps
import OutboxRuntime

/// Exit codes: 0 done; 1 done only in part (e.g. not every replayed message was confirmed);
/// 64 bad arguments; 69 the database or broker cannot be reached; 78 bad configuration.
enum Exit {
    static let partial: Int32 = 1
    static let unavailable: Int32 = 69
}

@main
struct OutboxCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outboxctl",
        abstract: "Inspect and repair the outbox: backlog, stuck and parked events, history, replay, purge, consumers' dead letters.",
        discussion: """
            Connects with MONGODB_URI (and AMQP_URL for replay); the dlq commands with AMQP_URL only. \
            Tables by default, --json for scripts.
            Exit status: 0 done, 1 done in part, 64 bad arguments, 69 database or broker unreachable, \
            78 bad configuration.
            """,
        subcommands: [
            Init.self, Status.self, List.self, Show.self, Retry.self, Park.self, Unpark.self, History.self, Replay.self, Purge.self,
            Repartition.self, Dlq.self, Probe.self, SettingsCommand.self,
        ])
}

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
            let pool = try settings.mongoPool(uri: try mongo.resolvedURI(settings), database: try mongo.resolvedDatabase(settings), appName: "outboxctl", threads: 1)
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
    do { return try Setting.duration(text, setting: option) } catch let error as ConfigurationError { throw ValidationError("\(option): \(error.reason)") }
}

func statusOption(_ value: String?) throws -> String? {
    guard let value else { return nil }
    guard [OutboxSchema.Status.pending, OutboxSchema.Status.delivered, OutboxSchema.Status.parked].contains(value) else {
        throw ValidationError("--status must be pending, delivered or parked, not '\(value)'")
    }
    return value
}

// MARK: - Output

func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { column in ([header[column]] + rows.map { $0[column] }).map(\.count).max() ?? 0 }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }.joined(separator: "  ")
            .trimmingCharacters(in: .whitespaces)
    }
    print(line(header))
    for row in rows { print(line(row)) }
}

func printJSON(_ value: BSON) { print(ExtendedJSON.render(value)) }

func age(_ date: Date?) -> String {
    guard let date else { return "-" }
    let seconds = Int(Date().timeIntervalSince(date))
    switch seconds {
    case ..<120: return "\(seconds)s"
    case ..<7200: return "\(seconds / 60)m"
    default: return "\(seconds / 3600)h"
    }
}

func eventRows(_ documents: [Document]) -> [[String]] {
    documents.map { d in
        [
            d["_id"].flatMap(OutboxDocument.messageId(of:)) ?? ExtendedJSON.render(d["_id"] ?? .null), d["status"]?.stringValue ?? "new", d["type"]?.stringValue ?? "-",
            d["aggregateId"]?.stringValue ?? "-", d["aggregateVersion"].map { ExtendedJSON.render($0) } ?? "-", age(d["timestamp"]?.dateValue),
            d["attempts"].map { ExtendedJSON.render($0) } ?? "0", String((d["lastError"]?.stringValue ?? "").prefix(60)),
        ]
    }
}

let eventHeader = ["ID", "STATUS", "TYPE", "AGGREGATE", "VERSION", "AGE", "ATTEMPTS", "LAST ERROR"]

func report(_ result: ChangeResult, verb: String, json: Bool) {
    if json {
        printJSON(["matched": .int64(Int64(result.matched)), "changed": .int64(Int64(result.changed)), "dryRun": .bool(result.dryRun), "ids": .array(result.ids.map { .string($0) })])
    } else if result.dryRun {
        print("dry run: \(result.matched) event(s) would be \(verb); nothing changed")
        for id in result.ids.prefix(20) { print("  \(id)") }
        if result.ids.count > 20 { print("  … \(result.ids.count - 20) more") }
    } else {
        print("\(result.changed) of \(result.matched) matching event(s) \(verb)")
    }
}

// MARK: - Commands

extension OutboxCtl {
    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Prepare a database for a service that writes the outbox: collection, indexes, optional validator.",
            discussion: """
                Creates the outbox collection (--collection) if it does not exist and the indexes the relay \
                needs. With --validator it also sets a $jsonSchema validator of the writer's contract \
                (schema/outbox-event.schema.json: type, aggregateId and data required, the rest optional and \
                typed), so that a malformed insert fails inside the writer's own transaction instead of \
                reaching the relay, and checks that the server enforces it. Safe to run again: it only adds \
                what is missing.
                """)
        @OptionGroup var common: Common
        @Flag(help: "Also set the contract's $jsonSchema validator on the collection.") var validator = false
        @Flag(help: "Say what would be done; change nothing.") var dryRun = false

        func run() async throws {
            let result = try await common.run { admin, _ in try await admin.initialize(validator: validator, dryRun: dryRun) }
            if common.json {
                printJSON([
                    "actions": .array(result.actions.map { .string($0) }), "dryRun": .bool(result.dryRun),
                    "validatorEnforced": result.validatorEnforced.map { .bool($0) } ?? .null,
                ])
                return
            }
            if result.actions.isEmpty { print("nothing to do: the outbox is ready") }
            for action in result.actions { print(result.dryRun ? "would \(action)" : action) }
            if result.dryRun { print("dry run: nothing changed") }
            switch result.validatorEnforced {
            case true?: print("validator enforced: the server refuses documents that break the contract")
            case false?:
                print("validator NOT enforced by this server: malformed documents are accepted, and the relay parks them with a reason")
            case nil: break
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Backlog, oldest pending age, parked count, deliveries in the last minute, partition leases.")
        @OptionGroup var common: Common

        func run() async throws {
            let status = try await common.run { admin, _ in try await admin.status() }
            if common.json {
                printJSON([
                    "pending": .int64(Int64(status.pending)), "unseen": .int64(Int64(status.unseen)), "due": .int64(Int64(status.due)), "parked": .int64(Int64(status.parked)),
                    "delivered": .int64(Int64(status.delivered)), "deliveredLastMinute": .int64(Int64(status.deliveredLastMinute)),
                    "oldestPendingAgeSeconds": status.oldestPendingAge.map { .double($0) } ?? .null,
                    "leases": .array(status.leases.map { lease in
                        ["partition": .int64(Int64(lease.partition)), "owner": lease.owner.map { .string($0) } ?? .null, "epoch": .int64(Int64(lease.epoch)), "expiresInSeconds": .double(lease.expiresIn)]
                    }),
                ])
                return
            }
            print("pending              \(status.pending) (\(status.due) due now, \(status.unseen) not yet seen by a relay)")
            print("oldest pending age   \(status.oldestPendingAge.map { String(format: "%.1f s", $0) } ?? "-")")
            print("parked               \(status.parked)")
            print("delivered            \(status.delivered) (\(status.deliveredLastMinute) in the last minute)")
            print("")
            printTable(
                ["PARTITION", "OWNER", "EPOCH", "EXPIRES IN"],
                status.leases.map { lease in
                    [String(lease.partition), lease.owner ?? "-", String(lease.epoch), lease.owner == nil ? "-" : (lease.expiresIn < 0 ? "expired" : String(format: "%.1f s", lease.expiresIn))]
                })
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List events by status, type, aggregate and age.")
        @OptionGroup var common: Common
        @OptionGroup var filters: Filters
        @Option(help: "pending, delivered or parked.") var status: String?
        @Option(help: "At most this many events.") var limit = 50

        func validate() throws { _ = try statusOption(status) }

        func run() async throws {
            let filter = try filters.filter(status: statusOption(status))
            let events = try await common.run { admin, _ in try await admin.list(filter, limit: limit) }
            if common.json { printJSON(.array(events.map { .document($0) })) } else { printTable(eventHeader, eventRows(events)) }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one event in full.")
        @OptionGroup var common: Common
        @Argument(help: "Event id.") var id: String

        func run() async throws {
            guard let event = try await common.run({ admin, _ in try await admin.show(id: id) }) else {
                FileHandle.standardError.write(Data("outboxctl: no event \(id)\n".utf8))
                throw ExitCode(Exit.partial)
            }
            print(ExtendedJSON.render(.document(event)))
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make pending events due now: by id, by filter, or every stuck one (--stuck --older-than 10m).")
        @OptionGroup var common: Common
        @OptionGroup var filters: Filters
        @Flag(help: "Every pending event older than --older-than (default 5m).") var stuck = false
        @Flag(help: "Show what would change; change nothing.") var dryRun = false

        func validate() throws {
            if !stuck && !filters.selectsSomething {
                throw ValidationError("say which events: --id, a filter (--type, --aggregate, --older-than, --since, --until) or --stuck")
            }
        }

        func run() async throws {
            var filter = try filters.filter()
            if stuck && filter.olderThan == nil { filter.olderThan = .seconds(300) }
            let result = try await common.run { admin, _ in try await admin.retry(filter, dryRun: dryRun) }
            report(result, verb: "made due now", json: common.json)
        }
    }

    struct Park: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Park pending events so the relay leaves them alone.")
        @OptionGroup var common: Common
        @OptionGroup var filters: Filters
        @Option(help: "Why (kept in lastError).") var reason = "parked by an operator"
        @Flag(help: "Show what would change; change nothing.") var dryRun = false

        func validate() throws {
            if !filters.selectsSomething {
                throw ValidationError("say which events: --id or a filter (--type, --aggregate, --older-than, --since, --until)")
            }
        }

        func run() async throws {
            let filter = try filters.filter()
            let result = try await common.run { admin, _ in try await admin.park(filter, reason: reason, dryRun: dryRun) }
            report(result, verb: "parked", json: common.json)
        }
    }

    struct Unpark: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Return parked events to pending (due now, attempts reset); all parked ones with --all.")
        @OptionGroup var common: Common
        @OptionGroup var filters: Filters
        @Flag(help: "Every parked event.") var all = false
        @Flag(help: "Show what would change; change nothing.") var dryRun = false

        func validate() throws {
            if !all && !filters.selectsSomething {
                throw ValidationError("say which events: --id, a filter or --all")
            }
        }

        func run() async throws {
            let filter = try filters.filter()
            let result = try await common.run { admin, _ in try await admin.unpark(filter, dryRun: dryRun) }
            report(result, verb: "unparked", json: common.json)
        }
    }

    struct History: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "An aggregate's events in version order (the event store view).")
        @OptionGroup var common: Common
        @Argument(help: "Aggregate id.") var aggregateId: String
        @Option(help: "Aggregate type, when ids are shared between types.") var aggregateType: String?

        func run() async throws {
            let events = try await common.run { admin, _ in try await admin.history(aggregateId: aggregateId, aggregateType: aggregateType) }
            if common.json { printJSON(.array(events.map { .document($0) })) } else { printTable(eventHeader, eventRows(events)) }
        }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Publish matching events again with their original message ids (consumers skip what they have seen).")
        @OptionGroup var common: Common
        @OptionGroup var filters: Filters
        @Option(help: "pending, delivered or parked (default: any).") var status: String?
        @Option(name: SettingDeclaration.amqpURL.name, help: SettingDeclaration.amqpURL.argumentHelp) var amqpURL: String?
        @Option(help: "Exchange to publish to (default: each event's own).") var exchange: String?
        @Option(help: "Routing key (default: each event's own).") var routingKey: String?
        @Flag(help: "Show what would be published; publish nothing.") var dryRun = false

        func validate() throws {
            _ = try statusOption(status)
            if !filters.selectsSomething && status == nil {
                throw ValidationError("say which events: --id, --status or a filter (--type, --aggregate, --since, --until, --older-than)")
            }
        }

        func run() async throws {
            let filter = try filters.filter(status: statusOption(status))
            let settings = Settings()
            let amqp: AMQPConfiguration
            do { amqp = try settings.amqp(amqpURL) } catch {
                Runtime.failConfiguration(error, program: "outboxctl")
            }
            let result = try await common.run { admin, logger in
                if !dryRun { await Runtime.checkLinks(program: "outboxctl", mongo: nil, amqp: amqp, broker: .exit, logger: logger) }
                return try await admin.replay(filter, exchange: exchange, routingKey: routingKey, amqp: amqp, dryRun: dryRun, logger: logger)
            }
            report(result, verb: "republished (confirmed)", json: common.json)
            if !result.dryRun && result.changed < result.matched { throw ExitCode(Exit.partial) }
        }
    }

    struct Repartition: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change the number of partitions the relays share, while no relay runs.",
            discussion: """
                Stop every relay, run this, then start the relays with --partitions (OUTBOX_PARTITIONS) set \
                to the new count; a relay started with another count than the outbox's refuses to start. \
                Pending and parked events move to their aggregate's partition under the new count (one \
                aggregate's events stay together, so their order holds) and every partition's lease is freed \
                with an epoch above every fence in the outbox. Nothing is published or lost; running it \
                again is harmless. Refuses while a relay's heartbeat is live.
                """)
        @OptionGroup var common: Common
        @Option(help: "The new number of partitions, 1-1024.") var partitions: Int
        @Flag(help: "Show what would change; change nothing (also while relays run).") var dryRun = false

        func validate() throws {
            guard (1...1024).contains(partitions) else { throw ValidationError("--partitions must be between 1 and 1024, got \(partitions)") }
        }

        func run() async throws {
            let result: RepartitionResult
            do {
                result = try await common.run { admin, _ in try await admin.repartition(to: partitions, dryRun: dryRun) }
            } catch let error as RelaysRunning {
                FileHandle.standardError.write(Data("outboxctl: \(error)\n".utf8))
                throw ExitCode(Exit.partial)
            }
            let from = result.from.map(String.init) ?? "none yet"
            if common.json {
                printJSON([
                    "from": result.from.map { .int64(Int64($0)) } ?? .null, "to": .int64(Int64(result.to)), "moved": .int64(Int64(result.moved)),
                    "epoch": .int64(result.epoch), "dryRun": .bool(result.dryRun),
                ])
            } else if result.dryRun {
                print("dry run: partitions \(from) → \(result.to); \(result.moved) pending or parked event(s) would move; nothing changed")
            } else {
                print("partitions \(from) → \(result.to); \(result.moved) pending or parked event(s) moved; leases free from epoch \(result.epoch)")
                print("start the relays with --partitions \(result.to) (OUTBOX_PARTITIONS=\(result.to))")
            }
        }
    }

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete delivered events delivered longer ago than --older-than.")
        @OptionGroup var common: Common
        @Option(help: "Retention, e.g. 30d as 720h.") var olderThan: String
        @Flag(help: "Show how many would go; delete nothing.") var dryRun = false

        func validate() throws { _ = try duration(olderThan, "--older-than") }

        func run() async throws {
            let retention = try duration(olderThan, "--older-than")
            let result = try await common.run { admin, _ in try await admin.purge(olderThan: retention, dryRun: dryRun) }
            report(result, verb: "deleted", json: common.json)
        }
    }
}

// MARK: - Dead letters

/// Where a consumer's dead letters are and how to reach the broker; the dlq commands need no database.
struct DeadLetterOptions: ParsableArguments {
    @Option(help: "The consumer's queue, e.g. inventory.order-created: its dead letters are in <queue>.dlq, and requeue puts them back here.")
    var queue: String

    @Option(help: "The dead-letter queue, when it is not <queue>.dlq.")
    var deadLetterQueue: String?

    @Option(name: SettingDeclaration.amqpURL.name, help: SettingDeclaration.amqpURL.argumentHelp)
    var amqpURL: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error (default error).")
    var logLevel: String?

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func validate() throws {
        if queue.isEmpty { throw ValidationError("--queue names the consumer's queue, e.g. inventory.order-created") }
        if deadLetterQueue?.isEmpty == true { throw ValidationError("--dead-letter-queue must not be empty") }
    }

    var deadLetterQueueName: String { deadLetterQueue ?? "\(queue).dlq" }

    /// Connects (exit 78 for bad settings, 69 when the broker cannot be reached), runs `body`, and
    /// maps a missing queue to exit 64 and a broker failure to 69.
    func run<R>(confirmTimeout: Duration = .seconds(10), _ body: (DeadLetters) async throws -> R) async throws -> R {
        let settings = Settings()
        let deadLetters: DeadLetters
        do {
            let logger = Runtime.bootstrap(label: "outboxctl", level: try settings.logLevel(logLevel ?? "error"))
            let amqp = try settings.amqp(amqpURL)
            await Runtime.checkLinks(program: "outboxctl", mongo: nil, amqp: amqp, broker: .exit, logger: logger)
            deadLetters = DeadLetters(queue: queue, deadLetterQueue: deadLetterQueue, amqp: amqp, confirmTimeout: confirmTimeout, logger: logger)
        } catch {
            Runtime.failConfiguration(error, program: "outboxctl")
        }
        do {
            return try await body(deadLetters)
        } catch let error as DeadLetterQueueMissing {
            let hint =
                error.queue == deadLetterQueueName
                ? "--queue names the consumer's queue (e.g. inventory.order-created), whose dead letters are in <queue>.dlq; --dead-letter-queue names another"
                : "--queue must name the consumer's queue, where requeued messages go"
            FileHandle.standardError.write(Data("outboxctl: \(error): \(hint)\n".utf8))
            throw ExitCode.validationFailure
        } catch let error as AMQPError {
            Runtime.fail(error, program: "outboxctl", status: error.cause.isConfiguration ? Runtime.configurationExitStatus : Exit.unavailable)
        }
    }
}

/// Which dead letters a dlq command applies to.
struct DeadLetterFilters: ParsableArguments {
    @Option(name: .customLong("id"), help: "Message id (repeatable).")
    var ids: [String] = []

    @Option(help: "Only dead letters whose reason contains this text, ignoring case (x-error; for a message the broker dead-lettered, x-death's reason such as rejected or expired).")
    var reason: String?

    @Option(help: """
        Only dead letters dead-lettered longer ago than this, e.g. 10m, 2h (time from x-dead-lettered-at, \
        else the broker's x-death, else the event's x-occurred-at; one of unknown time never matches).
        """)
    var olderThan: String?

    @Option(help: "At most this many dead letters, the first in the queue.")
    var limit: Int?

    func filter() throws -> DeadLetterFilter {
        DeadLetterFilter(ids: ids, reason: reason, olderThan: try olderThan.map { try duration($0, "--older-than") }, limit: limit)
    }

    func validate() throws {
        _ = try filter()
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1, got \(limit)") }
    }
}

func deadLetterRows(_ letters: [DeadLetter]) -> [[String]] {
    letters.map { letter in
        let when = age(letter.deadLetteredAt) + (letter.timeSource == .event ? " (event)" : "")
        let reason = (letter.reason ?? "-").replacingOccurrences(of: "\n", with: " ")
        return [
            letter.messageId ?? "-", letter.type ?? "-", letter.consumer ?? (letter.byBroker ? "(broker)" : "-"),
            letter.attempts.map(String.init) ?? "-", when, reason.count > 60 ? String(reason.prefix(59)) + "…" : reason,
        ]
    }
}

/// One dead letter in full: its fields, every header and the body (JSON indented).
func printDeadLetter(_ letter: DeadLetter, queue: String) {
    func row(_ name: String, _ value: String) { print(name.padding(toLength: 17, withPad: " ", startingAt: 0) + value) }
    let properties = letter.properties
    row("message id", letter.messageId ?? "-")
    row("type", letter.type ?? "-")
    row("queue", queue)
    row("dead-lettered by", letter.byBroker ? "the broker" : (letter.consumer.map { "consumer \($0)" } ?? "-"))
    row("attempts", letter.attempts.map(String.init) ?? "-")
    row("reason", letter.reason ?? "-")
    if let at = letter.deadLetteredAt, let source = letter.timeSource {
        let iso = ExtendedJSON.iso8601(milliseconds: Int64((at.timeIntervalSince1970 * 1000).rounded()))
        row("dead-lettered", "\(iso) (\(age(at)) ago, from \(source.rawValue))")
    } else {
        row("dead-lettered", "-")
    }
    row("routing key", letter.originalRoutingKey ?? "-")
    row("correlation id", properties.correlationId ?? "-")
    row("content type", properties.contentType ?? "-")
    if let encoding = properties.contentEncoding { row("content encoding", encoding) }
    row("redelivered", letter.redelivered ? "yes" : "no")
    print("headers")
    let width = (properties.headers.keys.map(\.count).max() ?? 0) + 2
    for (name, value) in properties.headers.sorted(by: { $0.key < $1.key }) {
        let text = value.stringValue ?? ExtendedJSON.render(DeadLetter.bson(value))
        print("  " + name.padding(toLength: width, withPad: " ", startingAt: 0) + text)
    }
    if let json = try? JSONValue.parse(letter.body) {
        print("body (\(letter.body.count) bytes, JSON)")
        print(prettyJSON(json))
    } else if let text = String(validating: letter.body, as: UTF8.self) {
        print("body (\(letter.body.count) bytes, text)")
        print(text)
    } else {
        print("body (\(letter.body.count) bytes, base64)")
        print(Data(letter.body).base64EncodedString())
    }
}

/// JSON indented by two spaces; numbers keep their text.
func prettyJSON(_ value: JSONValue, indent: String = "") -> String {
    let inner = indent + "  "
    switch value {
    case .null: return "null"
    case .bool(let b): return b ? "true" : "false"
    case .number(let text): return text
    case .string(let s): return ExtendedJSON.render(.string(s))
    case .array(let values):
        guard !values.isEmpty else { return "[]" }
        return "[\n" + values.map { inner + prettyJSON($0, indent: inner) }.joined(separator: ",\n") + "\n\(indent)]"
    case .object(let fields):
        guard !fields.isEmpty else { return "{}" }
        let lines = fields.map { inner + ExtendedJSON.render(.string($0.0)) + ": " + prettyJSON($0.1, indent: inner) }
        return "{\n" + lines.joined(separator: ",\n") + "\n\(indent)}"
    }
}

func report(_ result: DeadLetterResult, options: DeadLetterOptions, verb: String) {
    let ids = result.selected.map { $0.messageId ?? "-" }
    let queue = options.deadLetterQueueName
    if options.json {
        printJSON([
            "queue": .string(options.queue), "deadLetterQueue": .string(queue), "scanned": .int64(Int64(result.scanned)),
            "matched": .int64(Int64(result.selected.count)), "changed": .int64(Int64(result.changed)), "dryRun": .bool(result.dryRun),
            "ids": .array(ids.map { .string($0) }),
            "failures": .array(result.failures.map { ["messageId": $0.messageId.map { .string($0) } ?? .null, "error": .string($0.reason)] }),
            "interrupted": result.interrupted.map { .string($0) } ?? .null,
        ])
        return
    }
    if result.dryRun {
        print("dry run: \(result.selected.count) of \(result.scanned) dead letter(s) in \(queue) would be \(verb); nothing changed")
        guard !result.selected.isEmpty else { return }
        printTable(["ID", "TYPE", "CONSUMER", "ATTEMPTS", "AGE", "REASON"], deadLetterRows(Array(result.selected.prefix(20))))
        if result.selected.count > 20 { print("… \(result.selected.count - 20) more") }
        return
    }
    print("\(result.changed) of \(result.selected.count) selected dead letter(s) \(verb) (\(result.scanned) read from \(queue))")
    for failure in result.failures { print("  not \(verb): \(failure.messageId ?? "-"): \(failure.reason)") }
    if let interrupted = result.interrupted {
        print("stopped early: \(interrupted); the rest stay in \(queue)")
    }
}

extension OutboxCtl {
    struct Dlq: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A consumer's dead letters: list, show, requeue to the consumer's queue, purge.",
            discussion: """
                A consumer dead-letters a message it cannot handle to its own queue <queue>.dlq, with the \
                reason (x-error), its tries (x-attempts), the routing key (x-original-routing-key), its name \
                (x-consumer) and the time (x-dead-lettered-at); the broker dead-letters rejected or expired \
                messages there too (x-death). --queue names the consumer's queue, e.g. inventory.order-created.

                Every command reads the dead letters with basic.get without ack, at most as many as the queue \
                held when it started, and puts back all it does not move or remove: list and show leave the \
                queue as it was (order aside). requeue removes a dead letter only after the broker confirmed \
                its copy on the consumer's queue. Needs AMQP_URL (or --amqp-url) only.

                Exit status: 0 done, 1 done in part (a dead letter not requeued or not found), 64 bad \
                arguments (also: no such queue), 69 broker unreachable, 78 bad configuration.
                """,
            subcommands: [List.self, Show.self, Requeue.self, Purge.self])
    }
}

extension OutboxCtl.Dlq {
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List dead letters: id, type, consumer, attempts, age, reason; the queue is left as it was.",
            discussion: "The table cuts the reason short; --json prints every dead letter in full (headers and body too).")
        @OptionGroup var options: DeadLetterOptions
        @OptionGroup var filters: DeadLetterFilters

        func run() async throws {
            let filter = try filters.filter()
            let (letters, scanned) = try await options.run { try await $0.list(filter) }
            if options.json {
                printJSON(.array(letters.map { .document($0.record) }))
                return
            }
            guard scanned > 0 else {
                print("no dead letters in \(options.deadLetterQueueName)")
                return
            }
            printTable(["ID", "TYPE", "CONSUMER", "ATTEMPTS", "AGE", "REASON"], deadLetterRows(letters))
            print("\(letters.count) of \(scanned) dead letter(s) in \(options.deadLetterQueueName) listed; the queue is unchanged")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a dead letter in full: properties, every header, the body (JSON indented).",
            discussion: "A message dead-lettered more than once is in the queue more than once: each copy is shown (--json: an array).")
        @OptionGroup var options: DeadLetterOptions
        @Option(name: .customLong("id"), help: "Message id.") var id: String

        func run() async throws {
            let (letters, _) = try await options.run { try await $0.list(DeadLetterFilter(ids: [id])) }
            guard !letters.isEmpty else {
                FileHandle.standardError.write(Data("outboxctl: no dead letter \(id) in \(options.deadLetterQueueName)\n".utf8))
                throw ExitCode(Exit.partial)
            }
            if options.json {
                printJSON(.array(letters.map { .document($0.record) }))
                return
            }
            for (index, letter) in letters.enumerated() {
                if index > 0 { print("") }
                printDeadLetter(letter, queue: options.deadLetterQueueName)
            }
        }
    }

    struct Requeue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Put dead letters back on the consumer's queue, then remove them from the dead-letter queue.",
            discussion: """
                Fix the cause first (see the reason with list or show). Each selected dead letter (every one \
                without --id, --reason or --older-than) is published to the consumer's queue through the \
                default exchange with its original message id, type, content type, correlation id, headers \
                and body, without the headers dead-lettering added (x-error, x-attempts, x-consumer, \
                x-original-routing-key, x-dead-lettered-at, x-death, ...), and removed from the dead-letter \
                queue only after the broker confirmed the copy. One not confirmed stays where it is and the \
                exit status is 1. A message the consumer has applied before is skipped by its inbox.
                """)
        @OptionGroup var options: DeadLetterOptions
        @OptionGroup var filters: DeadLetterFilters
        @Option(help: "How long to wait for the broker to confirm each message.") var confirmTimeout = "10s"
        @Flag(help: "Show what would be requeued; change nothing.") var dryRun = false

        func validate() throws { _ = try duration(confirmTimeout, "--confirm-timeout") }

        func run() async throws {
            let filter = try filters.filter()
            let timeout = try duration(confirmTimeout, "--confirm-timeout")
            let result = try await options.run(confirmTimeout: timeout) { try await $0.requeue(filter, dryRun: dryRun) }
            report(result, options: options, verb: "requeued to \(options.queue)")
            if !result.isComplete { throw ExitCode(Exit.partial) }
        }
    }

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove dead letters for good: the selected ones, or every one without --id, --reason or --older-than.")
        @OptionGroup var options: DeadLetterOptions
        @OptionGroup var filters: DeadLetterFilters
        @Flag(help: "Show what would be removed; remove nothing.") var dryRun = false

        func run() async throws {
            let filter = try filters.filter()
            let result = try await options.run { try await $0.purge(filter, dryRun: dryRun) }
            report(result, options: options, verb: "removed")
            if !result.isComplete { throw ExitCode(Exit.partial) }
        }
    }
}

// MARK: - Health probe


extension OutboxCtl {
    /// The container health check: the images hold no shell, curl or wget.
    struct Probe: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Ask a health endpoint of the relay or a consumer; exit 0 when it answers 200 (container health checks).",
            discussion: """
                Prints the answer's status line and body. Exit status 0 when the endpoint answered 200, \
                1 otherwise (another status, no answer, refused), as HEALTHCHECK and probes expect. \
                Without a URL it asks http://RELAY_HTTP_ADDRESS/health/ready, the address the relay of the \
                same container listens on (a wildcard host such as 0.0.0.0 is asked on the loopback interface).
                """)

        @Argument(help: "http://host:port/path to ask (default: /health/ready at RELAY_HTTP_ADDRESS, or 127.0.0.1:9400).")
        var url: String?

        @Flag(help: "Ask /health/live instead of /health/ready when no URL is given.")
        var live = false

        @Option(help: "Seconds to wait for the connection and for each read.")
        var timeout = 3

        func validate() throws {
            guard (1...60).contains(timeout) else { throw ValidationError("--timeout must be between 1 and 60 seconds") }
        }

        func run() throws {
            let target: HealthProbe.Target
            do {
                if let url {
                    target = try HealthProbe.target(url: url)
                } else {
                    let address = ProcessInfo.processInfo.environment["RELAY_HTTP_ADDRESS"].flatMap { $0.isEmpty ? nil : $0 } ?? "127.0.0.1:9400"
                    target = try HealthProbe.target(listenAddress: address, path: live ? "/health/live" : "/health/ready")
                }
            } catch {
                throw ValidationError("\(error)")
            }
            do {
                let answer = try HealthProbe.get(target, timeoutSeconds: timeout)
                print(answer.text)
                if answer.status != 200 { throw ExitCode(1) }
            } catch let failure as HealthProbe.Failure {
                print("unhealthy: \(failure)")
                throw ExitCode(1)
            }
        }
    }
}
