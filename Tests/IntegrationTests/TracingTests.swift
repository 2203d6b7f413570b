import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

/// Issue 24 on the real programs: a pymongo writer traced by the OpenTelemetry Python SDK, the
/// `outbox-relay` and an `inventory-consumer` exporting OTLP (gRPC and HTTP) to receivers that
/// decode the protocol's protobuf with its own Python classes (and serve gRPC with grpcio).
@Suite("Tracing: one trace from the writer through the relay and the consumer", .enabled(if: Servers.enabled), .timeLimit(.minutes(3)))
struct TracingTests {
    struct ExportedSpan: Decodable {
        let service: String?
        let traceId: String
        let spanId: String
        let parentSpanId: String
        let name: String
        let kind: String
        let attributes: [String: String]
        let status: Int
    }

    struct Written: Decodable {
        let id: String
        let traceId: String
        let spanId: String
    }

    /// An OTLP receiver (Tests/clients/otlp_receiver.py), OTLP/HTTP or OTLP/gRPC, and the spans it
    /// wrote so far.
    final class Receiver {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("spans-\(UUID().uuidString).jsonl")
        let program: Program
        let port: Int
        let transport: String

        init(_ transport: String = "http/protobuf") async throws {
            let program = try Program(
                path: Programs.python,
                [Programs.root.appendingPathComponent("Tests/clients/otlp_receiver.py").path, file.path] + (transport == "grpc" ? ["--grpc"] : []),
                environment: ["PATH": "/usr/bin:/bin"], label: "otlp-receiver")
            self.transport = transport
            var port: Int?
            _ = await eventually {
                port = Int(program.output.split(separator: "\n").first ?? "")
                return port != nil
            }
            self.program = program
            self.port = try #require(port, "the receiver did not start: \(program.output)")
        }

        var spans: [ExportedSpan] {
            let text = (try? String(contentsOf: file, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap { try? JSONDecoder().decode(ExportedSpan.self, from: Data($0.utf8)) }
        }

        deinit { try? FileManager.default.removeItem(at: file) }

        /// The variables that send a program's spans here.
        var tracing: [String: String] {
            [
                "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:\(port)",
                "OTEL_EXPORTER_OTLP_PROTOCOL": transport, "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
            ]
        }
    }

    @Test(
        "1,000 events, each one trace: writer → relay PRODUCER → both consumers CONSUMER → follow-up PRODUCER: parents, kinds and messaging attributes (the relay and the notification consumer export over gRPC, the inventory consumer over HTTP)"
    )
    func traceChain() async throws {
        try await Fixture.with { f in
            let relayReceiver = try await Receiver("grpc")
            defer { kill(relayReceiver.program.pid, SIGKILL) }
            let receiver = try await Receiver()
            defer { kill(receiver.program.pid, SIGKILL) }
            let events = 1000
            let result = try await Programs.run(
                Programs.python,
                [Programs.root.appendingPathComponent("Examples/python-writer/writer.py").path, "--orders", "\(events)", "--trace"],
                environment: Programs.environment(f))
            #expect(result.status == 0, "python writer: \(result.errors)")
            struct Output: Decodable { let events: [Written] }
            let written = try JSONDecoder().decode(Output.self, from: Data(result.output.utf8)).events
            #expect(written.count == events)

            let queue = "\(f.exchange).inventory"
            f.track(queue: queue)
            f.track(queue: "\(queue).dlq")
            let consumerPort = unusedPort()
            let consumer = try Program(
                "inventory-consumer",
                environment: Programs.environment(
                    f,
                    receiver.tracing.merging([
                        "CONSUMER_EXCHANGE": f.exchange, "CONSUMER_QUEUE": queue, "INVENTORY_EXCHANGE": f.exchange,
                        "CONSUMER_HTTP_ADDRESS": "127.0.0.1:\(consumerPort)",
                    ]) { $1 }))
            defer { kill(consumer.pid, SIGKILL) }
            #expect(await eventually { await httpGet(port: consumerPort, "/health/ready")?.status == 200 }, "\(consumer.output)")
            // The second consumer of OrderCreated, exporting over gRPC beside the relay.
            let notificationQueue = "\(f.exchange).notification"
            f.track(queue: notificationQueue)
            f.track(queue: "\(notificationQueue).dlq")
            let notificationPort = unusedPort()
            let notifications = try Program(
                "notification-consumer",
                environment: Programs.environment(
                    f,
                    relayReceiver.tracing.merging([
                        "CONSUMER_EXCHANGE": f.exchange, "CONSUMER_QUEUE": notificationQueue,
                        "CONSUMER_HTTP_ADDRESS": "127.0.0.1:\(notificationPort)",
                    ]) { $1 }))
            defer { kill(notifications.pid, SIGKILL) }
            #expect(await eventually { await httpGet(port: notificationPort, "/health/ready")?.status == 200 }, "\(notifications.output)")
            _ = try await f.queue("followups", bindings: ["inventory.#"])
            let relay = try Program(
                "outbox-relay", ["--http-address", "off", "--exchange", f.exchange, "--poll-interval", "50ms"],
                environment: Programs.environment(f, relayReceiver.tracing))
            defer { kill(relay.pid, SIGKILL) }
            // Every order and its follow-up (no stock: InventoryReservationFailed) delivered.
            #expect(
                try await eventually(timeout: .seconds(90)) { try await f.count("outbox", ["status": "delivered"]) == 2 * events }, "\(relay.output)")
            #expect(await relay.terminate() == 0, "\(relay.output.suffix(3000))")
            #expect(await consumer.terminate() == 0, "\(consumer.output.suffix(3000))")
            #expect(await notifications.terminate() == 0, "\(notifications.output.suffix(3000))")
            #expect(
                await eventually(timeout: .seconds(30)) { relayReceiver.spans.count >= 3 * events && receiver.spans.count >= events },
                "spans: \(relayReceiver.spans.count) + \(receiver.spans.count)")
            let spans = relayReceiver.spans + receiver.spans
            let publishes = Dictionary(spans.filter { $0.kind == "producer" }.map { ($0.attributes["messaging.message.id"] ?? "", $0) }) { first, _ in
                first
            }
            let children = Dictionary(grouping: spans, by: \.parentSpanId)

            for event in written {
                let publish = try #require(publishes[event.id], "the relay's span of \(event.id)")
                #expect(publish.service == "outbox-relay")
                #expect(publish.traceId == event.traceId, "the writer's trace")
                #expect(publish.parentSpanId == event.spanId, "a child of the writer's span")
                #expect(publish.name == "publish \(f.exchange)")
                #expect(publish.attributes["messaging.system"] == "rabbitmq")
                #expect(publish.attributes["messaging.operation.type"] == "send")
                #expect(publish.attributes["messaging.destination.name"] == f.exchange)
                #expect(publish.attributes["messaging.rabbitmq.destination.routing_key"] == "order.created")
                #expect(publish.attributes["outbox.event.type"] == "OrderCreated")
                #expect(publish.attributes["outbox.event.wait_ms"] != nil)
                let processes = children[publish.spanId] ?? []
                #expect(processes.count == 2, "one span of each consumer: \(processes.map(\.service))")
                let notified = try #require(processes.filter { $0.service == "notification-consumer" }.only, "the notification span of \(event.id)")
                #expect(notified.kind == "consumer" && notified.traceId == event.traceId && notified.name == "process \(notificationQueue)")
                #expect(notified.attributes["messaging.consumer.group.name"] == "notification")
                let process = try #require(processes.filter { $0.service == "inventory-consumer" }.only, "the inventory span of \(event.id)")
                #expect(process.kind == "consumer")
                #expect(process.service == "inventory-consumer")
                #expect(process.traceId == event.traceId)
                #expect(process.name == "process \(queue)")
                #expect(process.attributes["messaging.consumer.group.name"] == "inventory")
                #expect(process.attributes["messaging.message.id"] == event.id)
                // The follow-up the handler wrote carries the consumer's context: its publish is the consumer span's child.
                let followUp = try #require(children[process.spanId]?.only, "the follow-up's publish of \(event.id)")
                #expect(followUp.kind == "producer")
                #expect(followUp.service == "outbox-relay")
                #expect(followUp.traceId == event.traceId)
                #expect(followUp.attributes["outbox.event.type"] == "InventoryReservationFailed")
            }
            #expect(Set(spans.map(\.traceId)).count == events, "one trace per event, nothing else")
            // Spans name events, never carry their data.
            for span in spans {
                #expect(!span.attributes.values.contains { "\($0)".contains("customer-") || "\($0)".contains("44.99") }, "\(span.attributes)")
            }
        }
    }

    @Test(
        "a collector that turns slow, then stops: every event still delivered, the lost spans counted, the relay stops in time",
        arguments: ["http/protobuf", "grpc"])
    func exporterSlowThenStopped(transport: String) async throws {
        try await Fixture.with { f in
            let receiver = try await Receiver(transport)
            defer { kill(receiver.program.pid, SIGKILL) }
            let queue = try await f.queue("all")
            let port = unusedPort()
            let relay = try Program(
                "outbox-relay", ["--http-address", "127.0.0.1:\(port)", "--poll-interval", "50ms"],
                environment: Programs.environment(f, receiver.tracing))
            defer { kill(relay.pid, SIGKILL) }
            var lost: Double?
            /// Writes the next 300 events; true when all are delivered and `lost` spans counted.
            func deliver(_ round: Int, lost atLeast: Double) async throws -> Bool {
                let documents = (300 * round..<300 * (round + 1)).map { OutboxWriter().document(for: f.event(aggregate: "a-\($0)")) }
                try await f.pool.withConnection { try $0.collection("outbox").insertMany(documents) }
                guard try await eventually({ try await f.count("outbox", ["status": "delivered"]) == 300 * (round + 1) }) else { return false }
                // Each batch the SDK could not hand over within OTEL_EXPORTER_OTLP_TIMEOUT is counted by its spans.
                return await eventually(timeout: .seconds(30)) {
                    let metrics = await httpGet(port: port, "/metrics")?.body ?? ""
                    lost = DeliveryLagTests.sample(metrics, "outbox_spans_dropped_total", ["reason": "export_failed"])
                    return (lost ?? 0) >= atLeast
                }
            }
            #expect(try await deliver(0, lost: 0), "\(relay.output)")
            #expect(await eventually(timeout: .seconds(30)) { receiver.spans.count == 300 }, "spans: \(receiver.spans.count)")
            // Slow: it takes the requests and answers after 5 s, past the 1 s export timeout.
            kill(receiver.program.pid, SIGUSR1)
            #expect(try await deliver(1, lost: 300), "spans counted lost: \(String(describing: lost)); \(relay.output)")
            // Gone: connections refused.
            kill(receiver.program.pid, SIGKILL)
            #expect(try await deliver(2, lost: 600), "spans counted lost: \(String(describing: lost)); \(relay.output)")
            #expect(await relay.terminate(grace: .seconds(15)) == 0, "\(relay.output.suffix(2000))")
            #expect(relay.output.contains("spans not exported"), "the loss is logged too")
            #expect(relay.output.components(separatedBy: "spans not exported").count == 2, "logged once, not at every batch")
            #expect(try await f.admin.drain(queue).count == 900)
            #expect(receiver.spans.count == 300, "nothing recorded while slow")
        }
    }

    @Test("a protocol that is not built in (http/json) fails the start with exit 78, naming the variable")
    func unknownProtocolRefused() async throws {
        try await Fixture.with { f in
            var environment = Programs.environment(f)
            environment["OTEL_TRACES_EXPORTER"] = "otlp"
            environment["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/json"
            let result = try await Programs.product("outbox-relay", ["--http-address", "off"], environment: environment, timeout: .seconds(60))
            #expect(result.status == 78)
            #expect(result.errors.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && result.errors.contains("http/protobuf, grpc"), "\(result.errors)")
        }
    }
}

extension Array {
    /// The element, when there is exactly one.
    fileprivate var only: Element? { count == 1 ? first : nil }
}
