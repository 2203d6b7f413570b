import Foundation
import Testing

@testable import OutboxMongo

@Suite("Scan ids of hand-overs")
struct ScanIdTests {
    @Test("a hand-over's scan id sorts after its aggregate's pending ones, whatever this relay's clock says")
    func afterFloor() {
        let fresh = MongoOutboxStore.scanId(after: nil, now: Date())
        #expect(fresh.count == 24)
        let past = "00000001" + String(repeating: "0", count: 16)
        #expect(MongoOutboxStore.scanId(after: past, now: Date()) > past)
        #expect(MongoOutboxStore.scanId(after: past, now: Date()).count == 24, "a clock ahead of the floor gives a fresh id")
        // A scan id from a clock an hour or a year ahead of this one.
        let ahead = "ffffff00" + "00000000000000000000000f".suffix(16)
        #expect(MongoOutboxStore.scanId(after: ahead, now: Date()) == "ffffff00" + "0000000000000010")
        #expect(MongoOutboxStore.scanId(after: "ffffff00aaaaaaaaaaaaaaff", now: Date()) == "ffffff00aaaaaaaaaaaaab00")
        let top = String(repeating: "f", count: 24)
        #expect(MongoOutboxStore.scanId(after: top, now: Date()) > top)
        #expect(MongoOutboxStore.scanId(after: "zz", now: Date()) == "zz0", "not ObjectId hex: a digit appended")
    }
}
