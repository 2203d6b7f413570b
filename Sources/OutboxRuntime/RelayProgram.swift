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
        var store: MongoOutboxStore
        var leaseStore: MongoLeaseStore
        var leases: LeaseManager
        var publisher: ConfirmPublisher
        var relay: Relay
        var hint: ChangeStreamHint?
        var watchdog: LivenessWatchdog
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
        try await prepareStore(parts)
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
        // Shut down in reverse order: the relay finishes its batch, then the leases are released.
        let services: [any Service] = parts.services + [parts.leases] + (parts.hint.map { [$0] } ?? []) + [parts.relay]
        parts.watchdog.start()  // the timeout counts from here, not from before a start-up that waited for the servers
        try await Runtime.runServices(services, shutdownTimeout: parts.settings.shutdownTimeout, logger: parts.logger)
        await parts.publisher.close()
    }

    /// Reads the settings, waits for the links and builds the relay and the services beside it.
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
        let watchdog = LivenessWatchdog(timeout: settings.livenessTimeout)
        let pool = try environment.mongoPool(uri: settings.uri, database: settings.database, appName: program)
        await Runtime.checkLinks(program: program, mongo: pool, amqp: settings.amqp, broker: .wait, logger: logger)
        let store = MongoOutboxStore(
            pool: pool, owner: settings.owner,
            options: .init(
                collection: settings.collection, maxBodyBytes: settings.maxBodyBytes, partitions: settings.partitions, routing: settings.routing,
                body: settings.body, scheduleLookahead: settings.relay.pollInterval * 2),
            logger: logger)
        let leaseStore = MongoLeaseStore(pool: pool, partitions: settings.partitions)
        let leases = LeaseManager(
            store: leaseStore, configuration: .init(owner: settings.owner, partitions: settings.partitions, ttl: settings.leaseTTL), logger: logger)
        let publisher = ConfirmPublisher(configuration: settings.amqp, options: settings.publisher, logger: logger)
        let wake = settings.changeStream ? WakeSignal() : nil
        let hint = wake.map { ChangeStreamHint(pool: pool, collection: settings.collection, wake: $0, logger: logger) }
        let relay = Relay(
            store: store, publisher: publisher, leases: leases, configuration: settings.relay, logger: logger, wake: wake,
            idle: { [publisher] in await publisher.keepAlive() },
            onIteration: { [watchdog] in watchdog.iterationCompleted() })
        // The span exporter first: it stops last and exports what the relay ended.
        var services: [any Service] =
            (tracing.map { [$0] } ?? []) + [
                BacklogMonitor(
                    pool: pool, collection: settings.collection, partitions: settings.partitions, interval: settings.metricsInterval,
                    relays: { [leases] in leases.activeRelays }, clock: store.clock, logger: logger),
                ConnectionGauges(probes: [("broker", { [publisher] in publisher.isConnectedNow })]),
            ]
        if let endpoint = settings.httpEndpoint {
            services.append(
                OpsServer.make(host: endpoint.host, port: endpoint.port, registry: registry, logger: logger, live: { [watchdog] in watchdog.status })
                {
                    [publisher, pool] in
                    let database = (try? await pool.ping()) != nil
                    let broker: OpsServer.Check = !publisher.isConnectedNow ? .down : publisher.isBlockedNow ? .blocked : .up
                    return ["database": .init(up: database), "broker": broker]
                })
        }
        logConfiguration(settings, changeStream: hint != nil, logger: logger)
        return Parts(
            logger: logger, settings: settings, store: store, leaseStore: leaseStore, leases: leases, publisher: publisher, relay: relay, hint: hint,
            watchdog: watchdog, tracing: tracing, services: services)
    }

    static func logConfiguration(_ settings: RelaySettings, changeStream: Bool, logger: Logger) {
        logger.info(
            "configuration",
            metadata: [
                LogKey.mongodbDatabase: "\(settings.database)", LogKey.outboxCollection: "\(settings.collection)",
                LogKey.amqpEndpoint: "\(settings.amqp.endpoint)",
                LogKey.outboxDefaultExchange: "\(settings.routing.defaultExchange)",
                LogKey.outboxBatchSize: "\(settings.relay.batchSize)", LogKey.outboxBatchMaxBytes: "\(settings.relay.batchMaxBytes)",
                LogKey.amqpMaxInFlight: "\(settings.publisher.maxInFlight)",
                LogKey.relayID: "\(settings.owner)", LogKey.outboxPartitions: "\(settings.partitions)", LogKey.relayLeaseTTL: "\(settings.leaseTTL)",
                LogKey.relayLivenessTimeout: "\(settings.livenessTimeout)",
                LogKey.relayParkTransientAfter: "\(settings.relay.retryPolicy.parkTransientAfter.map { "\($0)" } ?? "off")",
                LogKey.relayChangeStream: "\(changeStream)", LogKey.relayBodyFormat: "\(settings.body.format)",
                LogKey.relayDecimalFormat: "\(settings.body.decimals)",
            ])
    }

    /// The start-up steps on the database: indexes, retention, the partition count and leases.
    /// The store may fail a command now and then; start-up rides that out as operation does.
    static func prepareStore(_ parts: Parts) async throws {
        let (store, leaseStore, logger) = (parts.store, parts.leaseStore, parts.logger)
        try await Runtime.retryingAtStart("creating the outbox indexes", logger: logger) { try await store.ensureIndexes() }
        if let retention = parts.settings.retentionSeconds {
            switch try await Runtime.retryingAtStart("setting the retention", logger: logger, { try await store.applyRetention(seconds: retention) })
            {
            case .unchanged:
                logger.info("delivered events kept", metadata: [LogKey.outboxDeliveredRetention: "\(retention.map { "\($0)s" } ?? "forever")"])
            case .created(let seconds):
                logger.notice("delivered events now deleted after retention", metadata: [LogKey.outboxDeliveredRetention: "\(seconds)s"])
            case .changed(let from, let to):
                logger.notice(
                    "delivered-event retention changed",
                    metadata: [LogKey.outboxDeliveredRetention: "\(to)s", LogKey.outboxPreviousRetention: "\(from)s"])
            case .removed(let seconds):
                logger.notice("delivered events now kept for ever", metadata: [LogKey.outboxPreviousRetention: "\(seconds)s"])
            }
        }
        let configuredPartitions = try await Runtime.retryingAtStart("reading the partition count", logger: logger) {
            try await leaseStore.configuredPartitions()
        }
        if let configured = configuredPartitions, configured != leaseStore.partitions {
            // Relays with different counts would move each other's events between partitions.
            Runtime.failConfiguration(
                ConfigurationError(
                    setting: SettingDeclaration.partitions.label,
                    reason: "the outbox is set up for \(configured) partitions, got \(leaseStore.partitions); use \(configured), "
                        + "or change the count with 'outboxctl repartition --partitions \(leaseStore.partitions)' while no relay runs"),
                program: program)
        }
        try await Runtime.retryingAtStart("creating the partition leases", logger: logger) { try await leaseStore.ensurePartitions() }
    }

    /// `--exit-when-idle` as a service: when the drain is over, the services beside it shut down.
    struct Drain: Service {
        let parts: Parts
        func run() async throws { try await drainUntilIdle(parts) }
    }

    /// `--exit-when-idle`: drains until nothing is due anywhere in the outbox, then prints one line
    /// for batch jobs and benchmarks. The leases are taken and kept renewed beside the drain, as in
    /// normal operation.
    static func drainUntilIdle(_ parts: Parts) async throws {
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
        await parts.publisher.close()
        // What this relay delivered, what it read for it, and when it marked its last event
        // delivered (milliseconds since the epoch; 0: none).
        let last = lastDelivery.map { Int64($0.timeIntervalSince1970 * 1000) } ?? 0
        print("outbox-relay drained: events_delivered=\(delivered) documents_read=\(store.documentsReadTotal) last_delivery_ms=\(last)")
    }
}
