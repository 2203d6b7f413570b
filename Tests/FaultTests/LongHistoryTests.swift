import Foundation
import Outbox
import OutboxMongo
import Testing

/// The per-aggregate order checks read an aggregate's pending and new events, never its delivered
/// history (I7): an aggregate that has delivered 50,000 events costs its next ones no more.
extension FaultTests {
    /// Drains `f`'s outbox with one relay that exits when idle; returns the documents it read
    /// per event delivered and its peak RSS in MiB.
    func drainReads(_ f: FaultFixture, events: Int) async throws -> (perEvent: Double, peakMiB: Int) {
        let relay = try f.startRelay("drain", arguments: ["--exit-when-idle"], extra: ["RELAY_EXCHANGE": f.exchange, "RELAY_BATCH_SIZE": "500"])
        let status = await relay.exit(within: .seconds(120))
        #expect(status == 0, "the relay drains and exits (status \(status.map(String.init) ?? "still running"))")
        if status == nil { relay.kill() }
        let summary = relay.log.split(whereSeparator: \.isWhitespace)
        func field(_ name: String) -> Int? { summary.last { $0.hasPrefix("\(name)=") }.flatMap { Int($0.dropFirst(name.count + 1)) } }
        let delivered = try #require(field("events_delivered"), "the relay printed its drain summary")
        #expect(delivered == events)
        return (Double(try #require(field("documents_read"))) / Double(max(delivered, 1)), (relay.peakRSSKiB ?? 0) / 1024)
    }

    @Test("new events of an aggregate with 50,000 delivered ones cost the relay no more reads than those of a new aggregate")
    func longHistory() async throws {
        // 1,000 events written by the contract, 20 for each of 50 aggregates; in the second
        // outbox the first aggregate has delivered 50,000 events before.
        let fresh = try FaultFixture()
        try await fresh.prepare()
        let freshIds = try await fresh.appendMinimal(1000, perAggregate: 20)
        let plain = try await drainReads(fresh, events: freshIds.count)
        await fresh.cleanup()

        let f = try FaultFixture()
        try await f.prepare()
        let long = "min-0"
        let delivered = Date().addingTimeInterval(-3600)
        for chunk in stride(from: 0, to: 50_000, by: 5000) {
            let history: [Document] = (chunk..<chunk + 5000).map { index in
                [
                    "_id": .string("history-\(index)"), "type": "OrderCreated", "aggregateId": .string(long), "data": [:],
                    "timestamp": .date(delivered), "status": "delivered",
                    "partition": .int32(Int32(EventNaming.partition(ofAggregate: long, partitions: 16))),
                    "sid": .string(ObjectId(time: delivered).hex), "attempts": .int32(1), "deliveredAt": .date(delivered),
                ]
            }
            try await f.pool.withConnection { try $0.collection("outbox").insertMany(history) }
        }
        let ids = try await f.appendMinimal(1000, perAggregate: 20)
        let withHistory = try await drainReads(f, events: ids.count)
        try await f.checkReceived(ids, test: "aggregate with 50,000 delivered events", maxDuplicates: 0)
        print(
            String(
                format: "relay draining 1,000 events: %.2f documents read per event and %d MiB peak RSS without history, %.2f and %d MiB "
                    + "with 50,000 delivered events in one aggregate", plain.perEvent, plain.peakMiB, withHistory.perEvent, withHistory.peakMiB))
        // (Memory is reported, not bounded here: ops/bench holds the targets.)
        #expect(
            withHistory.perEvent <= plain.perEvent * 1.2 + 0.5,
            "the delivered history was read: \(withHistory.perEvent) documents per event against \(plain.perEvent)")
        await f.cleanup()
    }
}
