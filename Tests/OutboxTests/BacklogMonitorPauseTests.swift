import Testing

@testable import OutboxMongo

@Suite("Backlog monitor pauses")
struct BacklogMonitorPauseTests {
    @Test("relays take turns; a sample that took long spaces the next one out to a small share of the store's time")
    func pause() {
        #expect(BacklogMonitor.pause(interval: .seconds(15), relays: 1, took: .milliseconds(5)) == .seconds(15))
        #expect(BacklogMonitor.pause(interval: .seconds(15), relays: 3, took: .milliseconds(5)) == .seconds(45))
        #expect(BacklogMonitor.pause(interval: .seconds(15), relays: 0, took: .zero) == .seconds(15), "at least one relay")
        #expect(BacklogMonitor.pause(interval: .seconds(15), relays: 1, took: .seconds(2)) == .seconds(100), "2 s is 2 % of 100 s")
    }
}
