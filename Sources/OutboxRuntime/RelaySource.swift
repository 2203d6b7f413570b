import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import ServiceLifecycle

/// What serves one source of a relay: its store, leases, loop, change stream and backlog gauges,
/// on a client pool of its own (a source's slow or failing database keeps its threads to itself,
/// and a change stream holds a client). The publisher is shared by every source.
struct RelaySource: Sendable {
    var source: OutboxSource
    var logger: Logger
    var store: MongoOutboxStore
    var leaseStore: MongoLeaseStore
    var leases: LeaseManager
    var relay: Relay
    var hint: ChangeStreamHint?
    /// What wakes the relay's loop early (nil without change streams): its own stream, or the
    /// relay's one stream over every discovered database.
    var wake: WakeSignal?
    var monitor: BacklogMonitor
    var watchdog: LivenessWatchdog
    var metrics: RelayMetrics

    /// Its services, to run as one group: shut down in reverse order, the relay finishes its batch,
    /// then the change stream and the gauges stop, then the leases are released.
    var services: [any Service] { [leases, monitor] + (hint.map { [$0] } ?? []) + [relay] }

    /// What `/health/ready` says of the source: degraded after three failed passes in a row, or
    /// while its collection is missing.
    var check: OpsServer.Check { relay.failedPasses >= 3 || monitor.collectionMissing ? .degraded : .up }

    /// The parts of `source`; `threads` a pool (fewer when a relay serves several); `shares` how the
    /// relay's sources share the store; `sharedStream`: woken by the relay's stream over
    /// every database, not a stream of its own.
    init(
        _ source: OutboxSource, settings: RelaySettings, environment: Settings, threads: Int, publisher: ConfirmPublisher, shares: StoreShares,
        sharedStream: Bool = false, logger processLogger: Logger
    ) throws {
        var logger = processLogger
        logger[metadataKey: LogKey.outboxSource] = "\(source)"
        let own = settings.settings(of: source)
        let pool = try environment.mongoPool(uri: settings.uri, database: source.database, appName: RelayProgram.program, threads: threads)
        // While another source's quiet pass is at the store, this source's commands wait if it drains.
        let member = shares.join()
        pool.share(shares, member: member)
        let watchdog = LivenessWatchdog(timeout: settings.livenessTimeout)
        let store = MongoOutboxStore(
            pool: pool, owner: settings.owner,
            options: .init(
                collection: source.collection, maxBodyBytes: settings.maxBodyBytes, partitions: own.partitions, routing: own.routing,
                body: own.body, scheduleLookahead: settings.relay.pollInterval * 2, source: source),
            logger: logger)
        let leaseStore = MongoLeaseStore(pool: pool, partitions: own.partitions)
        let leases = LeaseManager(
            store: leaseStore, configuration: .init(owner: settings.owner, partitions: own.partitions, ttl: settings.leaseTTL), logger: logger)
        let wake = settings.changeStream ? WakeSignal() : nil
        let metrics = RelayMetrics(source: source)
        self.source = source
        self.logger = logger
        self.store = store
        self.leaseStore = leaseStore
        self.leases = leases
        self.watchdog = watchdog
        self.metrics = metrics
        self.wake = wake
        hint = sharedStream ? nil : wake.map { ChangeStreamHint(pool: pool, collection: source.collection, wake: $0, logger: logger) }
        relay = Relay(
            store: store, publisher: publisher, leases: leases, configuration: settings.relay, metrics: metrics,
            shares: (shares, member), logger: logger, wake: wake,
            idle: { [publisher] in await publisher.keepAlive() },
            onIteration: { [watchdog] in watchdog.iterationCompleted() })
        monitor = BacklogMonitor(
            pool: pool, collection: source.collection, partitions: own.partitions, interval: settings.metricsInterval,
            relays: { [leases] in leases.activeRelays }, clock: store.clock, source: source, logger: logger)
    }

    /// Removes the source's series from the metrics, once it is no longer served: a gone source's
    /// last figures (`outbox_source_up` 0, its backlog) would keep its alerts firing.
    func removeMetrics() {
        metrics.destroy()
        store.removeMetrics()
        monitor.removeGauges()
    }

    /// The start-up steps on the database: indexes, retention, the partition count and leases.
    /// The store may fail a command now and then; start-up rides that out as operation does. A
    /// partition count other than the outbox's throws a `ConfigurationError`.
    func prepare(_ settings: RelaySettings) async throws {
        try await Runtime.retryingAtStart("creating the outbox indexes", logger: logger) { try await store.ensureIndexes() }
        if let retention = settings.retentionSeconds {
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
            throw ConfigurationError(
                setting: SettingDeclaration.partitions.label,
                reason: "the outbox \(source) is set up for \(configured) partitions, got \(leaseStore.partitions); use \(configured), "
                    + "or change the count with 'outboxctl repartition --partitions \(leaseStore.partitions)' while no relay runs")
        }
        try await Runtime.retryingAtStart("creating the partition leases", logger: logger) { try await leaseStore.ensurePartitions() }
    }

    /// The readiness checks of the sources, named `source <database.collection>` when there are
    /// several or `discovering` (their number changes): each up or degraded; all of them failing
    /// is down (the relay delivers nothing).
    static func checks(_ sources: [RelaySource], discovering: Bool) -> [String: OpsServer.Check] {
        guard sources.count > 1 || (discovering && !sources.isEmpty) else { return [:] }
        let checks = sources.map { ("source \($0.source)", $0.check) }
        let allFailing = checks.allSatisfy { $0.1 == .degraded }
        return Dictionary(uniqueKeysWithValues: checks.map { ($0.0, allFailing ? .down : $0.1) })
    }
}
