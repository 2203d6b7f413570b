import Foundation
import Outbox
import OutboxConsumer
import Testing

@testable import OutboxMongo

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
