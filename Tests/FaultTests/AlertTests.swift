import Foundation
import Outbox
import OutboxAMQP
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The Prometheus that `ops/stack` starts beside the test stack (STACK_PROMETHEUS=1): the shipped
/// scrape configuration and alert rules, `for:` cut to 5 s, scraping the three addresses below.
enum PrometheusEnv {
    static let url = Env.environment["PROMETHEUS_URL"] ?? ""
    static let relayAddress = Env.environment["PROMETHEUS_RELAY_ADDRESS"] ?? ""
    static let inventoryAddress = Env.environment["PROMETHEUS_INVENTORY_ADDRESS"] ?? ""

    /// GET `path` of the Prometheus HTTP API; its `data`, nil when it does not answer.
    static func data(_ path: String) async -> JSONValue? {
        guard let url = URL(string: url + path), let (body, _) = try? await URLSession.shared.data(from: url) else { return nil }
        return (try? JSONValue.parse(Array(body)))?["data"]
    }

    /// Alerts Prometheus holds now, pending or firing: name, state and labels.
    static func alerts() async -> [(name: String, state: String, labels: [String: String])] {
        guard case .array(let alerts)? = await data("/api/v1/alerts")?["alerts"] else { return [] }
        return alerts.map { alert in
            var labels: [String: String] = [:]
            if case .object(let fields)? = alert["labels"] {
                for (key, value) in fields { if case .string(let s) = value { labels[key] = s } }
            }
            return (labels["alertname"] ?? "", { if case .string(let s)? = alert["state"] { s } else { "" } }(), labels)
        }
    }

    /// Whether the last scrape of `address` succeeded (`up == 1`).
    static func scraped(_ address: String) async -> Bool {
        guard let query = "up{instance=\"\(address)\"}".addingPercentEncoding(withAllowedCharacters: .alphanumerics),
            case .array(let results)? = await data("/api/v1/query?query=\(query)")?["result"],
            case .array(let sample)? = results.first?["value"]
        else { return false }
        return sample.last == .string("1")
    }
}

/// Waits up to `timeout` for `condition`, checking every half second.
func within(_ timeout: Duration, _ condition: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(500))
    }
    return await condition()
}

extension FaultTests {
    @Test("a real Prometheus with the shipped rules: dead letters waiting fire, the broker alert fires while RabbitMQ is stopped and clears after")
    func alertsInPrometheus() async throws {
        #expect(!PrometheusEnv.url.isEmpty, "PROMETHEUS_URL must be set (ops/test starts Prometheus with the test stack)")
        guard !PrometheusEnv.url.isEmpty else { return }
        let f = try FaultFixture()
        try await f.prepare()
        let relay = try f.startRelay("relay", extra: ["RELAY_HTTP_ADDRESS": PrometheusEnv.relayAddress])
        let consumer = try f.startConsumer(
            "consumer",
            extra: [
                "CONSUMER_HTTP_ADDRESS": PrometheusEnv.inventoryAddress, "CONSUMER_METRICS_INTERVAL": "1s",
            ])
        #expect(await within(.seconds(30)) { await PrometheusEnv.scraped(PrometheusEnv.relayAddress) }, "Prometheus scrapes the relay")
        #expect(await within(.seconds(30)) { await PrometheusEnv.scraped(PrometheusEnv.inventoryAddress) }, "Prometheus scrapes the consumer")
        func active(_ name: String) async -> [(name: String, state: String, labels: [String: String])] {
            await PrometheusEnv.alerts().filter { $0.name == name }
        }
        // Until a process has connected its gauges may say "down" for a scrape or two.
        #expect(await within(.seconds(30)) { await active("OutboxBrokerDisconnected").isEmpty }, "healthy: no broker alert")
        #expect(await active("OutboxDeadLettersWaiting").isEmpty, "healthy: no dead letters")

        // A message whose body is not JSON: the consumer dead-letters it at once.
        let poison = OutboxMessage(
            id: "poison-1", type: "OrderCreated", aggregateType: "Order", aggregateId: "o-1", aggregateVersion: 1,
            exchange: f.exchange, routingKey: "order.created", occurredAt: 0, body: Array("not json".utf8))
        let publisher = ConfirmPublisher(configuration: AMQPConfiguration(endpoint: try AMQPEndpoint(url: Env.amqpURL)), logger: Env.logger)
        #expect(await publisher.publish([poison]) == [.acked])
        await publisher.close()
        #expect(
            await within(.seconds(60)) {
                await active("OutboxDeadLettersWaiting").contains { $0.state == "firing" && $0.labels["consumer"] == "inventory" }
            }, "a dead letter waiting in inventory's dead-letter queue fires OutboxDeadLettersWaiting")

        try stack("stop-rabbit")
        let fired = await within(.seconds(60)) {
            await active("OutboxBrokerDisconnected").contains { $0.state == "firing" && $0.labels["instance"] == PrometheusEnv.relayAddress }
        }
        try stack("start-rabbit")
        #expect(fired, "OutboxBrokerDisconnected fires for the relay while RabbitMQ is stopped")
        #expect(await within(.seconds(90)) { await active("OutboxBrokerDisconnected").isEmpty }, "and clears once the relay is connected again")
        print("Prometheus: OutboxDeadLettersWaiting and OutboxBrokerDisconnected fired and the broker alert cleared")
        consumer.stop()
        relay.stop()
        await f.cleanup()
    }
}
