import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import ServiceLifecycle

/// The whole of the relay executable: settings, logging, metrics and health, the store, the
/// leases, the publisher and the relay loop, graceful shutdown; or one drain for `--exit-when-idle`.
public enum RelayProgram {
    static let program = "outbox-relay"

    public static let discussion = """
        Polls the outbox collection for pending events, publishes them to their exchange \
        (persistent, mandatory, message_id = event id) on a confirm channel, and marks an event \
        delivered only after the broker acked it. Nacked and timed-out publishes are retried with \
        capped exponential backoff and stay pending (time fixes them); returned (unroutable) ones \
        are parked after --max-attempts. While the broker blocks publishing (a resource alarm) \
        nothing is sent and no attempt is counted. \
        Every option can also be set by the environment variable named in its help; \
        'outboxctl settings' lists every setting, those set only by the environment too. \
        SIGTERM or SIGINT stops fetching, finishes the batch in flight and exits.
        """ + " " + SettingDeclaration.tracingHelp

    /// The parts a relay runs with, built from its settings.
    struct Parts {
        var logger: Logger
        var settings: RelaySettings
        var publisher: ConfirmPublisher
        /// The sources named, and those discovery found at start, prepared.
        var sources: [RelaySource]
        /// Runs the sources (and those discovery finds later).
        var supervisor: SourceSupervisor
        /// The span exporter, when tracing is on; also the first of `services`.
        var tracing: (any Service)?
        var services: [any Service]
    }

    /// `tracing` starts the spans' exporter (`TracingBootstrap.start`); nil: no tracing.
    public static func run(mongo: MongoOptions, options: RelayOptions, tracing: Runtime.StartTracing? = nil) async throws {
        let parts: Parts
        do {
            parts = try await assemble(mongo: mongo, options: options, tracing: tracing)
        } catch {
            Runtime.failConfiguration(error, program: program)
        }
        if options.exitWhenIdle {
            // The span exporter runs beside the drain; the drain's end shuts it down, and it
            // exports the spans the drain ended.
            let services: [ServiceGroupConfiguration.ServiceConfiguration] =
                (parts.tracing.map { [.init(service: $0)] } ?? []) + [
                    .init(service: Drain(parts: parts), successTerminationBehavior: .gracefullyShutdownGroup)
                ]
            var configuration = ServiceGroupConfiguration(services: services, logger: parts.logger)
            configuration.maximumGracefulShutdownDuration = parts.settings.shutdownTimeout
            try await ServiceGroup(configuration: configuration).run()
            return
        }
        // Shut down in reverse order: the sources first (each finishes its batch and releases its
        // leases), then the HTTP endpoints, then the span exporter.
        try await Runtime.runServices(parts.services + [parts.supervisor], shutdownTimeout: parts.settings.shutdownTimeout, logger: parts.logger)
        await parts.publisher.close()
    }

    /// Reads the settings, waits for the links, finds and prepares the sources and builds the
    /// services beside them.
    static func assemble(mongo: MongoOptions, options: RelayOptions, tracing startTracing: Runtime.StartTracing?) async throws -> Parts {
        let environment = Settings()
        let logger = Runtime.bootstrap(label: program, level: try environment.logLevel(mongo.logLevel))
        let registry = OpsServer.bootstrapMetrics(eventTypes: try environment.int(options.metricsEventTypes, .metricsEventTypes))
        let tracing = try startTracing?(program, ProcessInfo.processInfo.environment, logger) ?? nil
        let settings = try options.resolve(environment, mongo: mongo)
        if settings.confirmTimeoutAsSet > settings.publisher.confirmTimeout {
            logger.notice(
                "confirm timeout lowered to the lease TTL",
                metadata: [LogKey.relayConfirmTimeout: "\(settings.confirmTimeoutAsSet)", LogKey.relayLeaseTTL: "\(settings.leaseTTL)"])
        }
        // For the links, readiness and discovery; each source has a pool of its own.
        let control = try environment.mongoPool(uri: settings.uri, database: "admin", appName: program, threads: 1)
        await Runtime.checkLinks(program: program, mongo: control, amqp: settings.amqp, broker: .wait, logger: logger)
        let publisher = ConfirmPublisher(configuration: settings.amqp, options: settings.publisher, logger: logger)
        var named = settings.sources
        if let finder = settings.discovery {
            let found = try await Runtime.retryingAtStart("looking for outboxes", logger: logger) { try await finder.find(on: control) }
            var refused: Set<OutboxSource> = []
            named += SourceSupervisor.additions(found, to: named, refused: &refused, logger: logger)
            logger.info(
                "outboxes found", metadata: [LogKey.outboxSources: "\(found.map(\.description).joined(separator: ","))"])
        }
        // Fewer threads a source when there are (or may come) several.
        let threads = named.count == 1 && settings.discovery == nil ? 4 : 2
        // The sources share the store: a quiet one's work first, draining ones share the batch size.
        let shares = StoreShares()
        // With discovery, one stream over every database wakes the sources of its collection
        // name: a stream per source costs the store about six times as much.
        let streamed = settings.changeStream ? settings.discovery?.collection : nil
        let start: @Sendable (OutboxSource) async throws -> RelaySource = { source in
            let parts = try RelaySource(
                source, settings: settings, environment: environment, threads: threads, publisher: publisher, shares: shares,
                sharedStream: source.collection == streamed, logger: logger)
            try await parts.prepare(settings)
            return parts
        }
        var sources: [RelaySource] = []
        for source in named { sources.append(try await start(source)) }
        let supervisor = SourceSupervisor(
            sources: sources, configured: Set(settings.sources),
            discovery: settings.discovery.map { .init(finder: $0, pool: control, interval: settings.discoverInterval, start: start) },
            shutdownTimeout: settings.shutdownTimeout, logger: logger)
        // The span exporter first: it stops last and exports what the relay ended.
        var services: [any Service] =
            (tracing.map { [$0] } ?? []) + [ConnectionGauges(probes: [("broker", { [publisher] in publisher.isConnectedNow })])]
        if let streamed {
            services.append(
                ChangeStreamHint(everyDatabase: streamed, pool: control, logger: logger) {
                    var wakes: [String: WakeSignal] = [:]
                    for served in supervisor.sources where served.source.collection == streamed { wakes[served.source.database] = served.wake }
                    return wakes
                })
        }
        if let endpoint = settings.httpEndpoint {
            services.append(
                OpsServer.make(
                    host: endpoint.host, port: endpoint.port, registry: registry, logger: logger,
                    live: { supervisor.sources.lazy.map(\.watchdog.status).first { $0 != .live } ?? .live }
                ) { [publisher, control] in
                    let database = (try? await control.ping()) != nil
                    let broker: OpsServer.Check = !publisher.isConnectedNow ? .down : publisher.isBlockedNow ? .blocked : .up
                    return ["database": .init(up: database), "broker": broker].merging(
                        RelaySource.checks(supervisor.sources, discovering: settings.discovery != nil)
                    ) { first, _ in first }
                })
        }
        logConfiguration(settings, sources: named, logger: logger)
        return Parts(
            logger: logger, settings: settings, publisher: publisher, sources: sources, supervisor: supervisor, tracing: tracing, services: services)
    }

    static func logConfiguration(_ settings: RelaySettings, sources: [OutboxSource], logger: Logger) {
        logger.info(
            "configuration",
            metadata: [
                LogKey.outboxSources: "\(sources.map(\.description).joined(separator: ","))",
                LogKey.amqpEndpoint: "\(settings.amqp.endpoint)",
                LogKey.outboxDefaultExchange: "\(settings.routing.defaultExchange)",
                LogKey.outboxBatchSize: "\(settings.relay.batchSize)", LogKey.outboxBatchMaxBytes: "\(settings.relay.batchMaxBytes)",
                LogKey.amqpMaxInFlight: "\(settings.publisher.maxInFlight)",
                LogKey.relayID: "\(settings.owner)", LogKey.outboxPartitions: "\(settings.partitions)", LogKey.relayLeaseTTL: "\(settings.leaseTTL)",
                LogKey.relayLivenessTimeout: "\(settings.livenessTimeout)",
                LogKey.relayParkTransientAfter: "\(settings.relay.retryPolicy.parkTransientAfter.map { "\($0)" } ?? "off")",
                LogKey.relayChangeStream: "\(settings.changeStream)", LogKey.relayBodyFormat: "\(settings.body.format)",
                LogKey.relayDecimalFormat: "\(settings.body.decimals)",
            ])
    }

    /// `--exit-when-idle` as a service: when the drain is over, the services beside it shut down.
    struct Drain: Service {
        let parts: Parts
        func run() async throws {
            // Every source drains at once; the line adds them up.
            let drained = try await withThrowingTaskGroup(of: Drained.self) { group in
                for source in parts.sources { group.addTask { try await drainUntilIdle(source) } }
                return try await group.reduce(into: Drained()) { total, one in
                    total.delivered += one.delivered
                    total.read += one.read
                    total.lastDelivery = max(total.lastDelivery, one.lastDelivery)
                }
            }
            await parts.publisher.close()
            // What this relay delivered, what it read for it, and when it marked its last event
            // delivered (milliseconds since the epoch; 0: none).
            print(
                "outbox-relay drained: events_delivered=\(drained.delivered) documents_read=\(drained.read) last_delivery_ms=\(drained.lastDelivery)"
            )
        }
    }

    /// What the drain of a source did.
    struct Drained: Sendable {
        var delivered = 0
        var read = 0
        /// When the last event was marked delivered, milliseconds since the epoch; 0: none.
        var lastDelivery: Int64 = 0
    }

    /// `--exit-when-idle`, one source: drains until nothing is due anywhere in its outbox. The
    /// leases are taken and kept renewed beside the drain, as in normal operation.
    static func drainUntilIdle(_ parts: RelaySource) async throws -> Drained {
        let (relay, leases, store, logger) = (parts.relay, parts.leases, parts.store, parts.logger)
        let renewals = Task { try await leases.run() }
        // Done when a pass over held leases found nothing due and nothing is due anywhere in the
        // outbox; without leases (not yet taken, or lapsed while the store was slow) there is
        // nothing to conclude: the renewals take them. A failing store is waited out as in
        // normal operation (the pass is tried again).
        var delivered = 0
        var lastDelivery: Date?
        var failures = 0
        // How long to wait before looking again while other relays still drain: it grows, as
        // counting what is due anywhere reads every pending event on some servers.
        var idleWait = Duration.milliseconds(100)
        while true {
            do {
                if leases.current.isEmpty {
                    // Taken by the renewals (rounds run one at a time).
                    try await Task.sleep(for: .milliseconds(100))
                    continue
                }
                let pass = try await relay.runOnce()
                delivered += pass.delivered
                if pass.delivered > 0 { lastDelivery = Date() }
                failures = 0
                guard pass.fetched == 0 && pass.delivered == 0 else {
                    idleWait = .milliseconds(100)
                    continue
                }
                // Nothing due in this relay's partitions. With other relays draining beside it,
                // it stays (and takes over what they hand back or leave) until nothing is due
                // anywhere in the outbox.
                if try await store.dueCount() == 0 { break }
                try await Task.sleep(for: idleWait)
                idleWait = min(idleWait * 2, .seconds(1))
            } catch {
                failures += 1
                guard failures < 50 else { throw error }
                logger.warning("drain pass failed; retrying", metadata: [LogKey.error: "\(error)"])
                try await Task.sleep(for: .milliseconds(100 * min(failures, 10)))
            }
        }
        renewals.cancel()
        _ = try? await renewals.value
        return Drained(
            delivered: delivered, read: store.documentsReadTotal, lastDelivery: lastDelivery.map { Int64($0.timeIntervalSince1970 * 1000) } ?? 0)
    }
}
