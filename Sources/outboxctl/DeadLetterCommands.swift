import ArgumentParser
import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import OutboxOps
import OutboxRuntime

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

    @Option(
        help:
            "Only dead letters whose reason contains this text, ignoring case (x-error; for a message the broker dead-lettered, x-death's reason such as rejected or expired)."
    )
    var reason: String?

    @Option(
        help: """
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
