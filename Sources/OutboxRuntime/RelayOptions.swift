import ArgumentParser
import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo

/// The relay's options; each is declared in `SettingCatalog`, and `resolve` turns them (with the
/// environment) into checked settings.
public struct RelayOptions: ParsableArguments {
    @Option(name: SettingDeclaration.amqpURL.name, help: SettingDeclaration.amqpURL.argumentHelp)
    public var amqpURL: String?

    @Option(name: SettingDeclaration.collection.name, help: SettingDeclaration.collection.argumentHelp)
    public var collection: String?

    @Option(name: SettingDeclaration.relaySources.name, help: SettingDeclaration.relaySources.argumentHelp)
    public var sources: [String] = []

    @Option(name: SettingDeclaration.relaySourcesFile.name, help: SettingDeclaration.relaySourcesFile.argumentHelp)
    public var sourcesFile: String?

    @Option(name: SettingDeclaration.relayDiscoverCollection.name, help: SettingDeclaration.relayDiscoverCollection.argumentHelp)
    public var discoverCollection: String?

    @Option(name: SettingDeclaration.relayDiscoverDatabases.name, help: SettingDeclaration.relayDiscoverDatabases.argumentHelp)
    public var discoverDatabases: String?

    @Option(name: SettingDeclaration.relayDiscoverInterval.name, help: SettingDeclaration.relayDiscoverInterval.argumentHelp)
    public var discoverInterval: String?

    @Option(name: SettingDeclaration.relayExchange.name, help: SettingDeclaration.relayExchange.argumentHelp)
    public var exchange: String?

    @Option(name: SettingDeclaration.relayExchangeMap.name, help: SettingDeclaration.relayExchangeMap.argumentHelp)
    public var exchangeMap: String?

    @Option(name: SettingDeclaration.relayHeaderFields.name, help: SettingDeclaration.relayHeaderFields.argumentHelp)
    public var headerFields: String?

    @Option(name: SettingDeclaration.relayRoutingKeyTemplate.name, help: SettingDeclaration.relayRoutingKeyTemplate.argumentHelp)
    public var routingKeyTemplate: String?

    @Option(name: SettingDeclaration.relayBatchSize.name, help: SettingDeclaration.relayBatchSize.argumentHelp)
    public var batchSize: Int?

    @Option(name: SettingDeclaration.relayBatchMaxBytes.name, help: SettingDeclaration.relayBatchMaxBytes.argumentHelp)
    public var batchMaxBytes: Int?

    @Option(name: SettingDeclaration.relayMaxInFlight.name, help: SettingDeclaration.relayMaxInFlight.argumentHelp)
    public var maxInFlight: Int?

    @Option(name: SettingDeclaration.relayPollInterval.name, help: SettingDeclaration.relayPollInterval.argumentHelp)
    public var pollInterval: String?

    @Option(name: SettingDeclaration.relayConfirmTimeout.name, help: SettingDeclaration.relayConfirmTimeout.argumentHelp)
    public var confirmTimeout: String?

    @Option(name: SettingDeclaration.relayMaxAttempts.name, help: SettingDeclaration.relayMaxAttempts.argumentHelp)
    public var maxAttempts: Int?

    @Option(name: SettingDeclaration.relayRetryBaseDelay.name, help: SettingDeclaration.relayRetryBaseDelay.argumentHelp)
    public var retryBaseDelay: String?

    @Option(name: SettingDeclaration.relayRetryMaxDelay.name, help: SettingDeclaration.relayRetryMaxDelay.argumentHelp)
    public var retryMaxDelay: String?

    @Option(name: SettingDeclaration.relayMaxBodyBytes.name, help: SettingDeclaration.relayMaxBodyBytes.argumentHelp)
    public var maxBodyBytes: Int?

    @Option(name: SettingDeclaration.relayBodyFormat.name, help: SettingDeclaration.relayBodyFormat.argumentHelp)
    public var bodyFormat: String?

    @Option(name: SettingDeclaration.relayBodyFormatByExchange.name, help: SettingDeclaration.relayBodyFormatByExchange.argumentHelp)
    public var bodyFormatByExchange: String?

    @Option(name: SettingDeclaration.relayDecimalFormat.name, help: SettingDeclaration.relayDecimalFormat.argumentHelp)
    public var decimalFormat: String?

    @Option(name: SettingDeclaration.relayCloudEventsSource.name, help: SettingDeclaration.relayCloudEventsSource.argumentHelp)
    public var cloudEventsSource: String?

    @Option(name: SettingDeclaration.relayShutdownTimeout.name, help: SettingDeclaration.relayShutdownTimeout.argumentHelp)
    public var shutdownTimeout: String?

    @Option(name: SettingDeclaration.partitions.name, help: SettingDeclaration.partitions.argumentHelp)
    public var partitions: Int?

    @Option(name: SettingDeclaration.relayLeaseTTL.name, help: SettingDeclaration.relayLeaseTTL.argumentHelp)
    public var leaseTTL: String?

    @Option(name: SettingDeclaration.relayLivenessTimeout.name, help: SettingDeclaration.relayLivenessTimeout.argumentHelp)
    public var livenessTimeout: String?

    @Option(name: SettingDeclaration.relayID.name, help: SettingDeclaration.relayID.argumentHelp)
    public var relayID: String?

    @Option(name: SettingDeclaration.relayHTTPAddress.name, help: SettingDeclaration.relayHTTPAddress.argumentHelp)
    public var httpAddress: String?

    @Option(name: SettingDeclaration.relayParkTransientAfter.name, help: SettingDeclaration.relayParkTransientAfter.argumentHelp)
    public var parkTransientAfter: String?

    @Option(name: SettingDeclaration.relayDeliveredRetention.name, help: SettingDeclaration.relayDeliveredRetention.argumentHelp)
    public var deliveredRetention: String?

    @Option(name: SettingDeclaration.relayMetricsInterval.name, help: SettingDeclaration.relayMetricsInterval.argumentHelp)
    public var metricsInterval: String?

    @Option(name: SettingDeclaration.metricsEventTypes.name, help: SettingDeclaration.metricsEventTypes.argumentHelp)
    public var metricsEventTypes: Int?

    @Flag(name: SettingDeclaration.relayChangeStream.name, inversion: .prefixedNo, help: SettingDeclaration.relayChangeStream.argumentHelp)
    public var changeStream: Bool?

    @Flag(help: "Exit once no event is due (for batch jobs and tests) instead of polling for ever.")
    public var exitWhenIdle = false

    public init() {}

    /// Every relay setting, checked: a bad one throws a `ConfigurationError` naming it.
    public func resolve(_ settings: Settings, mongo: MongoOptions) throws -> RelaySettings {
        let maxBody = try settings.int(maxBodyBytes, .relayMaxBodyBytes)
        let ttl = try settings.duration(leaseTTL, .relayLeaseTTL)
        guard ttl >= .milliseconds(300) else {
            throw ConfigurationError(setting: SettingDeclaration.relayLeaseTTL.label, reason: "must be at least 300ms")
        }
        let confirmTimeout = try settings.duration(confirmTimeout, .relayConfirmTimeout)
        // A pass waits for confirms up to this long; no longer than a lease, so a pass whose lease
        // lapsed meanwhile ends before its partitions could be another relay's for long.
        let confirmTimeoutInEffect = min(confirmTimeout, ttl)
        // A healthy pass may wait the whole confirm timeout (and a failed one backs off up to 5 s).
        let liveness = try settings.duration(livenessTimeout, .relayLivenessTimeout)
        guard liveness > confirmTimeoutInEffect + .seconds(5) else {
            throw ConfigurationError(
                setting: SettingDeclaration.relayLivenessTimeout.label,
                reason: "must be longer than \(SettingDeclaration.relayConfirmTimeout.env) plus 5s (\(confirmTimeoutInEffect + .seconds(5))), "
                    + "which a healthy pass may take")
        }
        let retention = try settings.durationOrOff(deliveredRetention, .relayDeliveredRetention)
        if let keep = retention ?? nil, keep < .seconds(1) {
            throw ConfigurationError(setting: SettingDeclaration.relayDeliveredRetention.label, reason: "must be at least 1s, or 'off'")
        }
        let http = try settings.string(httpAddress, .relayHTTPAddress)
        let discovery = try self.discovery(settings)
        let own = try sourceSettings(settings)
        let filed = try settings.raw(sourcesFile, .relaySourcesFile).map { try SourcesFile.read($0, options: self, settings: settings) } ?? []
        // The file's sources join those named; without either, the shorthand (unless discovering).
        let named = try resolvedSources(settings, mongo: mongo, discovering: discovery != nil || !filed.isEmpty)
        let databases = Dictionary(grouping: named + filed.map(\.0), by: \.database).mapValues { Set($0) }
        if let (database, both) = databases.first(where: { $0.value.count > 1 }) {
            throw ConfigurationError(
                setting: SettingDeclaration.relaySourcesFile.label,
                reason: "names \(both.map(\.description).sorted().joined(separator: " and ")): a database holds one outbox (\(database))")
        }
        return RelaySettings(
            uri: try mongo.resolvedURI(settings),
            sources: named + filed.map(\.0).filter { !named.contains($0) },
            sourceSettings: Dictionary(filed) { first, _ in first },
            discovery: discovery,
            discoverInterval: try settings.duration(discoverInterval, .relayDiscoverInterval),
            amqp: try settings.amqp(amqpURL),
            httpEndpoint: http == "off" ? nil : try OpsServer.address(http, setting: SettingDeclaration.relayHTTPAddress.label),
            routing: own.routing,
            relay: RelayConfiguration(
                batchSize: try settings.int(batchSize, .relayBatchSize),
                pollInterval: try settings.duration(pollInterval, .relayPollInterval),
                retryPolicy: RetryPolicy(
                    maxAttempts: try settings.int(maxAttempts, .relayMaxAttempts),
                    baseDelay: try settings.duration(retryBaseDelay, .relayRetryBaseDelay),
                    maxDelay: try settings.duration(retryMaxDelay, .relayRetryMaxDelay),
                    parkTransientAfter: try settings.durationOrOff(parkTransientAfter, .relayParkTransientAfter) ?? nil),
                batchMaxBytes: try settings.int(batchMaxBytes, .relayBatchMaxBytes),
                // Until a batch was seen, events as large as allowed: the first fetch fits the budget too.
                assumedBytesPerEvent: maxBody,
                wallClock: { Int64(Date().timeIntervalSince1970 * 1000) },
                // A pass fits in a third of the lease TTL, the time between renewals.
                passTarget: ttl / 3),
            publisher: ConfirmPublisher.Options(
                maxInFlight: try settings.int(maxInFlight, .relayMaxInFlight), confirmTimeout: confirmTimeoutInEffect),
            confirmTimeoutAsSet: confirmTimeout,
            maxBodyBytes: maxBody,
            body: own.body,
            shutdownTimeout: try settings.duration(shutdownTimeout, .relayShutdownTimeout),
            partitions: own.partitions,
            leaseTTL: ttl,
            livenessTimeout: liveness,
            owner: try settings.string(relayID, .relayID, default: Runtime.defaultInstanceName()),
            changeStream: try settings.bool(changeStream, .relayChangeStream),
            retentionSeconds: retention.map { $0.map { Int($0.components.seconds) } },
            metricsInterval: try settings.duration(metricsInterval, .relayMetricsInterval))
    }

    /// `--source` (repeated or comma-separated) or `OUTBOX_SOURCES`; without either, the one
    /// source `OUTBOX_DATABASE`.`OUTBOX_COLLECTION`, unless discovery finds them.
    func resolvedSources(_ settings: Settings, mongo: MongoOptions, discovering: Bool) throws -> [OutboxSource] {
        let listed = sources.joined(separator: ",")
        guard let text = settings.raw(listed, .relaySources) else {
            if discovering { return [] }
            return [OutboxSource(database: try mongo.resolvedDatabase(settings), collection: try settings.string(collection, .collection))]
        }
        return try OutboxSource.parseList(text, setting: SettingDeclaration.relaySources.label)
    }

    /// Discovery, when `OUTBOX_DISCOVER_COLLECTION` names a collection.
    func discovery(_ settings: Settings) throws -> SourceDiscovery? {
        guard let name = settings.raw(discoverCollection, .relayDiscoverCollection) else { return nil }
        let collection = try OutboxSource(parsing: "database.\(name)", setting: SettingDeclaration.relayDiscoverCollection.label).collection
        let databases = try DatabaseFilter(
            parsing: try settings.string(discoverDatabases, .relayDiscoverDatabases), setting: SettingDeclaration.relayDiscoverDatabases.label)
        return SourceDiscovery(collection: collection, databases: databases)
    }

    /// The settings a source may have of its own, from these options and the environment.
    func sourceSettings(_ settings: Settings) throws -> SourceSettings {
        SourceSettings(routing: try routing(settings), body: try body(settings), partitions: try settings.int(partitions, .partitions))
    }

    func routing(_ settings: Settings) throws -> EventRouting {
        let defaultExchange = try settings.string(exchange, .relayExchange)
        guard defaultExchange.utf8.count <= 255 else {
            throw ConfigurationError(setting: SettingDeclaration.relayExchange.label, reason: "must be at most 255 bytes")
        }
        return EventRouting(
            defaultExchange: defaultExchange,
            exchangeByName: try EventRouting.parseMap(
                try settings.string(exchangeMap, .relayExchangeMap), setting: SettingDeclaration.relayExchangeMap.label),
            mapping: FieldMapping(
                headers: try FieldMapping.parseHeaders(
                    try settings.string(headerFields, .relayHeaderFields), setting: SettingDeclaration.relayHeaderFields.label),
                routingKey: try FieldMapping.parseTemplate(
                    try settings.string(routingKeyTemplate, .relayRoutingKeyTemplate), setting: SettingDeclaration.relayRoutingKeyTemplate.label)))
    }

    func body(_ settings: Settings) throws -> MessageBodyOptions {
        MessageBodyOptions(
            format: try BodyFormat(parsing: try settings.string(bodyFormat, .relayBodyFormat), setting: SettingDeclaration.relayBodyFormat.label),
            formatByExchange: try WireFormat.parseFormatByExchange(
                try settings.string(bodyFormatByExchange, .relayBodyFormatByExchange), setting: SettingDeclaration.relayBodyFormatByExchange.label),
            decimals: try DecimalFormat(
                parsing: try settings.string(decimalFormat, .relayDecimalFormat), setting: SettingDeclaration.relayDecimalFormat.label),
            cloudEventsSource: try WireFormat.parseCloudEventsSource(
                try settings.string(cloudEventsSource, .relayCloudEventsSource), setting: SettingDeclaration.relayCloudEventsSource.label))
    }
}

/// The relay's settings once checked.
public struct RelaySettings: Sendable {
    public var uri: String
    /// The outboxes named, at most one a database; none when discovery finds them all.
    public var sources: [OutboxSource]
    /// Sources with settings of their own (`OUTBOX_SOURCES_FILE`); the others take the relay's.
    public var sourceSettings: [OutboxSource: SourceSettings]
    /// Looks for more outboxes every `discoverInterval`; nil: the sources named are all.
    public var discovery: SourceDiscovery?
    public var discoverInterval: Duration
    public var amqp: AMQPConfiguration
    /// Where /metrics and the health endpoints listen; nil for none.
    public var httpEndpoint: (host: String, port: Int)?
    public var routing: EventRouting
    public var relay: RelayConfiguration
    /// The confirm timeout is the one in effect: at most the lease TTL.
    public var publisher: ConfirmPublisher.Options
    /// The confirm timeout as set, to say when it was lowered.
    public var confirmTimeoutAsSet: Duration
    public var maxBodyBytes: Int
    public var body: MessageBodyOptions
    public var shutdownTimeout: Duration
    public var partitions: Int
    public var leaseTTL: Duration
    public var livenessTimeout: Duration
    public var owner: String
    public var changeStream: Bool
    /// Seconds to keep delivered events, `.some(nil)` for ever; nil when not set (left as is).
    public var retentionSeconds: Int??
    public var metricsInterval: Duration

    /// The settings of `source`: its own, or the relay's.
    public func settings(of source: OutboxSource) -> SourceSettings {
        sourceSettings[source] ?? SourceSettings(routing: routing, body: body, partitions: partitions)
    }
}
