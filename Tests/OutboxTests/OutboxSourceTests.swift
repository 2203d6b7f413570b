import Logging
@testable import Outbox
@testable import OutboxRuntime
import Testing

@Suite("Sources and discovery filters")
struct OutboxSourceTests {
    @Test("database.collection: the first dot splits, a collection may hold dots")
    func parsing() throws {
        #expect(try OutboxSource(parsing: "shop.outbox", setting: "S") == OutboxSource(database: "shop", collection: "outbox"))
        #expect(try OutboxSource(parsing: " shop.orders.outbox ", setting: "S") == OutboxSource(database: "shop", collection: "orders.outbox"))
        #expect(OutboxSource(database: "shop", collection: "orders.outbox").description == "shop.orders.outbox")
        for bad in ["shop", ".outbox", "shop.", "sh/op.outbox", "shop.system.views", "shop.out$box"] {
            #expect(throws: ConfigurationError.self, "\(bad)") { try OutboxSource(parsing: bad, setting: "S") }
        }
    }

    @Test("a list: none twice, one collection a database, at most 64")
    func lists() throws {
        #expect(try OutboxSource.parseList("a.outbox, b.events,,", setting: "S").map(\.description) == ["a.outbox", "b.events"])
        let many = (0...OutboxSource.limit).map { "d\($0).outbox" }.joined(separator: ",")
        #expect(throws: ConfigurationError(setting: "S", reason: "names 65 sources; a relay serves at most 64")) {
            try OutboxSource.parseList(many, setting: "S")
        }
        #expect(throws: ConfigurationError.self) { try OutboxSource.parseList("a.x,a.y", setting: "S") }
        #expect(throws: ConfigurationError.self) { try OutboxSource.parseList("a.x,a.x", setting: "S") }
    }

    @Test("database patterns: * any run, ! excludes, MongoDB's own never")
    func filters() throws {
        let filter = try DatabaseFilter(parsing: "shop-*, billing, !shop-test*", setting: "F")
        #expect(filter.takes("shop-eu"))
        #expect(filter.takes("shop-"))
        #expect(filter.takes("billing"))
        #expect(!filter.takes("billing2"))
        #expect(!filter.takes("shop-test-1"))
        #expect(!filter.takes("orders"))
        let every = try DatabaseFilter(parsing: "*", setting: "F")
        #expect(every.takes("anything") && !every.takes("admin") && !every.takes("local") && !every.takes("config"))
        #expect(try DatabaseFilter(parsing: "!tmp*", setting: "F").takes("orders"))
        #expect(try DatabaseFilter(parsing: "a*b*c", setting: "F").takes("aXbYc"))
        #expect(try !DatabaseFilter(parsing: "a*b*c", setting: "F").takes("aXcYb"))
        #expect(throws: ConfigurationError.self) { try DatabaseFilter(parsing: "shop.x", setting: "F") }
    }

    @Test("discovery adds what is new, skips a second collection of a database and stops at the limit, telling once")
    func additions() {
        let served = [OutboxSource(database: "a", collection: "outbox")]
        var refused: Set<OutboxSource> = []
        let logger = Logger(label: "test")
        let found = [
            OutboxSource(database: "a", collection: "outbox"), OutboxSource(database: "b", collection: "outbox"),
            OutboxSource(database: "a", collection: "events"),
        ]
        #expect(
            SourceSupervisor.additions(found, to: served, refused: &refused, logger: logger) == [OutboxSource(database: "b", collection: "outbox")])
        #expect(refused == [OutboxSource(database: "a", collection: "events")])
        let full = (0..<OutboxSource.limit).map { OutboxSource(database: "d\($0)", collection: "outbox") }
        #expect(SourceSupervisor.additions([OutboxSource(database: "z", collection: "outbox")], to: full, refused: &refused, logger: logger).isEmpty)
        #expect(refused.contains(OutboxSource(database: "z", collection: "outbox")))
    }

    @Test("a discovered source missing from two rounds in a row is gone; one found again starts over; a configured one never goes")
    func gone() {
        let (a, b, c) = (
            OutboxSource(database: "a", collection: "outbox"), OutboxSource(database: "b", collection: "outbox"),
            OutboxSource(database: "c", collection: "outbox")
        )
        var missing: [OutboxSource: Int] = [:]
        #expect(SourceSupervisor.gone([a], from: [a, b, c], configured: [c], missing: &missing).isEmpty)
        #expect(missing == [b: 1])
        #expect(SourceSupervisor.gone([a, b], from: [a, b, c], configured: [c], missing: &missing).isEmpty, "b is back")
        #expect(missing.isEmpty)
        #expect(SourceSupervisor.gone([], from: [a, b, c], configured: [c], missing: &missing).isEmpty)
        #expect(SourceSupervisor.gone([], from: [a, b, c], configured: [c], missing: &missing) == [a, b])
        #expect(missing.isEmpty, "a source stopped is counted afresh if it comes back")
    }
}

@Suite("Sources sharing the store")
struct StoreSharesTests {
    final class Clock: @unchecked Sendable {
        var instant = ContinuousClock.now
    }

    @Test("the batch size is split between the sources draining, at least one event each")
    func shares() {
        let shares = StoreShares()
        let (a, b, c) = (shares.join(), shares.join(), shares.join())
        #expect(shares.share(of: 500, for: a) == 500, "alone draining")
        shares.passEnded(b, full: true)
        #expect(shares.share(of: 500, for: a) == 250)
        shares.passEnded(c, full: true)
        #expect(shares.share(of: 500, for: a) == 166)
        #expect(shares.share(of: 2, for: a) == 1)
        shares.passEnded(c, full: false)
        #expect(shares.share(of: 500, for: a) == 250, "a pass that was not full leaves the draining ones")
    }

    @Test("a draining source yields while a quiet source's store work is under way; a quiet source's passes are spaced while another drains")
    func quietFirst() async {
        let clock = Clock()
        let shares = StoreShares(quietInterval: .milliseconds(100), now: { clock.instant })
        let (a, b) = (shares.join(), shares.join())
        #expect(shares.isShared)
        shares.passStarted(a)
        shares.passStarted(b)
        await shares.storeWork(b) {
            #expect(!shares.shouldYield(a), "neither has ended a pass: b is not known to be quiet")
        }
        shares.passEnded(b, full: false)
        await shares.storeWork(b) {
            #expect(shares.shouldYield(a), "a has not ended its first pass (its start-up reads): it yields to b, quiet")
        }
        shares.passEnded(a, full: true)
        #expect(!shares.shouldYield(a), "no quiet work under way")
        shares.passStarted(b)
        await shares.storeWork(b) {
            #expect(shares.shouldYield(a), "b has not drained anything: quiet")
            #expect(!shares.shouldYield(b), "a quiet source never yields")
        }
        #expect(!shares.shouldYield(a), "only while the quiet work is under way")
        clock.instant += .milliseconds(30)
        shares.passEnded(b, full: false)
        #expect(shares.delayBeforePass(b) == .milliseconds(70), "a quiet pass at most every 100 ms while a drains")
        #expect(shares.delayBeforePass(a) == .zero, "a draining source starts at once")
        shares.passEnded(a, full: false)
        #expect(shares.delayBeforePass(b) == .zero, "nobody drains")

        shares.passEnded(a, full: true)
        shares.passEnded(b, full: true)
        await shares.storeWork(b) {
            #expect(!shares.shouldYield(a), "two draining sources do not yield to each other")
        }
        shares.passEnded(b, full: false)
        shares.leave(b)
        #expect(!shares.isShared, "a member that left no longer counts")
    }
}
