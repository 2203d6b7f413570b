import Foundation
import Outbox
import OutboxConsumer
import Testing

@testable import OutboxMongo

/// The seed's order: 2 × 19.99 + 1 × 5.01 = 44.99, as the order service writes it to the outbox.
enum SeedOrder {
    static let eventId = "6b087b9e339ba1f1c5054802"
    static let orderId = "6b087b9e339ba1f1c5054801"
    static let occurredAt: Int64 = 1_764_180_000_123
    static var time: String { ExtendedJSON.iso8601(milliseconds: occurredAt) }

    static let data: Document = [
        "orderId": .string(orderId), "customerId": "c-1", "totalAmount": .decimal128(Decimal128("44.99")!),
        "items": [
            ["sku": "A", "quantity": .int64(2), "unitPrice": .decimal128(Decimal128("19.99")!)],
            ["sku": "B", "quantity": .int64(1), "unitPrice": .decimal128(Decimal128("5.01")!)],
        ],
    ]

    static let dataWithNumbers =
        #"{"orderId":"6b087b9e339ba1f1c5054801","customerId":"c-1","totalAmount":44.99,"items":[{"sku":"A","quantity":2,"unitPrice":19.99},{"sku":"B","quantity":1,"unitPrice":5.01}]}"#
    static let dataWithStrings =
        #"{"orderId":"6b087b9e339ba1f1c5054801","customerId":"c-1","totalAmount":"44.99","items":[{"sku":"A","quantity":2,"unitPrice":"19.99"},{"sku":"B","quantity":1,"unitPrice":"5.01"}]}"#

    static func document(exchange: String = "orders", extra: Document = [:]) -> Document {
        var document = OutboxWriter().document(
            for: NewEvent(type: "OrderCreated", aggregateType: "Order", aggregateId: orderId, data: data, exchange: exchange,
                          correlationId: "key-1"))
        document["_id"] = .string(eventId)
        document["timestamp"] = .datetime(occurredAt)
        for (key, value) in extra.fields { document[key] = value }
        return document
    }

    static func message(_ options: MessageBodyOptions, exchange: String = "orders", extra: Document = [:]) throws -> OutboxMessage {
        try OutboxDocument.decode(document(exchange: exchange, extra: extra), options: .init(body: options), isNew: false).get()
    }
}

extension OutboxMessage {
    var bodyText: String { String(decoding: body, as: UTF8.self) }

    /// The message as a consumer receives it.
    var incoming: IncomingMessage {
        IncomingMessage(
            messageId: id, type: type, routingKey: routingKey, headers: wireHeaders, contentType: contentType,
            correlationId: correlationId, body: body)
    }
}

@Suite("Wire formats: settings")
struct WireFormatSettingsTests {
    @Test("format names parse; a bad one names the setting and the choices")
    func names() throws {
        #expect(try BodyFormat(parsing: "cloudevents-binary", setting: "S") == .cloudEventsBinary)
        #expect(try BodyFormat(parsing: " NestJS ", setting: "S") == .nestJS)
        #expect(BodyFormat.default == .envelope)
        #expect(DecimalFormat.default == .string)
        #expect(throws: ConfigurationError(setting: "RELAY_BODY_FORMAT (--body-format)", reason: "'xml' is not one of \(BodyFormat.names)")) {
            try BodyFormat(parsing: "xml", setting: "RELAY_BODY_FORMAT (--body-format)")
        }
        #expect(throws: ConfigurationError(setting: "D", reason: "'float' is not one of string, number")) {
            try DecimalFormat(parsing: "float", setting: "D")
        }
    }

    @Test("per-exchange mapping")
    func mapping() throws {
        #expect(try WireFormat.parseFormatByExchange("", setting: "M").isEmpty)
        #expect(
            try WireFormat.parseFormatByExchange("orders=payload, inventory=cloudevents,", setting: "M")
                == ["orders": .payload, "inventory": .cloudEvents])
        for (bad, reason) in [
            ("orders", "'orders' is not exchange=format"),
            ("=payload", "'=payload' needs an exchange name of 1 to 255 bytes"),
            ("orders=xml", "'xml' is not one of \(BodyFormat.names)"),
            ("a=payload,a=nestjs", "exchange 'a' is given twice"),
        ] {
            #expect(throws: ConfigurationError(setting: "M", reason: reason)) { try WireFormat.parseFormatByExchange(bad, setting: "M") }
        }
        let options = MessageBodyOptions(format: .nestJS, formatByExchange: ["orders": .payload])
        #expect(options.format(forExchange: "orders") == .payload)
        #expect(options.format(forExchange: "other") == .nestJS)
    }

    @Test("CloudEvents source")
    func source() throws {
        #expect(try WireFormat.parseCloudEventsSource("https://shop.example/orders", setting: "S") == "https://shop.example/orders")
        #expect(throws: ConfigurationError.self) { try WireFormat.parseCloudEventsSource("", setting: "S") }
        #expect(throws: ConfigurationError.self) { try WireFormat.parseCloudEventsSource("a b", setting: "S") }
    }
}

@Suite("Wire formats: decimals")
struct DecimalRenderingTests {
    @Test("Decimal128 as a number literal keeps its exact digits; NaN and infinities stay strings")
    func numbers() throws {
        let cases: [(String, String)] = [
            ("44.99", "44.99"), ("0.10", "0.10"), ("-3", "-3"), ("1234567890123456789012345678901234", "1234567890123456789012345678901234"),
            ("0.000000001", "1E-9"), ("1.5E+40", "1.5E+40"), ("-0", "-0"),
        ]
        for (input, literal) in cases {
            let value = BSON.decimal128(Decimal128(input)!)
            #expect(ExtendedJSON.render(value, decimals: .number) == literal)
            #expect(ExtendedJSON.render(value) == "\"\(literal)\"")
            // What a consumer parses is the same number, digit for digit.
            #expect(try JSONValue.parse(Array(literal.utf8)) == .number(literal))
        }
        let nan = Decimal128(low: 0, high: 0x7C00_0000_0000_0000)
        let infinity = Decimal128(low: 0, high: 0x7800_0000_0000_0000)
        let negativeInfinity = Decimal128(low: 0, high: 0xF800_0000_0000_0000)
        #expect(ExtendedJSON.render(["a": .decimal128(nan), "b": .decimal128(infinity), "c": .decimal128(negativeInfinity)], decimals: .number)
            == #"{"a":"NaN","b":"Infinity","c":"-Infinity"}"#)
        // Other types are not touched by the setting.
        #expect(ExtendedJSON.render(["d": 1.5, "i": .int64(7), "s": "44.99"], decimals: .number) == #"{"d":1.5,"i":7,"s":"44.99"}"#)
    }
}

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
                == #"{"id":"\#(SeedOrder.eventId)","type":"OrderCreated","aggregateType":"Order","aggregateId":"\#(SeedOrder.orderId)","aggregateVersion":1,"timestamp":"\#(SeedOrder.time)","data":\#(SeedOrder.dataWithStrings)}"#)
        #expect(message.contentType == "application/json")
    }

    @Test("CloudEvents structured mode")
    func cloudEvents() throws {
        let message = try SeedOrder.message(.init(format: .cloudEvents, decimals: .number, cloudEventsSource: "https://shop.example/orders"))
        #expect(message.contentType == "application/cloudevents+json")
        #expect(
            message.bodyText
                == #"{"specversion":"1.0","id":"\#(SeedOrder.eventId)","source":"https://shop.example/orders","type":"OrderCreated","subject":"\#(SeedOrder.orderId)","time":"\#(SeedOrder.time)","datacontenttype":"application/json","data":\#(SeedOrder.dataWithNumbers)}"#)
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
