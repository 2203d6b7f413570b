import Foundation
import Outbox
import OutboxConsumer
import Testing

@testable import OutboxMongo

@Suite("Wire formats: rendering and reading back")
struct WireFormatRenderingTests {
    @Test("payload with number literals is the seed's event object, exactly")
    func payload() throws {
        let message = try SeedOrder.message(.init(format: .payload, decimals: .number))
        #expect(message.bodyText == SeedOrder.dataWithNumbers)
        #expect(message.contentType == "application/json")
        let strings = try SeedOrder.message(.init(format: .payload))
        #expect(strings.bodyText == SeedOrder.dataWithStrings)
    }

    @Test("envelope is today's body")
    func envelope() throws {
        let message = try SeedOrder.message(.init())
        #expect(
            message.bodyText
                == #"{"id":"\#(SeedOrder.eventId)","type":"OrderCreated","aggregateType":"Order","aggregateId":"\#(SeedOrder.orderId)","aggregateVersion":1,"timestamp":"\#(SeedOrder.time)","data":\#(SeedOrder.dataWithStrings)}"#
        )
        #expect(message.contentType == "application/json")
    }

    @Test("CloudEvents structured mode")
    func cloudEvents() throws {
        let message = try SeedOrder.message(.init(format: .cloudEvents, decimals: .number, cloudEventsSource: "https://shop.example/orders"))
        #expect(message.contentType == "application/cloudevents+json")
        #expect(
            message.bodyText
                == #"{"specversion":"1.0","id":"\#(SeedOrder.eventId)","source":"https://shop.example/orders","type":"OrderCreated","subject":"\#(SeedOrder.orderId)","time":"\#(SeedOrder.time)","datacontenttype":"application/json","data":\#(SeedOrder.dataWithNumbers)}"#
        )
        #expect(message.headers.keys.allSatisfy { !$0.hasPrefix("ce-") })
    }

    @Test("CloudEvents binary mode: data as the body, attributes as ce- headers, datacontenttype as content_type")
    func cloudEventsBinary() throws {
        let message = try SeedOrder.message(.init(format: .cloudEventsBinary))
        #expect(message.bodyText == SeedOrder.dataWithStrings)
        #expect(message.contentType == "application/json")
        let ce = message.wireHeaders.filter { $0.key.hasPrefix("ce-") }
        #expect(
            ce == [
                "ce-specversion": .string("1.0"), "ce-id": .string(SeedOrder.eventId), "ce-source": .string("/outbox-relay"),
                "ce-type": .string("OrderCreated"), "ce-subject": .string(SeedOrder.orderId), "ce-time": .string(SeedOrder.time),
            ])
    }

    @Test("NestJS: pattern is the routing key, no id (an id would make it a request)")
    func nestJS() throws {
        let message = try SeedOrder.message(.init(format: .nestJS, decimals: .number))
        #expect(message.bodyText == #"{"pattern":"order.created","data":\#(SeedOrder.dataWithNumbers)}"#)
    }

    @Test("message id, type, time, correlation and aggregate headers are the same in every format", arguments: BodyFormat.allCases)
    func sameMetadata(format: BodyFormat) throws {
        let message = try SeedOrder.message(.init(format: format))
        #expect(message.id == SeedOrder.eventId)
        #expect(message.type == "OrderCreated")
        #expect(message.correlationId == "key-1")
        #expect(message.occurredAt == SeedOrder.occurredAt)
        let headers = message.wireHeaders
        #expect(headers["x-aggregate-type"] == .string("Order"))
        #expect(headers["x-aggregate-id"] == .string(SeedOrder.orderId))
        #expect(headers["x-aggregate-version"] == .int(1))
        #expect(headers["x-occurred-at"] == .int(SeedOrder.occurredAt))
        #expect(headers["x-body-format"] == .string(format.rawValue))
    }

    @Test("the event's bodyFormat field beats its exchange's format, which beats the relay's")
    func precedence() throws {
        let options = MessageBodyOptions(format: .envelope, formatByExchange: ["shop": .payload])
        #expect(try SeedOrder.message(options, exchange: "other").headers["x-body-format"] == .string("envelope"))
        #expect(try SeedOrder.message(options, exchange: "shop").headers["x-body-format"] == .string("payload"))
        #expect(try SeedOrder.message(options, exchange: "shop", extra: ["bodyFormat": "nestjs"]).headers["x-body-format"] == .string("nestjs"))
        #expect(try SeedOrder.message(options, exchange: "shop", extra: ["bodyFormat": nil]).headers["x-body-format"] == .string("payload"))
    }

    @Test("a bodyFormat naming no format makes the document malformed (it is parked with the reason)")
    func badPerEventFormat() {
        for bad: BSON in ["xml", .int32(3)] {
            let result = OutboxDocument.decode(SeedOrder.document(extra: ["bodyFormat": bad]), options: .init(), isNew: false)
            guard case .failure(let malformed) = result else {
                Issue.record("\(bad) was accepted")
                continue
            }
            #expect(malformed.reason.hasPrefix("bodyFormat must be one of envelope, payload, cloudevents, cloudevents-binary, nestjs"))
        }
    }

    @Test("an event without aggregate type or version renders only what is there", arguments: BodyFormat.allCases)
    func partialMetadata(format: BodyFormat) throws {
        var message = OutboxMessage(
            id: "e1", type: "Shipped", aggregateType: "", aggregateId: "s-1", aggregateVersion: nil, exchange: "x",
            routingKey: "shipped", occurredAt: 0, body: [])
        try MessageBody.render(&message, data: ["n": 1], document: [:], options: .init(format: format))
        let text = message.bodyText
        #expect(!text.contains("aggregateType") && !text.contains("aggregateVersion"))
        #expect(message.wireHeaders["x-aggregate-type"] == nil && message.wireHeaders["x-aggregate-version"] == nil)
        let event = try message.incoming.event()
        #expect(event.aggregateId == "s-1" && event.aggregateType == nil && event.aggregateVersion == nil)
        #expect(event.data == .object([("n", .number("1"))]))
    }

    @Test("the consumer library reads every format back to the same data and metadata", arguments: BodyFormat.allCases, DecimalFormat.allCases)
    func readBack(format: BodyFormat, decimals: DecimalFormat) throws {
        let message = try SeedOrder.message(.init(format: format, decimals: decimals))
        let expected = try JSONValue.parse(Array((decimals == .number ? SeedOrder.dataWithNumbers : SeedOrder.dataWithStrings).utf8))
        // As the relay sent it, and as a foreign publisher would (without the x-body-format header).
        var foreign = message.incoming
        foreign.headers["x-body-format"] = nil
        for incoming in [message.incoming, foreign] {
            let event = try incoming.event()
            #expect(event.format == format)
            #expect(event.data == expected)
            #expect(event.id == SeedOrder.eventId)
            #expect(event.type == "OrderCreated")
            #expect(event.aggregateType == "Order" && event.aggregateId == SeedOrder.orderId && event.aggregateVersion == 1)
            #expect(event.occurredAt == SeedOrder.occurredAt)
            #expect(event.correlationId == "key-1")
        }
        // Only the body and content type: the metadata the body itself carries is still found.
        var bare = message.incoming
        bare.headers = message.headers.filter { $0.key.hasPrefix("ce-") }
        bare.type = nil
        let event = try bare.event()
        #expect(event.format == format)
        #expect(event.data == expected)
        if format != .payload && format != .nestJS {
            #expect(event.type == "OrderCreated")
            #expect(event.aggregateId == SeedOrder.orderId)
            #expect(event.occurredAt == SeedOrder.occurredAt)
        }
    }

    @Test("a payload that happens to have a data field is not taken for an envelope")
    func detection() throws {
        let body = Array(#"{"id":"x","type":"t","data":{"a":1},"extra":true}"#.utf8)
        let event = try IncomingMessage(messageId: "m", routingKey: "r", body: body).event()
        #expect(event.format == .payload)
        #expect(event.data["extra"] == .bool(true))
        #expect(throws: PermanentFailure.self) { try IncomingMessage(messageId: "m", routingKey: "r", body: Array("{".utf8)).event() }
    }
}
