import Outbox
import OutboxAMQP
import OutboxRuntime
import Testing

@Suite("Configuration")
struct ConfigurationTests {
    @Test("AMQP URLs parse with defaults and percent-decoding")
    func amqpURL() throws {
        let full = try AMQPEndpoint(url: "amqp://user:p%40ss@broker.local:5673/orders%2fprod")
        #expect(full == AMQPEndpoint(host: "broker.local", port: 5673, user: "user", password: "p@ss", virtualHost: "orders/prod"))
        #expect(try AMQPEndpoint(url: "amqp://127.0.0.1") == AMQPEndpoint(host: "127.0.0.1"))
        #expect(try AMQPEndpoint(url: "amqp://h:1/%2f").virtualHost == "/")
        #expect(!full.description.contains("p@ss"), "the password never reaches logs")
    }

    @Test(
        "bad AMQP URLs name the setting",
        arguments: [
            ("http://x", "must start with amqp://"), ("amqp://h:notaport", "port"), ("amqp://h:70000", "port"),
            ("amqp://", "host is missing"), ("amqp://h/%zz", "percent-encoding"), ("amqp://h,/", "host is missing"),
            ("amqp://h?cacertfile=/ca.pem", "needs an amqps:// URL"), ("amqps://h?verify=maybe", "verify_peer or verify_none"),
            ("amqp://h?heartbeat=-1", "heartbeat"), ("amqp://h?connection_timeout=0", "connection_timeout"),
            ("amqp://h?frame_max=1", "unknown parameter 'frame_max'"), ("amqp://h?heartbeat", "needs a value"),
        ])
    func badAMQPURL(url: String, expected: String) {
        #expect {
            try AMQPEndpoint(url: url, setting: "AMQP_URL (--amqp-url)")
        } throws: { error in
            let error = error as? ConfigurationError
            return error?.setting == "AMQP_URL (--amqp-url)" && error!.reason.contains(expected)
        }
    }

    @Test("durations")
    func durations() throws {
        #expect(try Setting.duration("250ms", setting: "X") == .milliseconds(250))
        #expect(try Setting.duration("5s", setting: "X") == .seconds(5))
        #expect(try Setting.duration("2m", setting: "X") == .seconds(120))
        #expect(try Setting.duration("30d", setting: "X") == .seconds(30 * 86_400))
        #expect(try Setting.duration("1.5h", setting: "X") == .seconds(5400))
        #expect(try Setting.duration("0", setting: "X") == .zero, "zero needs no unit")
        for bad in ["", "5", "abc", "-1s", "5 s", "1w"] {
            #expect(throws: ConfigurationError.self) { try Setting.duration(bad, setting: "X") }
        }
    }

    @Test("settings: flag beats environment beats default; bad values name flag and variable")
    func settings() throws {
        let settings = Settings(environment: ["RELAY_BATCH_SIZE": "250", "BAD": "x", "LOG_LEVEL": "loud"])
        let unset = SettingDeclaration(env: "UNSET", flag: "x", kind: .integer(1...10_000), default: "500", usedBy: "test", "unset")
        let bad = SettingDeclaration(env: "BAD", flag: "bad", kind: .integer(1...2), default: "1", usedBy: "test", "bad")
        let narrow = SettingDeclaration(env: "RELAY_BATCH_SIZE", flag: "batch-size", kind: .integer(1...100), default: "1", usedBy: "test", "narrow")
        #expect(try settings.int(nil, .relayBatchSize) == 250)
        #expect(try settings.int(7, .relayBatchSize) == 7)
        #expect(try settings.int(nil, unset) == 500)
        #expect(try settings.int(nil, unset, default: 42) == 42, "a computed default stands in for the declared one")
        #expect(throws: ConfigurationError(setting: "BAD (--bad)", reason: "'x' is not an integer")) {
            try settings.int(nil, bad)
        }
        #expect(throws: ConfigurationError(setting: "RELAY_BATCH_SIZE (--batch-size)", reason: "must be between 1 and 100, got 250")) {
            try settings.int(nil, narrow)
        }
        #expect(throws: ConfigurationError(setting: "MONGODB_URI (--mongodb-uri)", reason: "is required")) {
            try settings.string(nil, .mongodbURI)
        }
        #expect { try settings.logLevel(nil) } throws: { ($0 as? ConfigurationError)?.setting == "LOG_LEVEL (--log-level)" }
    }

    @Test("a malformed MongoDB URI is a configuration error naming MONGODB_URI")
    func badMongoURI() {
        #expect {
            try Settings(environment: [:]).mongoPool(uri: "postgres://nope", database: "x", appName: "t")
        } throws: { ($0 as? ConfigurationError)?.setting == "MONGODB_URI (--mongodb-uri)" }
    }

    @Test("routing keys and partitions")
    func naming() {
        #expect(EventNaming.routingKey(forType: "OrderCreated") == "order.created")
        #expect(EventNaming.routingKey(forType: "InventoryReservationFailed") == "inventory.reservation.failed")
        #expect(EventNaming.partition(ofAggregate: "order-1", partitions: 16) == EventNaming.partition(ofAggregate: "order-1", partitions: 16))
        let spread = Set((0..<1000).map { EventNaming.partition(ofAggregate: "agg-\($0)", partitions: 16) })
        #expect(spread == Set(0..<16))
    }
}
