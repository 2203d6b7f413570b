import ArgumentParser
import Foundation
import Logging
import Outbox
import OutboxConsole
import OutboxOps
import OutboxMongo
import OutboxRuntime
import ServiceLifecycle

extension OutboxCtl {
    /// The operator console in a browser, and its JSON API, without a shell or the database's
    /// credentials on the operator's side.
    struct ConsoleCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "console",
            abstract:
                "Serve the operator console: backlog, parked events grouped by error, one event's history, retry/park/unpark with preview, the audit trail.",
            discussion: """
                Pages at http://LISTEN/ and a JSON API under /api (docs/console-api.yaml). Sign in with a token \
                of OUTBOX_CONSOLE_TOKENS_FILE (role:token or role:name:token a line): viewers read, operators \
                also act. Every action, previews included, is recorded in the outbox_audit collection \
                (outboxctl audit). Without tokens only with --no-auth, on a loopback address. Serve it over \
                HTTPS through a TLS-terminating proxy and set --secure-cookies.
                """)
        @OptionGroup var mongo: MongoOptions
        @OptionGroup var outbox: SourceOptions
        @Option(name: SettingDeclaration.consoleListen.name, help: SettingDeclaration.consoleListen.argumentHelp) var listen: String?
        @Option(name: SettingDeclaration.consoleTokensFile.name, help: SettingDeclaration.consoleTokensFile.argumentHelp) var tokensFile: String?
        @Flag(name: SettingDeclaration.consoleSecureCookies.name, inversion: .prefixedNo, help: SettingDeclaration.consoleSecureCookies.argumentHelp)
        var secureCookies: Bool?
        @Option(name: SettingDeclaration.consoleTLSCertFile.name, help: SettingDeclaration.consoleTLSCertFile.argumentHelp) var tlsCertFile: String?
        @Option(name: SettingDeclaration.consoleTLSKeyFile.name, help: SettingDeclaration.consoleTLSKeyFile.argumentHelp) var tlsKeyFile: String?
        @Option(name: SettingDeclaration.consoleQueues.name, help: SettingDeclaration.consoleQueues.argumentHelp) var queues: String?
        @Option(name: SettingDeclaration.amqpURL.name, help: SettingDeclaration.amqpURL.argumentHelp) var amqpURL: String?
        @Flag(help: "Serve without authentication: whoever reaches the address may act. Only on a loopback address.") var noAuth = false

        func run() async throws {
            let settings = Settings()
            let logger: Logger
            let console: Console
            let application: any Service
            let address: (host: String, port: Int)
            do {
                logger = Runtime.bootstrap(label: "outboxctl-console", level: try settings.logLevel(mongo.logLevel ?? "info"))
                let listenSetting = SettingDeclaration.consoleListen
                address = try OpsServer.address(try settings.string(listen, listenSetting), setting: listenSetting.label)
                let tokens = try consoleTokens(settings, host: address.host)
                // One outbox a console: several named, --source chooses.
                let source = try outbox.source(settings, mongo: mongo)
                let pool = try settings.mongoPool(
                    uri: try mongo.resolvedURI(settings), database: source.database, appName: "outboxctl-console", threads: 2)
                let queueNames = (queues ?? Setting.fromEnvironment(SettingDeclaration.consoleQueues.env, settings.environment) ?? "")
                    .split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
                // The broker only for dead letters: a console without queues needs no AMQP_URL.
                let amqp = queueNames.isEmpty ? nil : try settings.amqp(amqpURL)
                await Runtime.checkLinks(program: "outboxctl console", mongo: pool, amqp: amqp, broker: .exit, logger: logger)
                console = Console(
                    admin: OutboxAdmin(pool: pool, collection: source.collection), tokens: tokens,
                    deadLetterQueues: amqp.map { amqp in queueNames.map { DeadLetters(queue: $0, amqp: amqp, logger: logger) } } ?? [],
                    tls: try consoleTLS(settings), secureCookies: try settings.bool(secureCookies, .consoleSecureCookies), logger: logger)
                let authentication = noAuth ? "none (--no-auth)" : "tokens"
                application = try console.application(host: address.host, port: address.port) { [scheme = console.scheme] port in
                    logger.notice(
                        "console listening",
                        metadata: ["url": .string("\(scheme)://\(address.host):\(port)/"), "authentication": .string(authentication)])
                }
            } catch {
                Runtime.failConfiguration(error, program: "outboxctl console")
            }
            try await Runtime.runServices([application], shutdownTimeout: .seconds(10), logger: logger)
        }

        /// The certificate and key, or nil for plain HTTP; one without the other is an error.
        func consoleTLS(_ settings: Settings) throws -> ConsoleTLS? {
            let certificate = SettingDeclaration.consoleTLSCertFile, key = SettingDeclaration.consoleTLSKeyFile
            let certificatePath = tlsCertFile ?? Setting.fromEnvironment(certificate.env, settings.environment)
            let keyPath = tlsKeyFile ?? Setting.fromEnvironment(key.env, settings.environment)
            switch (certificatePath, keyPath) {
            case (nil, nil): return nil
            case (let certificatePath?, let keyPath?):
                return try ConsoleTLS(
                    certificateFile: certificatePath, keyFile: keyPath, certificateSetting: certificate.label, keySetting: key.label)
            case (nil, _?): throw ConfigurationError(setting: certificate.label, reason: "is required with \(key.label)")
            case (_?, nil): throw ConfigurationError(setting: key.label, reason: "is required with \(certificate.label)")
            }
        }

        /// The tokens, or nil with --no-auth (refused unless the address is a loopback one).
        func consoleTokens(_ settings: Settings, host: String) throws -> ConsoleTokens? {
            let setting = SettingDeclaration.consoleTokensFile
            let path = tokensFile ?? Setting.fromEnvironment(setting.env, settings.environment)
            if noAuth {
                guard ["127.0.0.1", "::1", "localhost"].contains(host) || host.hasPrefix("127.") else {
                    throw ConfigurationError(setting: "--no-auth", reason: "serves without authentication on a loopback address only, not \(host)")
                }
                guard path == nil else { throw ConfigurationError(setting: "--no-auth", reason: "\(setting.label) is set too: choose one") }
                return nil
            }
            guard let path else {
                throw ConfigurationError(setting: setting.label, reason: "is required (or --no-auth on a loopback address)")
            }
            return try ConsoleTokens(parsing: try settings.readFile(path, setting: setting.label), setting: setting.label)
        }
    }

    struct Audit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The console's audit trail: who retried, parked, unparked, cancelled or purged what, and when, newest first.")
        @OptionGroup var common: Common
        @Option(help: "Only this action: \(Self.actions.joined(separator: ", ")).") var action: String?
        @Option(help: "At most this many entries.") var limit = 50

        static let actions = ConsoleAction.allCases.map(\.rawValue) + DeadLetterAction.allCases.map(\.audited)

        func validate() throws {
            if let action, !Self.actions.contains(action) {
                throw ValidationError("--action is one of \(Self.actions.joined(separator: ", ")), not '\(action)'")
            }
        }

        func run() async throws {
            let entries = try await common.run { admin, _ in try await AuditTrail(pool: admin.pool).recent(limit: limit, action: action) }
            if common.json {
                printJSON(.array(entries.map { .document($0.document) }))
                return
            }
            printTable(
                ["TIME", "ACTOR", "ROLE", "ACTION", "SELECTION", "MATCHED", "CHANGED", "DRY RUN", "VIA"],
                entries.map { entry in
                    [
                        ExtendedJSON.render(.date(entry.at)).trimmingCharacters(in: ["\""]), entry.actor, entry.role, entry.action,
                        String(ExtendedJSON.render(.document(entry.selection)).prefix(60)), String(entry.matched), String(entry.changed),
                        entry.dryRun ? "yes" : "no", entry.via,
                    ]
                })
        }
    }
}
