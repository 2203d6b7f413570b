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

@Suite("Scan windows narrower than a second")
struct ScanPointTests {
    typealias Point = MongoOutboxStore.ScanPoint

    @Test("a scan id reads as its seconds and the bytes after them, and prints back the same")
    func roundTrip() throws {
        let sid = "6b17594cbf27216f819e251c"
        let point = try #require(Point(sid))
        #expect(point.seconds == 0x6b17_594c && point.rest == 0xbf27_216f_819e_251c)
        #expect(point.hex == sid)
        #expect(Point(seconds: 1).hex == "00000001" + String(repeating: "0", count: 16))
        for notHex in ["zz", "6B17594CBF27216F819E251C", "+b17594cbf27216f819e251c", "6b17594cbf27216f819e251"] {
            #expect(Point(notHex) == nil, "\(notHex)")
        }
    }

    @Test("a window's end is its width on, carried into the seconds; the distance gives the width back")
    func widths() throws {
        let start = try #require(Point("6b17594cfffffffffffffff0"))
        // 32 ids of one second on: past the last of this second.
        let end = try #require(start.advanced(by: 32 * 0x1p-64))
        #expect(end.hex == "6b17594d0000000000000010")
        #expect(start.distance(to: end) == 32 * 0x1p-64)
        #expect(end.distance(to: start) == -32 * 0x1p-64)
        let later = try #require(Point(seconds: 100, rest: 1 << 63).advanced(by: 2.5))
        #expect(later.seconds == 103 && later.rest == 0)
        #expect(Point(seconds: .max).advanced(by: 1) == nil, "past the last second an ObjectId holds")
        // Ids 250 apart in a process's counter are 250 ids apart, not rounded away.
        let (a, b) = (try #require(Point("6b17594cbf27216f819e0000")), try #require(Point("6b17594cbf27216f819e00fa")))
        #expect(a.distance(to: b) == 250 * 0x1p-64)
        #expect(a.advanced(by: a.distance(to: b)) == b)
    }
}

@Suite("Questions that read the whole collection on some servers")
struct FullQuestionsTests {
    @Test("asked once the relay has caught up, then every tenth turn; under a backlog only every hundredth")
    func schedule() {
        var questions = MongoOutboxStore.FullQuestions(every: 10)
        func turns(_ count: Int, caughtUp: Bool) -> [Int] {
            (1...count).filter { _ in questions.nextIsFull(caughtUp: caughtUp) }
        }
        #expect(turns(5, caughtUp: false).isEmpty, "a backlog at the start: not asked")
        #expect(turns(1, caughtUp: true) == [1], "the first turn once caught up")
        #expect(turns(10, caughtUp: true) == [10], "then the tenth turn since")
        #expect(turns(200, caughtUp: false) == [100, 200], "a backlog that does not end: every hundredth turn")
    }
}
