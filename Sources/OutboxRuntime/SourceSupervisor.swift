import Logging
import Outbox
import OutboxMongo
import ServiceLifecycle
import Synchronization

/// Runs a relay's sources, each as a service group of its own (`RelaySource.services`), and,
/// with discovery, the outboxes found while it runs: every `interval` it looks again, prepares a
/// new one and starts it beside the others. A discovered source missing from two rounds in a row
/// (its database or collection dropped) is stopped as a shutdown would stop it and its metrics
/// are removed; found again, it is served again. Sources named in the settings are served until
/// the relay stops (a missing one shows as degraded). A graceful shutdown stops every source's
/// group (each finishes its batch, then releases its leases). A source whose service fails ends
/// the relay, as any service of it would.
final class SourceSupervisor: Service {
    private let running: Mutex<[RelaySource]>
    /// The group of each source served, to stop one that is gone.
    private let groups = Mutex<[OutboxSource: ServiceGroup]>([:])
    /// The sources named in the settings: never stopped for being missing.
    private let configured: Set<OutboxSource>
    private let discovery: Discovery?
    private let logger: Logger
    private let shutdownTimeout: Duration

    /// Discovery rounds a served source may be missing from before it is stopped: one round could
    /// fall between a drop and a writer's next insert.
    static let roundsMissing = 2

    /// How new sources are found and made ready.
    struct Discovery: Sendable {
        var finder: SourceDiscovery
        var pool: MongoClientPool
        var interval: Duration
        /// Builds and prepares a source found (throws when it cannot be served).
        var start: @Sendable (OutboxSource) async throws -> RelaySource
    }

    init(sources: [RelaySource], configured: Set<OutboxSource>, discovery: Discovery?, shutdownTimeout: Duration, logger: Logger) {
        running = Mutex(sources)
        self.configured = configured
        self.discovery = discovery
        self.shutdownTimeout = shutdownTimeout
        self.logger = logger
    }

    /// The sources served now.
    var sources: [RelaySource] { running.withLock { $0 } }

    func run() async throws {
        let initial = sources
        try await withThrowingDiscardingTaskGroup { group in
            for source in initial { group.addTask { [self] in try await serve(source) } }
            guard let discovery else { return }
            var refused: Set<OutboxSource> = []
            var missing: [OutboxSource: Int] = [:]
            while !Task.isCancelled && !Task.isShuttingDownGracefully {
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: discovery.interval) }
                guard !Task.isCancelled && !Task.isShuttingDownGracefully else { break }
                let found: [OutboxSource]
                do {
                    found = try await discovery.finder.find(on: discovery.pool)
                } catch {
                    logger.warning("looking for new outboxes failed; trying again later", metadata: [LogKey.error: "\(error)"])
                    continue
                }
                for source in Self.gone(found, from: sources.map(\.source), configured: configured, missing: &missing) {
                    logger.notice(
                        "an outbox found before is gone (database or collection dropped); no longer served",
                        metadata: [LogKey.outboxSource: "\(source)"])
                    await groups.withLock { $0[source] }?.triggerGracefulShutdown()
                    // Another collection of its database may be served now.
                    refused = refused.filter { $0.database != source.database }
                }
                for source in Self.additions(found, to: sources.map(\.source), refused: &refused, logger: logger) {
                    do {
                        let started = try await discovery.start(source)
                        running.withLock { $0.append(started) }
                        logger.notice("serving a new outbox", metadata: [LogKey.outboxSource: "\(source)"])
                        group.addTask { [self] in try await serve(started) }
                    } catch {
                        refused.insert(source)
                        logger.error("cannot serve an outbox found", metadata: [LogKey.outboxSource: "\(source)", LogKey.error: "\(error)"])
                    }
                }
            }
        }
    }

    /// The sources of `found` to start: not served yet, not refused before, none in a database
    /// already served by another collection, at most `OutboxSource.limit` in all. What is left
    /// out is logged once (it goes into `refused`).
    static func additions(_ found: [OutboxSource], to served: [OutboxSource], refused: inout Set<OutboxSource>, logger: Logger) -> [OutboxSource] {
        var databases = Dictionary(served.map { ($0.database, $0) }) { first, _ in first }
        var count = served.count
        var added: [OutboxSource] = []
        for source in found where databases[source.database] != source && !refused.contains(source) {
            if let other = databases[source.database] {
                refused.insert(source)
                logger.warning(
                    "an outbox found is not served: its database's outbox is another collection",
                    metadata: [LogKey.outboxSource: "\(source)", LogKey.outboxCollection: "\(other.collection)"])
            } else if count >= OutboxSource.limit {
                refused.insert(source)
                logger.warning(
                    "an outbox found is not served: a relay serves at most \(OutboxSource.limit)", metadata: [LogKey.outboxSource: "\(source)"])
            } else {
                databases[source.database] = source
                count += 1
                added.append(source)
            }
        }
        return added
    }

    /// The discovered sources of `served` missing from `found` for `roundsMissing` rounds in a
    /// row; `missing` counts the rounds (a source found again starts over).
    static func gone(_ found: [OutboxSource], from served: [OutboxSource], configured: Set<OutboxSource>, missing: inout [OutboxSource: Int])
        -> [OutboxSource]
    {
        let present = Set(found)
        var gone: [OutboxSource] = []
        for source in served where !configured.contains(source) {
            guard !present.contains(source) else {
                missing[source] = nil
                continue
            }
            let rounds = missing[source, default: 0] + 1
            missing[source] = rounds < roundsMissing ? rounds : nil
            if rounds >= roundsMissing { gone.append(source) }
        }
        return gone
    }

    /// Runs the services of one source until a graceful shutdown reaches this service or the
    /// source is gone; a source that is gone then leaves the list and its metrics are removed.
    private func serve(_ source: RelaySource) async throws {
        var configuration = ServiceGroupConfiguration(services: source.services.map { .init(service: $0) }, logger: source.logger)
        configuration.maximumGracefulShutdownDuration = shutdownTimeout
        let group = ServiceGroup(configuration: configuration)
        groups.withLock { $0[source.source] = group }
        source.watchdog.start()  // the timeout counts from here, not from a start-up that waited for the servers
        try await withGracefulShutdownHandler {
            try await group.run()
        } onGracefulShutdown: {
            Task { await group.triggerGracefulShutdown() }
        }
        guard !Task.isShuttingDownGracefully && !Task.isCancelled else { return }
        // Stopped on its own: the source is gone.
        groups.withLock { $0[source.source] = nil }
        running.withLock { $0.removeAll { $0.source == source.source } }
        source.removeMetrics()
        logger.info("stopped serving an outbox that is gone", metadata: [LogKey.outboxSource: "\(source.source)"])
    }
}
