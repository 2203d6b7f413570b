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
            Init.self, Status.self, List.self, Unwritable.self, Show.self, Retry.self, Park.self, Unpark.self, Cancel.self, History.self, Replay.self,
            Purge.self,
            Repartition.self, Dlq.self, ConsoleCommand.self, Audit.self, Probe.self, SettingsCommand.self,
        ])
}
