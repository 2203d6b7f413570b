import ArgumentParser
import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import OutboxRuntime
import ServiceLifecycle

@main
struct RelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-relay",
        abstract: "Publishes outbox events from MongoDB to RabbitMQ with publisher confirms.",
        discussion: """
            Polls the outbox collection for pending events, publishes them to their exchange \
            (persistent, mandatory, message_id = event id) on a confirm channel, and marks an event \
            delivered only after the broker acked it. Nacked and timed-out publishes are retried with \
            capped exponential backoff and stay pending (time fixes them); returned (unroutable) ones \
            are parked after --max-attempts. While the broker blocks publishing (a resource alarm) \
            nothing is sent and no attempt is counted. \
            Every option can also be set by the environment variable named in its help. \
            SIGTERM or SIGINT stops fetching, finishes the batch in flight and exits.
            """)

    @OptionGroup var mongo: MongoOptions

    @Option(name: .customLong("amqp-url"), help: ArgumentHelp(Help.amqpURL))
    var amqpURL: String?

    @Option(help: "Outbox collection; may be an existing event collection, whose delivered events stay as its history (env OUTBOX_COLLECTION; default outbox).")
    var collection: String?

    @Option(help: "Exchange of events whose document names none (env RELAY_EXCHANGE; default orders).")
    var exchange: String?

    @Option(help: "Exchanges by event type or aggregate type for events whose document names none, e.g. 'Order=orders,InventoryReserved=inventory'; a type wins over an aggregate type (env RELAY_EXCHANGE_MAP; default none).")
    var exchangeMap: String?

    @Option(help: "Events per batch, 1-10000 (env RELAY_BATCH_SIZE; default 500).")
    var batchSize: Int?

    @Option(help: "Message bytes per batch (and so in flight), at least 1024; an event larger than it goes out alone (env RELAY_BATCH_MAX_BYTES; default 16777216).")
    var batchMaxBytes: Int?

    @Option(help: "Unconfirmed publishes at once, 1-10000 (env RELAY_MAX_IN_FLIGHT; default 1000).")
    var maxInFlight: Int?

    @Option(help: "Wait between polls when nothing is due, e.g. 200ms (env RELAY_POLL_INTERVAL; default 200ms).")
    var pollInterval: String?

    @Option(help: "How long to wait for broker confirms of a batch; at most the lease TTL (a longer one is lowered to it) (env RELAY_CONFIRM_TIMEOUT; default 10s).")
    var confirmTimeout: String?

    @Option(help: "Delivery attempts before an unroutable (returned) event is parked, 1-1000; nacks and confirm timeouts never park (env RELAY_MAX_ATTEMPTS; default 10).")
    var maxAttempts: Int?

    @Option(help: "First retry delay; doubles per attempt, with jitter (env RELAY_RETRY_BASE_DELAY; default 500ms).")
    var retryBaseDelay: String?

    @Option(help: "Longest retry delay (env RELAY_RETRY_MAX_DELAY; default 5m).")
    var retryMaxDelay: String?

    @Option(help: "Largest message body in bytes; larger events are parked (env RELAY_MAX_BODY_BYTES; default 1048576).")
    var maxBodyBytes: Int?

    @Option(help: "Message body format: envelope, payload, cloudevents, cloudevents-binary or nestjs (env RELAY_BODY_FORMAT; default envelope). An event's bodyFormat field overrides it.")
    var bodyFormat: String?

    @Option(help: "Body formats per exchange, e.g. orders=payload,inventory=cloudevents (env RELAY_BODY_FORMAT_BY_EXCHANGE; default none).")
    var bodyFormatByExchange: String?

    @Option(help: "Decimal128 amounts as JSON strings or exact number literals: string or number (env RELAY_DECIMAL_FORMAT; default string).")
    var decimalFormat: String?

    @Option(name: .customLong("cloudevents-source"), help: "The CloudEvents source attribute (env RELAY_CLOUDEVENTS_SOURCE; default /outbox-relay).")
    var cloudEventsSource: String?

    @Option(help: "Longest graceful shutdown before exiting anyway (env RELAY_SHUTDOWN_TIMEOUT; default 30s).")
    var shutdownTimeout: String?

    @Option(help: "Partitions of the outbox; must match the writers' (env OUTBOX_PARTITIONS; default 16).")
    var partitions: Int?

    @Option(help: "Lease time of a partition; another relay takes over after it (env RELAY_LEASE_TTL; default 10s).")
    var leaseTTL: String?

    @Option(help: "/health/live fails once the relay loop has completed no pass (delivered, idle or failed) for this long; longer than --confirm-timeout (env RELAY_LIVENESS_TIMEOUT; default 60s).")
    var livenessTimeout: String?

    @Option(help: "This relay's name in the lease table (env RELAY_ID; default host-pid-random).")
    var relayID: String?

    @Flag(inversion: .prefixedNo, help: "Watch the outbox with a change stream as a wake-up hint for low latency (env RELAY_CHANGE_STREAM=true|false; default on). Polling stays the source of truth.")
    var changeStream: Bool?

    @Option(help: "Address of /metrics, /health/live and /health/ready, host:port; 'off' for none (env RELAY_HTTP_ADDRESS; default 127.0.0.1:9400).")
    var httpAddress: String?

    @Option(help: "Park an event that still fails for a reason time may fix (nack, confirm timeout) once it is this old, e.g. 1h; 'off' never parks them (env RELAY_PARK_TRANSIENT_AFTER; default off).")
    var parkTransientAfter: String?

    @Option(help: "Delete delivered events this long after delivery (a TTL index on deliveredAt that holds delivered events only), e.g. 30d; 'off' keeps them for ever. Unset leaves the collection's retention as it is (env RELAY_DELIVERED_RETENTION; default unset, and a new outbox keeps everything).")
    var deliveredRetention: String?

    @Option(help: "How often the backlog gauges are sampled; each sample counts the backlog (env RELAY_METRICS_INTERVAL; default 15s, a usual scrape interval).")
    var metricsInterval: String?

    @Flag(help: "Exit once no event is due (for batch jobs and tests) instead of polling for ever.")
    var exitWhenIdle = false

    func run() async throws {
        let settings = Settings()
        let logger: Logger
        let relay: Relay
        let leases: LeaseManager
        let leaseStore: MongoLeaseStore
        var hint: ChangeStreamHint?
        var extraServices: [any Service] = []
        let publisher: ConfirmPublisher
        let store: MongoOutboxStore
        let shutdownTimeout: Duration
        let watchdog: LivenessWatchdog
        /// Seconds to keep delivered events, `.some(nil)` for ever; `nil` when not set (left as is).
        let retention: Int??
        do {
            logger = Runtime.bootstrap(label: "outbox-relay", level: try settings.logLevel(mongo.logLevel))
            let http = try settings.string(httpAddress, env: "RELAY_HTTP_ADDRESS", default: "127.0.0.1:9400", flagName: "--http-address")
            let endpoint = http == "off" ? nil : try OpsServer.address(http, setting: "RELAY_HTTP_ADDRESS (--http-address)")
            let registry = OpsServer.bootstrapMetrics()
            let uri = try mongo.resolvedURI(settings)
            let database = try mongo.resolvedDatabase(settings)
            let amqp = try settings.amqp(amqpURL)
            let collection = try settings.string(collection, env: "OUTBOX_COLLECTION", default: "outbox", flagName: "--collection")
            let defaultExchange = try settings.string(exchange, env: "RELAY_EXCHANGE", default: "orders", flagName: "--exchange")
            guard defaultExchange.utf8.count <= 255 else {
                throw ConfigurationError(setting: "RELAY_EXCHANGE (--exchange)", reason: "must be at most 255 bytes")
            }
            let routing = EventRouting(
                defaultExchange: defaultExchange,
                exchangeByName: try EventRouting.parseMap(
                    try settings.string(exchangeMap, env: "RELAY_EXCHANGE_MAP", default: "", flagName: "--exchange-map"),
                    setting: "RELAY_EXCHANGE_MAP (--exchange-map)"))
            let maxBody = try settings.int(maxBodyBytes, env: "RELAY_MAX_BODY_BYTES", default: 1 << 20, flagName: "--max-body-bytes", range: 1...(128 << 20))
            let configuration = RelayConfiguration(
                batchSize: try settings.int(batchSize, env: "RELAY_BATCH_SIZE", default: 500, flagName: "--batch-size", range: 1...10_000),
                pollInterval: try settings.duration(pollInterval, env: "RELAY_POLL_INTERVAL", default: "200ms", flagName: "--poll-interval"),
                retryPolicy: RetryPolicy(
                    maxAttempts: try settings.int(maxAttempts, env: "RELAY_MAX_ATTEMPTS", default: 10, flagName: "--max-attempts", range: 1...1000),
                    baseDelay: try settings.duration(retryBaseDelay, env: "RELAY_RETRY_BASE_DELAY", default: "500ms", flagName: "--retry-base-delay", allowZero: true),
                    maxDelay: try settings.duration(retryMaxDelay, env: "RELAY_RETRY_MAX_DELAY", default: "5m", flagName: "--retry-max-delay"),
                    parkTransientAfter: try settings.durationOrOff(parkTransientAfter, env: "RELAY_PARK_TRANSIENT_AFTER", flagName: "--park-transient-after") ?? nil),
                batchMaxBytes: try settings.int(
                    batchMaxBytes, env: "RELAY_BATCH_MAX_BYTES", default: RelayConfiguration.defaultBatchMaxBytes, flagName: "--batch-max-bytes",
                    range: 1024...(1 << 30)),
                // Until a batch was seen, events as large as allowed: the first fetch fits the budget too.
                assumedBytesPerEvent: maxBody,
                wallClock: { Int64(Date().timeIntervalSince1970 * 1000) })
            var options = ConfirmPublisher.Options(
                maxInFlight: try settings.int(maxInFlight, env: "RELAY_MAX_IN_FLIGHT", default: 1000, flagName: "--max-in-flight", range: 1...10_000),
                confirmTimeout: try settings.duration(confirmTimeout, env: "RELAY_CONFIRM_TIMEOUT", default: "10s", flagName: "--confirm-timeout"),
)
            let body = MessageBodyOptions(
                format: try BodyFormat(
                    parsing: try settings.string(bodyFormat, env: "RELAY_BODY_FORMAT", default: BodyFormat.default.rawValue, flagName: "--body-format"),
                    setting: "RELAY_BODY_FORMAT (--body-format)"),
                formatByExchange: try WireFormat.parseFormatByExchange(
                    try settings.string(bodyFormatByExchange, env: "RELAY_BODY_FORMAT_BY_EXCHANGE", default: "", flagName: "--body-format-by-exchange"),
                    setting: "RELAY_BODY_FORMAT_BY_EXCHANGE (--body-format-by-exchange)"),
                decimals: try DecimalFormat(
                    parsing: try settings.string(decimalFormat, env: "RELAY_DECIMAL_FORMAT", default: DecimalFormat.default.rawValue, flagName: "--decimal-format"),
                    setting: "RELAY_DECIMAL_FORMAT (--decimal-format)"),
                cloudEventsSource: try WireFormat.parseCloudEventsSource(
                    try settings.string(cloudEventsSource, env: "RELAY_CLOUDEVENTS_SOURCE", default: WireFormat.defaultCloudEventsSource, flagName: "--cloudevents-source"),
                    setting: "RELAY_CLOUDEVENTS_SOURCE (--cloudevents-source)"))
            shutdownTimeout = try settings.duration(self.shutdownTimeout, env: "RELAY_SHUTDOWN_TIMEOUT", default: "30s", flagName: "--shutdown-timeout")
            let partitionCount = try settings.int(partitions, env: "OUTBOX_PARTITIONS", default: 16, flagName: "--partitions", range: 1...1024)
            let ttl = try settings.duration(leaseTTL, env: "RELAY_LEASE_TTL", default: "10s", flagName: "--lease-ttl")
            guard ttl >= .milliseconds(300) else {
                throw ConfigurationError(setting: "RELAY_LEASE_TTL (--lease-ttl)", reason: "must be at least 300ms")
            }
            if options.confirmTimeout > ttl {
                // A pass waits for confirms up to this long; no longer than a lease, so a pass whose
                // lease lapsed meanwhile ends before its partitions could be another relay's for long.
                logger.notice(
                    "confirm timeout lowered to the lease TTL",
                    metadata: ["relay.confirm_timeout": "\(options.confirmTimeout)", "relay.lease_ttl": "\(ttl)"])
                options.confirmTimeout = ttl
            }
            // A healthy pass may wait the whole confirm timeout (and a failed one backs off up to 5 s).
            let liveness = try settings.duration(livenessTimeout, env: "RELAY_LIVENESS_TIMEOUT", default: "60s", flagName: "--liveness-timeout")
            guard liveness > options.confirmTimeout + .seconds(5) else {
                throw ConfigurationError(
                    setting: "RELAY_LIVENESS_TIMEOUT (--liveness-timeout)",
                    reason: "must be longer than RELAY_CONFIRM_TIMEOUT plus 5s (\(options.confirmTimeout + .seconds(5))), which a healthy pass may take")
            }
            watchdog = LivenessWatchdog(timeout: liveness)
            let owner = try settings.string(relayID, env: "RELAY_ID", default: Runtime.defaultInstanceName(), flagName: "--relay-id")
            let pool = try settings.mongoPool(uri: uri, database: database, appName: "outbox-relay")
            await Runtime.checkLinks(program: "outbox-relay", mongo: pool, amqp: amqp, broker: .wait, logger: logger)
            store = MongoOutboxStore(
                pool: pool, owner: owner, options: .init(collection: collection, maxBodyBytes: maxBody, partitions: partitionCount, routing: routing, body: body),
                logger: logger)
            leaseStore = MongoLeaseStore(pool: pool, partitions: partitionCount)
            leases = LeaseManager(store: leaseStore, configuration: .init(owner: owner, partitions: partitionCount, ttl: ttl), logger: logger)
            publisher = ConfirmPublisher(configuration: amqp, options: options, logger: logger)
            let useChangeStream = try changeStream ?? settings.bool(env: "RELAY_CHANGE_STREAM", default: true, flagName: "--[no-]change-stream")
            let wake = useChangeStream ? WakeSignal() : nil
            if let wake { hint = ChangeStreamHint(pool: pool, collection: collection, wake: wake, logger: logger) }
            relay = Relay(
                store: store, publisher: publisher, leases: leases, configuration: configuration, logger: logger, wake: wake,
                idle: { [publisher] in await publisher.keepAlive() },
                onIteration: { [watchdog] in watchdog.iterationCompleted() })
            let keep = try settings.durationOrOff(deliveredRetention, env: "RELAY_DELIVERED_RETENTION", flagName: "--delivered-retention")
            if let keep = keep ?? nil, keep < .seconds(1) {
                throw ConfigurationError(setting: "RELAY_DELIVERED_RETENTION (--delivered-retention)", reason: "must be at least 1s, or 'off'")
            }
            retention = keep.map { $0.map { Int($0.components.seconds) } }
            let sampleEvery = try settings.duration(metricsInterval, env: "RELAY_METRICS_INTERVAL", default: "15s", flagName: "--metrics-interval")
            extraServices.append(BacklogMonitor(pool: pool, collection: collection, partitions: partitionCount, interval: sampleEvery, logger: logger))
            extraServices.append(ConnectionGauges(probes: [("broker", { [publisher] in publisher.isConnectedNow })]))
            if let endpoint {
                extraServices.append(
                    OpsServer.make(
                        host: endpoint.host, port: endpoint.port, registry: registry, logger: logger, live: { [watchdog] in watchdog.status }
                    ) { [publisher, pool] in
                        let database = (try? await pool.ping()) != nil
                        let broker: OpsServer.Check = !publisher.isConnectedNow ? .down : publisher.isBlockedNow ? .blocked : .up
                        return ["database": .init(up: database), "broker": broker]
                    })
            }
            logger.info(
                "configuration",
                metadata: [
                    "mongodb.database": "\(database)", "outbox.collection": "\(collection)", "amqp.endpoint": "\(amqp.endpoint)",
                    "outbox.default_exchange": "\(defaultExchange)",
                    "outbox.batch_size": "\(configuration.batchSize)", "outbox.batch_max_bytes": "\(configuration.batchMaxBytes)",
                    "amqp.max_in_flight": "\(options.maxInFlight)",
                    "relay.id": "\(owner)", "outbox.partitions": "\(partitionCount)", "relay.lease_ttl": "\(ttl)",
                    "relay.liveness_timeout": "\(watchdog.timeout)",
                    "relay.park_transient_after": "\(configuration.retryPolicy.parkTransientAfter.map { "\($0)" } ?? "off")",
                    "relay.change_stream": "\(hint != nil)", "relay.body_format": "\(body.format)",
                    "relay.decimal_format": "\(body.decimals)",
                ])
        } catch {
            Runtime.failConfiguration(error, program: "outbox-relay")
        }

        // The store may fail a command now and then; start-up rides that out as operation does.
        try await Runtime.retryingAtStart("creating the outbox indexes", logger: logger) { try await store.ensureIndexes() }
        if let retention {
            switch try await Runtime.retryingAtStart("setting the retention", logger: logger, { try await store.applyRetention(seconds: retention) }) {
            case .unchanged: logger.info("delivered events kept", metadata: ["outbox.delivered_retention": "\(retention.map { "\($0)s" } ?? "forever")"])
            case .created(let seconds): logger.notice("delivered events now deleted after retention", metadata: ["outbox.delivered_retention": "\(seconds)s"])
            case .changed(let from, let to):
                logger.notice("delivered-event retention changed", metadata: ["outbox.delivered_retention": "\(to)s", "outbox.previous_retention": "\(from)s"])
            case .removed(let seconds):
                logger.notice("delivered events now kept for ever", metadata: ["outbox.previous_retention": "\(seconds)s"])
            }
        }
        let configuredPartitions = try await Runtime.retryingAtStart("reading the partition count", logger: logger) {
            try await leaseStore.configuredPartitions()
        }
        if let configured = configuredPartitions, configured != leaseStore.partitions {
            // Relays with different counts would move each other's events between partitions.
            Runtime.failConfiguration(
                ConfigurationError(
                    setting: "OUTBOX_PARTITIONS (--partitions)",
                    reason: "the outbox is set up for \(configured) partitions, got \(leaseStore.partitions); use \(configured), "
                        + "or change the count with 'outboxctl repartition --partitions \(leaseStore.partitions)' while no relay runs"),
                program: "outbox-relay")
        }
        try await Runtime.retryingAtStart("creating the partition leases", logger: logger) { try await leaseStore.ensurePartitions() }
        if exitWhenIdle {
            // The leases are taken and kept renewed beside the drain, as in normal operation.
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
                    logger.warning("drain pass failed; retrying", metadata: ["error": "\(error)"])
                    try await Task.sleep(for: .milliseconds(100 * min(failures, 10)))
                }
            }
            renewals.cancel()
            _ = try? await renewals.value
            await publisher.close()
            // One line for batch jobs and benchmarks: what this relay delivered, what it read for
            // it, and when it marked its last event delivered (milliseconds since the epoch; 0: none).
            let last = lastDelivery.map { Int64($0.timeIntervalSince1970 * 1000) } ?? 0
            print("outbox-relay drained: events_delivered=\(delivered) documents_read=\(store.documentsReadTotal) last_delivery_ms=\(last)")
            return
        }
        // Shut down in reverse order: the relay finishes its batch, then the leases are released.
        let services: [any Service] = extraServices + [leases] + (hint.map { [$0] } ?? []) + [relay]
        watchdog.start()  // the timeout counts from here, not from before a start-up that waited for the servers
        try await Runtime.runServices(services, shutdownTimeout: shutdownTimeout, logger: logger)
        await publisher.close()
    }
}
