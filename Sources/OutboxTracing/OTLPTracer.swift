import Outbox
import Synchronization
import Tracing

/// The tracer the relay and the consumers bootstrap with tracing on: W3C trace context in and
/// out (`traceparent`, `tracestate`), the sampler of `OTEL_TRACES_SAMPLER`, and spans handed, as
/// they end, to a bounded queue that `SpanExport` empties towards the collector. A span costs a
/// lock or two and no task: the hot path of a publish never waits for the exporter.
final class OTLPTracer: MessageSpanTracer, Sendable {
    typealias Span = OTLPSpan

    static let traceparentHeader = "traceparent"
    static let tracestateHeader = "tracestate"

    private let sampler: Sampler
    private let ids = SpanIds()
    private let queue: SpanQueue

    init(sampler: Sampler, queue: SpanQueue) {
        self.sampler = sampler
        self.queue = queue
    }

    func startSpan<Instant: TracerInstant>(
        _ operationName: String, context: @autoclosure () -> InstrumentationContext, ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant, function: String, file fileID: String, line: UInt
    ) -> OTLPSpan {
        let context = context()
        return span(operationName, base: context, parent: context.spanContext, kind: kind, start: instant().nanosecondsSinceEpoch, messaging: nil)
    }

    func startMessageSpan(_ name: String, kind: SpanKind, attributes: MessagingAttributes, headers: inout [String: HeaderValue]) -> any Tracing.Span {
        var parent: SpanContext?
        if case .string(let traceparent)? = headers[Self.traceparentHeader] {
            var tracestate: String?
            if case .string(let state)? = headers[Self.tracestateHeader] { tracestate = state }
            parent = SpanContext(traceparent: traceparent, tracestate: tracestate)
        }
        let span = span(name, base: .topLevel, parent: parent, kind: kind, start: DefaultTracerClock.now.nanosecondsSinceEpoch, messaging: attributes)
        if span.isRecording {
            headers[Self.traceparentHeader] = .string(span.spanContext.traceparent)
            if let state = span.spanContext.traceState { headers[Self.tracestateHeader] = .string(state) }
        }
        return span
    }

    /// A span of the trace of `parent` (a new trace without one), sampled or not.
    private func span(
        _ name: String, base: InstrumentationContext, parent: SpanContext?, kind: SpanKind, start: UInt64, messaging: MessagingAttributes?
    ) -> OTLPSpan {
        let traceId = parent?.traceId ?? ids.traceId()
        let sampled = sampler.isSampled(traceId: traceId, parent: parent)
        let own = SpanContext(traceId: traceId, spanId: ids.spanId(), isSampled: sampled, traceState: parent?.traceState)
        return OTLPSpan(
            name: name, base: base, spanContext: own, parentSpanId: parent?.spanId, kind: kind, start: start, messaging: messaging,
            queue: sampled ? queue : nil)
    }

    func forceFlush() { queue.exportSoon() }

    func extract<Carrier, Extract>(_ carrier: Carrier, into context: inout InstrumentationContext, using extractor: Extract)
    where Extract: Extractor, Extract.Carrier == Carrier {
        guard let parent = extractor.extract(key: Self.traceparentHeader, from: carrier),
            let span = SpanContext(traceparent: parent, tracestate: extractor.extract(key: Self.tracestateHeader, from: carrier))
        else { return }
        context.spanContext = span
    }

    func inject<Carrier, Inject>(_ context: InstrumentationContext, into carrier: inout Carrier, using injector: Inject)
    where Inject: Injector, Inject.Carrier == Carrier {
        guard let span = context.spanContext else { return }
        injector.inject(span.traceparent, forKey: Self.traceparentHeader, into: &carrier)
        if let state = span.traceState { injector.inject(state, forKey: Self.tracestateHeader, into: &carrier) }
    }
}

/// A span of `OTLPTracer`. A span the sampler left out records nothing but still has a context,
/// so the decision travels on in `traceparent`. A message's span keeps its messaging attributes
/// as one value, not as a dictionary.
final class OTLPSpan: Tracing.Span {
    /// The context it was started in (top level for a message's span); `context` adds its own.
    private let base: InstrumentationContext
    let spanContext: SpanContext
    private let parentSpanId: UInt64?
    private let kind: SpanKind
    private let start: UInt64
    private let messaging: MessagingAttributes?
    /// Nil for a span that is not sampled.
    private let queue: SpanQueue?
    private let state: Mutex<State>

    private struct State {
        var name: String
        var attributes: SpanAttributes = [:]
        var status: SpanStatus?
        var events: [SpanEvent] = []
        var links: [SpanContext] = []
        var ended = false
    }

    init(
        name: String, base: InstrumentationContext, spanContext: SpanContext, parentSpanId: UInt64?, kind: SpanKind, start: UInt64,
        messaging: MessagingAttributes?, queue: SpanQueue?
    ) {
        self.base = base
        self.spanContext = spanContext
        self.parentSpanId = parentSpanId
        self.kind = kind
        self.start = start
        self.messaging = messaging
        self.queue = queue
        self.state = Mutex(State(name: name))
    }

    var context: InstrumentationContext {
        var context = base
        context.spanContext = spanContext
        return context
    }

    var isRecording: Bool { queue != nil && !state.withLock { $0.ended } }

    var operationName: String {
        get { state.withLock { $0.name } }
        set { update { $0.name = newValue } }
    }

    /// The messaging attributes and those set since; setting replaces those set since.
    var attributes: SpanAttributes {
        get {
            var attributes = messaging?.spanAttributes ?? [:]
            attributes.merge(state.withLock { $0.attributes })
            return attributes
        }
        set {
            var added = newValue
            messaging?.forEach { key, value in
                if added[key]?.toSpanAttribute() == value { added[key] = nil }
            }
            update { $0.attributes = added }
        }
    }

    func setStatus(_ status: SpanStatus) {
        update { state in
            // The specification: OK is final.
            guard state.status?.code != .ok else { return }
            state.status = status
        }
    }

    func addEvent(_ event: SpanEvent) { update { $0.events.append(event) } }

    func recordError<Instant: TracerInstant>(_ error: any Error, attributes: SpanAttributes, at instant: @autoclosure () -> Instant) {
        var eventAttributes = attributes
        eventAttributes["exception.type"] = "\(type(of: error))"
        eventAttributes["exception.message"] = "\(error)"
        addEvent(SpanEvent(name: "exception", at: instant(), attributes: eventAttributes))
    }

    func addLink(_ link: SpanLink) {
        guard let linked = link.context.spanContext else { return }
        update { $0.links.append(linked) }
    }

    func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
        guard let queue else { return }
        let end = instant().nanosecondsSinceEpoch
        let finished = state.withLock { state -> FinishedSpan? in
            guard !state.ended else { return nil }
            state.ended = true
            return FinishedSpan(
                context: spanContext, parentSpanId: parentSpanId, name: state.name, kind: kind, start: start, end: end,
                messaging: messaging, attributes: state.attributes, status: state.status, events: state.events, links: state.links)
        }
        if let finished { queue.append(finished) }
    }

    /// Changes a span that records and has not ended; anything else is ignored.
    private func update(_ change: (inout State) -> Void) {
        guard queue != nil else { return }
        state.withLock { state in
            guard !state.ended else { return }
            change(&state)
        }
    }
}

/// An ended span, as the exporter encodes it.
struct FinishedSpan: Sendable {
    var context: SpanContext
    var parentSpanId: UInt64?
    var name: String
    var kind: SpanKind
    var start: UInt64
    var end: UInt64
    var messaging: MessagingAttributes?
    var attributes: SpanAttributes
    var status: SpanStatus?
    var events: [SpanEvent]
    var links: [SpanContext]
}
