import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import Testing

/// Issue 24's SLO figures on the real programs: `outbox-relay` and an `inventory-consumer`, each
/// scraped on its /metrics.
@Suite("Delivery lag for SLOs: histograms per event type", .enabled(if: Servers.enabled), .timeLimit(.minutes(2)))
struct DeliveryLagTests {
    /// The value of the sample `name{labels…}` in Prometheus text, labels matched as given
    /// (others ignored); `le` compares as a number.
    static func sample(_ text: String, _ name: String, _ labels: [String: String]) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + "{") {
            guard let close = line.lastIndex(of: "}") else { continue }
            var found: [String: String] = [:]
            for pair in line[line.index(line.startIndex, offsetBy: name.count + 1)..<close].split(separator: ",") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                guard parts.count == 2 else { continue }
                found[String(parts[0])] = String(parts[1].trimmingCharacters(in: CharacterSet(charactersIn: "\"")))
            }
            let matches = labels.allSatisfy { key, value in
                key == "le" ? found[key].flatMap(Double.init) == Double(value) : found[key] == value
            }
            if matches { return Double(line[line.index(after: close)...].trimmingCharacters(in: .whitespaces)) }
        }
        return nil
    }

    @Test("event time → confirm per type in the relay, → commit in the consumer; types past the limit are other")
    func lagHistograms() async throws {
        try await Fixture.with { f in
            let writer = OutboxWriter()
            // Events that occurred two seconds ago: every lag is at least that.
            func insert(_ type: String, count: Int) async throws {
                let documents = (0..<count).map { index in
                    writer.document(
                        for: NewEvent(
                            type: type, aggregateType: "Order", aggregateId: "\(type)-\(index)",
                            data: ["orderId": .string("\(type)-\(index)"), "customerId": "c-1", "totalAmount": "0", "items": []], exchange: f.exchange
                        ),
                        now: Date().addingTimeInterval(-2))
                }
                try await f.pool.withConnection { try $0.collection("outbox").insertMany(documents) }
            }
            let topology = ConsumerTopology(exchange: f.exchange, queue: "\(f.exchange).inventory", bindings: ["order.created"])
            f.track(queue: topology.queue)
            f.track(queue: topology.deadLetterQueue)
            _ = try await f.queue("all")  // every other event is routable too
            let consumerPort = unusedPort(), relayPort = unusedPort()
            let consumer = try Program(
                "inventory-consumer",
                environment: Programs.environment(
                    f,
                    [
                        "CONSUMER_EXCHANGE": f.exchange, "CONSUMER_QUEUE": topology.queue, "INVENTORY_EXCHANGE": f.exchange,
                        "CONSUMER_HTTP_ADDRESS": "127.0.0.1:\(consumerPort)", "CONSUMER_BATCH_WAIT": "0",
                    ]))
            defer { kill(consumer.pid, SIGKILL) }
            #expect(await eventually { await httpGet(port: consumerPort, "/health/ready")?.status == 200 }, "\(consumer.output)")

            try await insert("OrderCreated", count: 3)
            let relay = try Program(
                "outbox-relay", ["--http-address", "127.0.0.1:\(relayPort)", "--metrics-event-types", "1", "--poll-interval", "50ms"],
                environment: Programs.environment(f))
            defer { kill(relay.pid, SIGKILL) }
            // The first type is delivered before the next is written, so it is the one with a label.
            #expect(try await eventually { try await f.count("outbox", ["type": "OrderCreated", "status": "delivered"]) == 3 }, "\(relay.output)")
            try await insert("OrderShipped", count: 2)
            // Three orders, two shipments, and the consumer's three follow-ups (no stock: reservation failed).
            #expect(try await eventually { try await f.count("outbox", ["status": "delivered"]) == 8 }, "\(relay.output)")

            let relayMetrics = await httpGet(port: relayPort, "/metrics")?.body ?? ""
            let lag = "outbox_delivery_lag_seconds"
            #expect(Self.sample(relayMetrics, lag + "_count", ["type": "OrderCreated"]) == 3, "\(relayMetrics)")
            #expect(Self.sample(relayMetrics, lag + "_count", ["type": "other"]) == 5, "two shipments and three follow-ups")
            #expect(Self.sample(relayMetrics, lag + "_count", ["type": "OrderShipped"]) == nil, "past the limit of one type")
            #expect(Self.sample(relayMetrics, lag + "_bucket", ["type": "OrderCreated", "le": "1"]) == 0, "each waited two seconds")
            #expect(Self.sample(relayMetrics, lag + "_bucket", ["type": "OrderCreated", "le": "600"]) == 3)
            #expect((Self.sample(relayMetrics, lag + "_sum", ["type": "OrderCreated"]) ?? 0) >= 6)

            #expect(await eventually { await httpGet(port: consumerPort, "/metrics")?.body.contains("outbox_consumer_lag_seconds_count") == true })
            let consumerMetrics = await httpGet(port: consumerPort, "/metrics")?.body ?? ""
            let consumerLag = "outbox_consumer_lag_seconds"
            let labels = ["consumer": "inventory", "type": "OrderCreated"]
            #expect(Self.sample(consumerMetrics, consumerLag + "_count", labels) == 3, "\(consumerMetrics)")
            #expect(Self.sample(consumerMetrics, consumerLag + "_bucket", labels.merging(["le": "1"]) { $1 }) == 0)
            #expect(await relay.terminate() == 0)
            #expect(await consumer.terminate(grace: .seconds(10)) == 0, "a consumer stops promptly: \(consumer.output.suffix(2000))")
        }
    }
}
