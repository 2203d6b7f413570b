import ArgumentParser
import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import OutboxOps
import OutboxRuntime

/// The commands on outbox events: set-up, status, listing, history, and repairs (retry, park,
/// unpark, replay, purge, repartition).
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
        @Flag(help: "Also create the operator console's index of parked events by error (fast group pages over large parked backlogs).")
        var console = false
        @Flag(help: "Say what would be done; change nothing.") var dryRun = false

        func run() async throws {
            let result = try await common.run { admin, _ in try await admin.initialize(validator: validator, consoleIndexes: console, dryRun: dryRun)
            }
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
        static let configuration = CommandConfiguration(
            abstract: "Backlog, oldest pending age, parked count, deliveries in the last minute, partition leases.")
        @OptionGroup var common: Common

        func run() async throws {
            // Each outbox the settings name (OUTBOX_SOURCES), or the one chosen.
            let statuses = try await common.runEach(several: true) { source, admin, _ in (source, try await admin.status()) }
            if common.json {
                guard statuses.count > 1 else { return printJSON(.document(statuses[0].1.document)) }
                printJSON(
                    .document([
                        "sources": .array(
                            statuses.map { source, status in
                                var document = status.document
                                document["source"] = .string(source.description)
                                return .document(document)
                            })
                    ]))
                return
            }
            for (index, (source, status)) in statuses.enumerated() {
                if statuses.count > 1 { print("\(index == 0 ? "" : "\n")source               \(source)") }
                show(status)
            }
        }

        func show(_ status: OutboxStatus) {
            print("pending              \(status.pending) (\(status.due) due now, \(status.unseen) not yet seen by a relay)")
            print("oldest pending age   \(status.oldestPendingAge.map { String(format: "%.1f s", $0) } ?? "-")")
            print("parked               \(status.parked)")
            if status.scheduled > 0 {
                let next = status.nextScheduled.map { String(format: "%.1f s", $0.timeIntervalSince(status.databaseTime)) } ?? "-"
                print("scheduled            \(status.scheduled) (the soonest due in \(next): outboxctl list --scheduled)")
            }
            if status.cancelled > 0 { print("cancelled            \(status.cancelled) (cancelled while scheduled, never published)") }
            if status.expired > 0 { print("expired              \(status.expired) (past their expiresAt, never published)") }
            print("delivered            \(status.delivered) (\(status.deliveredLastMinute) in the last minute)")
            if status.unwritable > 0 {
                print("unwritable           \(status.unwritable) (relays can neither mark nor park them: outboxctl unwritable)")
            }
            print("")
            printTable(
                ["PARTITION", "OWNER", "EPOCH", "EXPIRES IN"],
                status.leases.map { lease in
                    [
                        String(lease.partition), lease.owner ?? "-", String(lease.epoch),
                        lease.owner == nil ? "-" : (lease.expiresIn < 0 ? "expired" : String(format: "%.1f s", lease.expiresIn)),
                    ]
                })
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List events by status, type, aggregate and age.")
        @OptionGroup var common: Common
        @OptionGroup var filters: Filters
        @Option(help: "\(OutboxSchema.Status.known.joined(separator: ", ")).") var status: String?
        @Flag(help: "Scheduled events (waiting for their deliverAt), soonest first, with when each is due.") var scheduled = false
        @Option(help: "At most this many events.") var limit = 50

        func validate() throws {
            _ = try statusOption(status)
            if scheduled && status != nil && status != OutboxSchema.Status.scheduled {
                throw ValidationError("--scheduled lists scheduled events; leave out --status \(status!)")
            }
        }

        func run() async throws {
            let filter = try filters.filter(status: scheduled ? OutboxSchema.Status.scheduled : statusOption(status))
            let events = try await common.run { admin, _ in try await admin.list(filter, limit: limit) }
            if common.json {
                printJSON(.array(events.map { .document($0) }))
            } else if filter.status == OutboxSchema.Status.scheduled {
                printTable(scheduledHeader, scheduledRows(events))
            } else {
                printTable(eventHeader, eventRows(events))
            }
        }
    }

    struct Unwritable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Documents a relay could neither mark nor park (it skips them): the server's refusal, which relay, when.",
            discussion: """
                A relay that cannot write an event's outcome, not even as parked with plain sets, stops \
                publishing it and records it here. Mend the document (or the validator that refuses the \
                relay's fields); a relay that has not skipped it settles it at its next pass, and every \
                relay does after a restart.
                """)
        @OptionGroup var common: Common

        func run() async throws {
            let records = try await common.run { admin, _ in try await admin.unwritable() }
            if common.json {
                printJSON(
                    .array(
                        records.map { record in
                            [
                                "id": record.id, "relay": .string(record.relay), "at": record.at.map { .date($0) } ?? .null,
                                "error": .string(record.error), "status": record.status.map { .string($0) } ?? .null,
                            ]
                        }))
                return
            }
            printTable(
                ["ID", "STATUS NOW", "RELAY", "AGE", "ERROR"],
                records.map {
                    [OutboxDocument.messageId(of: $0.id) ?? ExtendedJSON.render($0.id), $0.status ?? "gone", $0.relay, age($0.at), $0.error]
                })
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
        static let configuration = CommandConfiguration(
            abstract: "Return parked events to pending (due now, attempts reset); all parked ones with --all.")
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

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Cancel scheduled events before they are due: they stay in the history as cancelled and are never published.",
            discussion: """
                Only an event waiting for its deliverAt, due more than a second later (by the database's \
                clock), can be cancelled, whether a relay has seen it or not. One due sooner may be on its \
                way and is not cancelled; the command says so and exits 1.
                """)
        @OptionGroup var common: Common
        @Argument(help: "Event ids.") var ids: [String]
        @Flag(help: "Show what would be cancelled; change nothing.") var dryRun = false

        func validate() throws {
            if ids.isEmpty { throw ValidationError("say which events: one or more event ids") }
        }

        func run() async throws {
            let (result, left) = try await common.run { admin, _ in
                let result = try await admin.cancel(ids: ids, dryRun: dryRun)
                // What the others are now, so the operator learns why they were not cancelled.
                var left: [(id: String, status: String, why: String)] = []
                for id in ids where !result.ids.contains(id) {
                    guard let event = try await admin.show(id: id) else {
                        left.append((id, "no such event", "nothing to cancel"))
                        continue
                    }
                    let status = event["status"]?.stringValue
                    // Scheduled, or not yet seen with a deliverAt: it was due too soon.
                    let waiting = status == OutboxSchema.Status.scheduled || (status == nil && event["deliverAt"]?.dateValue != nil)
                    let why =
                        waiting
                        ? "due within a second: too late to cancel"
                        : status == nil ? "it has no deliverAt: only scheduled events can be cancelled" : "only scheduled events can be cancelled"
                    left.append((id, status ?? "not yet seen", why))
                }
                return (result, left)
            }
            report(result, verb: "cancelled", json: common.json)
            if !common.json {
                for (id, status, why) in left { print("  not cancelled: \(id) (\(status); \(why))") }
            }
            if !left.isEmpty || (!result.dryRun && result.changed < result.matched) { throw ExitCode(Exit.partial) }
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
