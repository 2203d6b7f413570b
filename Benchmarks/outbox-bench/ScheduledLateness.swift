import ArgumentParser
import Foundation
import Outbox
import OutboxMongo
import Synchronization

/// Issue 28's scheduling figure: how late scheduled events reach a consumer after their
/// `deliverAt`, with the relay's default settings, and whether any came early.
extension Bench {
    struct Lateness {
        /// Seconds from the first write until the relay had scheduled every event (the plain
        /// documents get their state at first sight; OutboxWriter writes it).
        var scheduledWithin: Double
        var early: Int
        var p50: Double
        var p99: Double
        var max: Double
    }

    /// Writes `count` events due one after another over `seconds`, the first `lead` seconds on
    /// (scheduled events are written ahead of time: the relay has seen every one before it is
    /// due), half as a foreign writer's plain documents, half by `OutboxWriter`; a relay with its
    /// default settings publishes them; a consumer takes the lateness of each (receipt −
    /// deliverAt) in milliseconds.
    func scheduledLateness(events count: Int, over seconds: Int, lead: Int = 15) async throws -> Lateness {
        let exchange = "bench.scheduled"
        let scheduledWithin = Mutex(Double.nan)
        let sorted = try await timedReceipts(
            database: "bench_scheduled", exchange: exchange, count: count, wait: .seconds(lead + seconds + 30),
            write: { pool in
                let written = Date()
                let first = (written.timeIntervalSince1970 + Double(lead)) * 1000
                let step = Double(seconds * 1000) / Double(count)
                let writer = OutboxWriter()
                for start in stride(from: 0, to: count, by: 100) {
                    let indices = start..<min(start + 100, count)
                    try await pool.withConnection { connection in
                        var documents: [Document] = []
                        for i in indices {
                            let due = (first + Double(i) * step).rounded()
                            let at = Date(timeIntervalSince1970: due / 1000)
                            let data: Document = ["deliverAt": .double(due)]
                            if i % 2 == 0 {
                                documents.append([
                                    "type": "OrderCreated", "aggregateId": .string("sched-\(i)"), "data": .document(data),
                                    "exchange": .string(exchange), "timestamp": .date(Date()), "deliverAt": .date(at),
                                ])
                            } else {
                                documents.append(
                                    writer.document(
                                        for: NewEvent(
                                            type: "OrderCreated", aggregateType: "Order", aggregateId: "sched-\(i)", data: data,
                                            exchange: exchange, deliverAt: at)))
                            }
                        }
                        try connection.collection("outbox").insertMany(documents)
                    }
                }
                // Every one scheduled before the first is due, or the figure would measure first sights.
                while Date().timeIntervalSince1970 * 1000 < first {
                    let scheduled = try await pool.withConnection { try $0.collection("outbox").countDocuments(["status": "scheduled"]) }
                    if scheduled == count {
                        scheduledWithin.withLock { $0 = Date().timeIntervalSince(written) }
                        return
                    }
                    try await Task.sleep(for: .milliseconds(50))
                }
                throw ValidationError("the relay had not seen every scheduled event \(lead) s after they were written")
            },
            measure: { body, now in
                guard case .number(let due)? = body["data"]?["deliverAt"], let deliverAt = Double(due) else { return nil }
                return now - deliverAt
            })
        return Lateness(
            scheduledWithin: scheduledWithin.withLock { $0 }, early: sorted.filter { $0 < 0 }.count, p50: sorted[count / 2],
            p99: sorted[min(count - 1, count * 99 / 100)], max: sorted[count - 1])
    }
}
