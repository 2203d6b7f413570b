import Metrics

/// The store's metrics of one source.
struct StoreMetrics: Sendable {
    /// Documents returned by the relay's fetch queries, next to events delivered: the read cost
    /// of the relay per event.
    let documentsRead: Counter
    let expiredEvents: Counter
    /// Documents settled (delivered or parked) with plain sets after a write of the relay's state
    /// was refused.
    let parkedUnwritable: Counter
    /// Documents this relay skips because they can be neither marked nor parked.
    let unwritable: Gauge

    init(dimensions: [(String, String)]) {
        documentsRead = Counter(label: "outbox_documents_read_total", dimensions: dimensions)
        expiredEvents = Counter(label: "outbox_expired_events_total", dimensions: dimensions)
        parkedUnwritable = Counter(label: "outbox_unwritable_settled_total", dimensions: dimensions)
        unwritable = Gauge(label: "outbox_unwritable_documents", dimensions: dimensions)
    }

    /// Removes the source's series from the backend.
    func destroy() {
        for counter in [documentsRead, expiredEvents, parkedUnwritable] { counter.destroy() }
        unwritable.destroy()
    }
}
