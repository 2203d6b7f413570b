import Foundation
import Outbox
import Testing

@testable import OutboxMongo

@Suite("W3C trace context through the outbox")
struct TraceContextTests {
    static let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    @Test("a version 00 traceparent is valid; its trace and parent ids read back")
    func valid() throws {
        let context = try #require(TraceContext(traceparent: Self.parent, tracestate: "congo=t61rcWkgMzE"))
        #expect(context.traceId == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(context.parentId == "00f067aa0ba902b7")
        #expect(context.headers == ["traceparent": .string(Self.parent), "tracestate": .string("congo=t61rcWkgMzE")])
        // A later version may carry more fields after its own.
        #expect(TraceContext(traceparent: "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra") != nil)
    }

    @Test(
        "what the specification refuses is not a trace context",
        arguments: [
            "", "garbage", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ])
    func invalid(traceparent: String) {
        #expect(TraceContext(traceparent: traceparent) == nil)
    }

    @Test("a tracestate that is too long or not printable ASCII is left out; the traceparent stays")
    func tracestate() throws {
        let long = String(repeating: "a", count: TraceContext.maxTracestateLength + 1)
        for bad in [long, "k=v\nInjected: 1", "k=é", ""] {
            let context = try #require(TraceContext(traceparent: Self.parent, tracestate: bad))
            #expect(context.tracestate == nil)
        }
    }

    func message(_ extra: Document, format: BodyFormat = .envelope) throws -> OutboxMessage {
        try SeedOrder.message(.init(format: format), extra: extra)
    }

    @Test("the writer's top-level traceparent and tracestate become the message's headers")
    func topLevel() throws {
        let message = try message(["traceparent": .string(Self.parent), "tracestate": "a=1"])
        #expect(message.wireHeaders["traceparent"] == .string(Self.parent))
        #expect(message.wireHeaders["tracestate"] == .string("a=1"))
    }

    @Test("in headers they pass through; a top-level traceparent wins over the one in headers")
    func inHeaders() throws {
        let other = "00-11111111111111111111111111111111-2222222222222222-00"
        let fromHeaders = try message(["headers": ["traceparent": .string(other), "x-tenant": "t1"]])
        #expect(fromHeaders.wireHeaders["traceparent"] == .string(other))
        #expect(fromHeaders.wireHeaders["x-tenant"] == .string("t1"))
        let both = try message(["traceparent": .string(Self.parent), "headers": ["traceparent": .string(other), "tracestate": "b=2"]])
        #expect(both.wireHeaders["traceparent"] == .string(Self.parent))
        #expect(both.wireHeaders["tracestate"] == nil, "the tracestate goes with its own traceparent")
    }

    @Test("one that is not valid (or not a string) is dropped and the event still decodes", arguments: [BSON.string("nonsense"), .int32(7)])
    func dropped(value: BSON) throws {
        let top = try message(["traceparent": value, "tracestate": "a=1"])
        #expect(top.wireHeaders["traceparent"] == nil)
        #expect(top.wireHeaders["tracestate"] == nil)
        let inHeaders = try message(["headers": ["traceparent": value]])
        #expect(inHeaders.wireHeaders["traceparent"] == nil)
    }

    @Test("CloudEvents carry it as the distributed-tracing extension: attributes when structured, ce- headers when binary")
    func cloudEvents() throws {
        let structured = try message(["traceparent": .string(Self.parent), "tracestate": "a=1"], format: .cloudEvents)
        let event = try JSONValue.parse(structured.body)
        #expect(event["traceparent"] == .string(Self.parent))
        #expect(event["tracestate"] == .string("a=1"))
        #expect(structured.wireHeaders["traceparent"] == .string(Self.parent))
        let binary = try message(["traceparent": .string(Self.parent)], format: .cloudEventsBinary)
        #expect(binary.wireHeaders["ce-traceparent"] == .string(Self.parent))
        #expect(binary.wireHeaders["traceparent"] == .string(Self.parent))
        #expect(binary.incoming.traceContext?.traceparent == Self.parent, "the consumer library reads it back")
    }

    @Test("OutboxWriter writes an event's trace context as the contract's top-level fields")
    func writer() throws {
        let context = try #require(TraceContext(traceparent: Self.parent, tracestate: "a=1"))
        let document = OutboxWriter().document(
            for: NewEvent(type: "OrderCreated", aggregateType: "Order", aggregateId: "o-1", data: [:], traceContext: context))
        #expect(document["traceparent"] == .string(Self.parent))
        #expect(document["tracestate"] == "a=1")
        #expect(OutboxWriter().document(for: NewEvent(type: "T", aggregateType: "A", aggregateId: "a", data: [:]))["traceparent"] == nil)
    }
}
