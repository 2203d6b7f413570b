import Foundation
import Outbox
import OutboxAMQP
import OutboxConsumer
import OutboxMongo
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Programs the wire-format tests run: the relay executable and Python clients no one here wrote
/// (pika and the CloudEvents SDK, in the project's virtual environment that `ops/setup` makes).
enum ExternalPrograms {
    /// The repository, three levels up from this file.
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var python: String { root.appendingPathComponent(".venv/bin/python").path }
    static var orderReader: String { root.appendingPathComponent("Tests/clients/read_orders.py").path }
    static var relay: String { Executables.path("outbox-relay") }

    struct Result: Sendable {
        var status: Int32
        var output: String
        var errors: String
    }

    /// Runs a program to its end (killed after `timeout`), its output captured through files.
    static func run(
        _ executable: String, _ arguments: [String], environment: [String: String] = Servers.environment, timeout: Duration = .seconds(60)
    ) async throws -> Result {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: executable])
        }
        let result = try await Programs.run(executable, arguments, environment: environment, timeout: timeout)
        return Result(status: result.status, output: result.output, errors: result.errors)
    }

    /// Runs `outbox-relay --exit-when-idle` on the fixture's database; expects it to exit 0.
    static func drainWithRelay(_ f: Fixture, arguments: [String] = [], environment extra: [String: String] = [:]) async throws {
        var environment = Servers.environment
        environment["OUTBOX_DATABASE"] = f.database
        environment["RELAY_HTTP_ADDRESS"] = "off"
        environment["RELAY_CHANGE_STREAM"] = "false"
        environment["LOG_LEVEL"] = "warning"
        environment.merge(extra) { $1 }
        let result = try await run(relay, ["--exit-when-idle"] + arguments, environment: environment)
        #expect(result.status == 0, "outbox-relay exited \(result.status): \(result.errors)")
    }

    /// Reads `queue=format` pairs with the Python client; one parsed report per message.
    static func readOrders(_ reads: [(queue: String, format: BodyFormat)], count: Int = 1) async throws -> [JSONValue] {
        let arguments =
            [orderReader, Servers.amqpURL] + reads.map { "\($0.queue)=\($0.format.rawValue)" } + ["--count", "\(count)", "--timeout", "15"]
        let result = try await run(python, arguments)
        #expect(result.status == 0, "read_orders.py exited \(result.status): \(result.errors)")
        return try result.output.split(separator: "\n").map { try JSONValue.parse(Array($0.utf8)) }
    }
}

/// Writes the seed's order event (2 × 19.99 + 1 × 5.01, as the order service would) to the
/// outbox for `exchange`, in a transaction; returns the order id.
func appendSeedOrder(_ f: Fixture, exchange: String) async throws -> String {
    let orderId = ObjectId().hex
    var data = SeedData.order
    data["orderId"] = .string(orderId)
    data["customerId"] = "c-seed"
    try await f.appendEvents([NewEvent(type: "OrderCreated", aggregateType: "Order", aggregateId: orderId, data: data, exchange: exchange)])
    return orderId
}

@Suite("Wire formats read by clients no one here wrote", .enabled(if: Servers.enabled), .timeLimit(.minutes(3)))
struct ForeignClientTests {
    @Test("every format, the relay binary; pika and the CloudEvents SDK read them, totals exact", arguments: DecimalFormat.allCases)
    func everyFormat(decimals: DecimalFormat) async throws {
        #expect(FileManager.default.isExecutableFile(atPath: ExternalPrograms.python), "run ops/setup: no \(ExternalPrograms.python)")
        try await Fixture.with { f in
            // One exchange per format; the relay's per-exchange setting picks the format.
            let exchanges = Dictionary(uniqueKeysWithValues: BodyFormat.allCases.map { ($0, "\(f.exchange).\($0.rawValue)") })
            var reads: [(queue: String, format: BodyFormat)] = []
            for format in BodyFormat.allCases {
                let exchange = exchanges[format]!
                try await f.admin.declareExchange(exchange)
                let queue = "\(exchange).pika"
                f.track(queue: queue)
                _ = try await f.admin.declareQueue(queue)
                try await f.admin.bindQueue(queue, exchange: exchange, routingKey: "order.created")
                reads.append((queue, format))
            }
            var orders: [BodyFormat: String] = [:]
            for format in BodyFormat.allCases { orders[format] = try await appendSeedOrder(f, exchange: exchanges[format]!) }

            let mapping = BodyFormat.allCases.filter { $0 != .default }.map { "\(exchanges[$0]!)=\($0.rawValue)" }.joined(separator: ",")
            try await ExternalPrograms.drainWithRelay(
                f,
                environment: [
                    "RELAY_BODY_FORMAT_BY_EXCHANGE": mapping, "RELAY_DECIMAL_FORMAT": decimals.rawValue,
                    "RELAY_CLOUDEVENTS_SOURCE": "https://shop.example/orders",
                ])
            #expect(try await f.count("outbox", ["status": "delivered"]) == BodyFormat.allCases.count)

            let reports = try await ExternalPrograms.readOrders(reads)
            #expect(reports.count == BodyFormat.allCases.count)
            for report in reports {
                guard case .string(let name)? = report["format"], let format = BodyFormat(rawValue: name), let orderId = orders[format] else {
                    Issue.record("unexpected report \(report)")
                    continue
                }
                let event = try #require(try await f.find("outbox", ["aggregateId": .string(orderId)]).first)
                let eventId = try #require(event["_id"]?.stringValue)
                let occurredAt = try #require(event["timestamp"]?.dateValue)
                let context = Comment(rawValue: "\(format), decimals as \(decimals): \(report)")
                // One message id everywhere, and the same properties and headers.
                #expect(report["message_id"] == .string(eventId), context)
                #expect(report["type"] == .string("OrderCreated"), context)
                #expect(report["delivery_mode"] == .number("2"), context)
                #expect(report["timestamp"] == .number("\(Int64(occurredAt.timeIntervalSince1970))"), context)
                #expect(report["content_type"] == .string(format == .cloudEvents ? "application/cloudevents+json" : "application/json"), context)
                let headers = report["headers"]
                #expect(headers?["x-aggregate-type"] == .string("Order"), context)
                #expect(headers?["x-aggregate-id"] == .string(orderId), context)
                #expect(headers?["x-aggregate-version"] == .number("1"), context)
                #expect(headers?["x-body-format"] == .string(format.rawValue), context)
                // The order as the client parsed it: exact amounts, in the chosen JSON type.
                let order = report["order"]
                let json = JSONValue.string(decimals == .number ? "number" : "string")
                #expect(order?["orderId"] == .string(orderId), context)
                #expect(order?["customerId"] == .string("c-seed"), context)
                #expect(order?["totalAmount"] == .string("44.99"), context)
                #expect(order?["linesTotal"] == .string("44.99"), context)
                #expect(order?["totalAmountJSON"] == json, context)
                #expect(
                    order?["items"]
                        == .array([
                            .object([("sku", .string("A")), ("quantity", .number("2")), ("unitPrice", .string("19.99")), ("unitPriceJSON", json)]),
                            .object([("sku", .string("B")), ("quantity", .number("1")), ("unitPrice", .string("5.01")), ("unitPriceJSON", json)]),
                        ]), context)
                switch format {
                case .cloudEvents, .cloudEventsBinary:
                    let ce = report["cloudevent"]
                    #expect(ce?["specversion"] == .string("1.0"), context)
                    #expect(ce?["id"] == .string(eventId), context)
                    #expect(ce?["source"] == .string("https://shop.example/orders"), context)
                    #expect(ce?["type"] == .string("OrderCreated"), context)
                    #expect(ce?["subject"] == .string(orderId), context)
                    #expect(ce?["datacontenttype"] == .string("application/json"), context)
                    let time = ExtendedJSON.iso8601(milliseconds: Int64((occurredAt.timeIntervalSince1970 * 1000).rounded()))
                    // Python writes the same instant as 2026-...T..:..:..(.ffffff)+00:00.
                    guard case .string(let sdkTime)? = ce?["time"] else {
                        Issue.record("no time: \(context)")
                        break
                    }
                    #expect(sdkTime.prefix(19) == time.prefix(19), context)
                    #expect(report["sdk_data_matches"] == .bool(true), context)
                case .nestJS:
                    #expect(report["pattern"] == .string("order.created"), context)
                case .envelope, .payload:
                    break
                }
            }
            for exchange in exchanges.values { try await f.admin.deleteExchange(exchange) }
        }
    }

    @Test("outbox-relay --body-format payload --decimal-format number delivers the seed's event object; an event may choose its own format")
    func seedPayload() async throws {
        try await Fixture.with { f in
            let raw = try await f.queue("raw", bindings: ["#"])
            let pika = try await f.queue("pika", bindings: ["order.created"])
            let orderId = try await appendSeedOrder(f, exchange: f.exchange)
            // A writer choosing NestJS for one event, and one naming a format that does not exist.
            let writer = OutboxWriter()
            var nest = writer.document(
                for: NewEvent(
                    type: "OrderCreated", aggregateType: "Order", aggregateId: "nest-1", data: ["orderId": "nest-1"], exchange: f.exchange,
                    routingKey: "order.created.nest"))
            nest["bodyFormat"] = "nestjs"
            var bad = writer.document(
                for: NewEvent(type: "OrderCreated", aggregateType: "Order", aggregateId: "bad-1", data: [:], exchange: f.exchange))
            bad["bodyFormat"] = "xml"
            try await f.pool.withConnection { [nest, bad] in try $0.collection("outbox").insertMany([nest, bad]) }

            try await ExternalPrograms.drainWithRelay(f, arguments: ["--body-format", "payload", "--decimal-format", "number"])

            let messages = try await f.admin.drain(raw)
            #expect(messages.count == 2)
            let seed = try #require(messages.first { $0.routingKey == "order.created" })
            let body = String(decoding: seed.body, as: UTF8.self)
            #expect(
                body
                    == #"{"orderId":"\#(orderId)","customerId":"c-seed","totalAmount":44.99,"items":[{"sku":"A","quantity":2,"unitPrice":19.99},{"sku":"B","quantity":1,"unitPrice":5.01}]}"#
            )
            #expect(seed.contentType == "application/json")
            let event = try #require(try await f.find("outbox", ["aggregateId": .string(orderId)]).first)
            #expect(seed.messageId == event["_id"]?.stringValue)
            let nested = try #require(messages.first { $0.routingKey == "order.created.nest" })
            #expect(String(decoding: nested.body, as: UTF8.self) == #"{"pattern":"order.created.nest","data":{"orderId":"nest-1"}}"#)
            #expect(nested.headers["x-body-format"] == .string("nestjs"))
            let parked = try #require(try await f.find("outbox", ["aggregateId": "bad-1"]).first)
            #expect(parked["status"] == "parked")
            #expect(parked["lastError"]?.stringValue?.contains("bodyFormat must be one of envelope, payload") == true)

            let reports = try await ExternalPrograms.readOrders([(pika, .payload)])
            #expect(reports.first?["body"] == .string(body))
            #expect(reports.first?["order"]?["totalAmount"] == .string("44.99"))
            #expect(reports.first?["order"]?["totalAmountJSON"] == .string("number"))
        }
    }
}

@Suite("The consumer reads every format (I4)", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct ConsumerFormatTests {
    func message(_ f: Fixture, orderId: String, data: Document, options: MessageBodyOptions) throws -> OutboxMessage {
        let document = OutboxWriter().document(
            for: NewEvent(
                type: "OrderCreated", aggregateType: "Order", aggregateId: orderId, data: data, exchange: f.exchange, correlationId: "req-\(orderId)")
        )
        return try OutboxDocument.decode(document, options: .init(body: options), isNew: false).get()
    }

    @Test(
        "each message applied once with its exact amounts, duplicates skipped by message id, dead letters keep content type and headers",
        arguments: BodyFormat.allCases)
    func everyFormat(format: BodyFormat) async throws {
        try await Fixture.with { f in
            let topology = ConsumerTopology(exchange: f.exchange, queue: "\(f.exchange).tally", bindings: ["order.created"])
            f.track(queue: topology.queue)
            f.track(queue: topology.deadLetterQueue)
            let consumer = InboxConsumer(
                configuration: .init(name: "tally", topology: topology, maxAttempts: 2, retryDelay: .milliseconds(10)),
                pool: f.pool, amqp: f.amqp, handler: TallyHandler(exchange: f.exchange), logger: f.logger)
            let running = Task { try await consumer.run() }
            defer { running.cancel() }
            #expect(await eventually { await consumer.isConnected })

            var orders: [OutboxMessage] = []
            for decimals in DecimalFormat.allCases {
                let orderId = "o-\(decimals)"
                var data = SeedData.order
                data["orderId"] = .string(orderId)
                orders.append(try message(f, orderId: orderId, data: data, options: .init(format: format, decimals: decimals)))
            }
            let poison = try message(f, orderId: "o-bad", data: ["orderId": "o-bad"], options: .init(format: format))
            let publisher = f.makePublisher()
            // Each order twice, as a broker redelivery or a relay retry would.
            let outcomes = await publisher.publish([orders[0], orders[1], orders[0], poison, orders[1]])
            #expect(outcomes.allSatisfy { $0 == .acked })
            await publisher.close()

            #expect(await eventually { consumer.stats.processed == 2 && consumer.stats.duplicates == 2 && consumer.stats.deadLettered == 1 })
            #expect(try await TallyHandler.total(f) == 2)
            let effects = try await f.find(TallyHandler.effects)
            #expect(Set(effects.compactMap { $0["_id"]?.stringValue }) == Set(orders.map(\.id)))
            for effect in effects {
                #expect(effect["format"] == .string(format.rawValue))
                #expect(effect["totalAmount"] == "44.99", "exact whichever JSON type the amount had")
                #expect(effect["customerId"] == "c-1")
            }
            #expect(Set(try await f.find("inbox").compactMap { $0["messageId"]?.stringValue }) == Set(orders.map(\.id)))

            let dead = try await f.admin.drain(topology.deadLetterQueue)
            #expect(dead.count == 1)
            let letter = try #require(dead.first)
            #expect(letter.messageId == poison.id)
            #expect(letter.contentType == poison.contentType)
            #expect(letter.correlationId == poison.correlationId)
            #expect(letter.body == poison.body)
            for (key, value) in poison.wireHeaders { #expect(letter.headers[key] == value, "header \(key)") }
            #expect(letter.headers["x-error"].map { "\($0)".contains("OrderCreated.customerId") } == true)
        }
    }
}

enum SeedData {
    static let order: Document = [
        "orderId": "o", "customerId": "c-1", "totalAmount": .decimal128(Decimal128("44.99")!),
        "items": [
            ["sku": "A", "quantity": .int64(2), "unitPrice": .decimal128(Decimal128("19.99")!)],
            ["sku": "B", "quantity": .int64(1), "unitPrice": .decimal128(Decimal128("5.01")!)],
        ],
    ]
}
