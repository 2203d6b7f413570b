import Metrics

/// The relay's metrics of one source (swift-metrics; exported by whatever backend the process
/// bootstraps), each labelled `source` = `database.collection`. Labels are bounded: the sources
/// are configured (at most `OutboxSource.limit`), the publish result is one of six values.
public struct RelayMetrics: Sendable {
    public static let publishResults = ["acked", "nacked", "returned", "timed_out", "connection_lost", "blocked"]
    /// 1 while the broker blocks this relay's publishing (`connection.blocked`, a resource alarm):
    /// one connection serves every source, so it has no source label.
    public static let brokerBlocked = Gauge(label: "outbox_broker_blocked")

    /// The source's label, `[("source", "database.collection")]`; empty without a source.
    public let dimensions: [(String, String)]
    private let publishCounters: [String: Counter]
    /// Time from an event's occurrence (its `timestamp`) to the broker's confirm, per event type.
    public let deliveryLag: EventLag
    /// Time from the first publish of a batch to its last confirm.
    public let confirmDuration: Timer
    public let batchSize: Recorder
    /// The most events a fetch asks for now: the batch size, or fewer while passes run longer
    /// than a third of the lease TTL.
    public let fetchLimit: Gauge
    public let partitionsOwned: Gauge
    /// Marks tried again after a store error.
    public let markRetries: Counter
    /// 1 while the source's passes succeed, 0 after one failed on the store (the collection cannot
    /// be read or written, the database is down).
    public let sourceUp: Gauge

    public init(source: OutboxSource? = nil) {
        let dimensions = source.map { [("source", $0.description)] } ?? []
        self.dimensions = dimensions
        publishCounters = Dictionary(
            uniqueKeysWithValues: Self.publishResults.map {
                ($0, Counter(label: "outbox_publishes_total", dimensions: dimensions + [("result", $0)]))
            })
        deliveryLag = EventLag(name: "outbox_delivery_lag_seconds", dimensions: dimensions)
        confirmDuration = Timer(label: "outbox_confirm_duration_seconds", dimensions: dimensions)
        batchSize = Recorder(label: "outbox_batch_size", dimensions: dimensions, aggregate: true)
        fetchLimit = Gauge(label: "outbox_fetch_limit", dimensions: dimensions)
        partitionsOwned = Gauge(label: "outbox_partitions_owned", dimensions: dimensions)
        markRetries = Counter(label: "outbox_mark_retries_total", dimensions: dimensions)
        sourceUp = Gauge(label: "outbox_source_up", dimensions: dimensions)
    }

    /// Removes every series of the source from the backend.
    public func destroy() {
        for counter in publishCounters.values { counter.destroy() }
        deliveryLag.destroy()
        confirmDuration.destroy()
        batchSize.destroy()
        for gauge in [fetchLimit, partitionsOwned, sourceUp] { gauge.destroy() }
        markRetries.destroy()
    }

    public func publishes(_ result: String) -> Counter { publishCounters[result] ?? publishCounters["connection_lost"]! }
}
