import Foundation
import Testing

@testable import OutboxMongo

@Suite("The database's clock")
struct DatabaseClockTests {
    @Test("scan ids are made at the database's time, not this machine's")
    func databaseTime() {
        let tenMinutesAgo = Date().addingTimeInterval(-600)
        let id = MongoOutboxStore.scanId(after: nil, now: tenMinutesAgo)
        #expect(UInt32(id.prefix(8), radix: 16) == UInt32(tenMinutesAgo.timeIntervalSince1970))
        let a = ObjectId(time: tenMinutesAgo)
        let b = ObjectId(time: tenMinutesAgo)
        #expect(a < b, "within one second, in the order made")
        #expect(ObjectId(time: Date()) > b)
    }

    @Test("the database's clock is its localTime read halfway through the round trip")
    func clockOffset() {
        let sent = Date(timeIntervalSince1970: 1_000)
        // The server said 1,600.010 s when we had sent at 1,000 s and got the reply 20 ms later.
        let offset = DatabaseClock.offset(server: Date(timeIntervalSince1970: 1_600.010), sent: sent, received: sent.addingTimeInterval(0.020))
        #expect(abs(offset - 600.0) < 0.000_001)
    }
}
