import Logging
import Outbox
import OutboxMongo
import ServiceLifecycle
import Synchronization

/// Runs a relay's sources, each as a service group of its own (`RelaySource.services`), and,
/// with discovery, the outboxes found while it runs: every `interval` it looks again, prepares a
/// new one and starts it beside the others. A source found once is served until the relay stops.
/// A graceful shutdown stops every source's group (each finishes its batch, then releases its
/// leases). A source whose service fails ends the relay, as any service of it would.
final class SourceSupervisor: Service {
    private let running: Mutex<[RelaySource]>
    private let discovery: Discovery?
    private let logger: Logger
    private let shutdownTimeout: Duration

    /// How new sources are found and made ready.
    struct Discovery: Sendable {
        var finder: SourceDiscovery
        var pool: MongoClientPool
        var interval: Duration
        /// Builds and prepares a source found (throws when it cannot be served).
        var start: @Sendable (OutboxSource) async throws -> RelaySource
    }

    init(sources: [RelaySource], discovery: Discovery?, shutdownTimeout: Duration, logger: Logger) {
        running = Mutex(sources)
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

    /// Runs the services of one source until a graceful shutdown reaches this service.
    private func serve(_ source: RelaySource) async throws {
        var configuration = ServiceGroupConfiguration(services: source.services.map { .init(service: $0) }, logger: source.logger)
        configuration.maximumGracefulShutdownDuration = shutdownTimeout
        let group = ServiceGroup(configuration: configuration)
        source.watchdog.start()  // the timeout counts from here, not from a start-up that waited for the servers
        try await withGracefulShutdownHandler {
            try await group.run()
        } onGracefulShutdown: {
            Task { await group.triggerGracefulShutdown() }
        }
    }
}
