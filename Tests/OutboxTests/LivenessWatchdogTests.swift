import Synchronization
import Testing

@testable import OutboxRuntime

/// A clock the test moves by hand.
private final class ManualClock: Sendable {
    private let reading = Mutex<Duration>(.zero)
    func advance(by duration: Duration) { reading.withLock { $0 += duration } }
    var now: @Sendable () -> Duration { { [self] in reading.withLock { $0 } } }
}

@Suite("Liveness watchdog")
struct LivenessWatchdogTests {
    @Test("live until the timeout has passed since the start without an iteration")
    func liveWithinTimeout() {
        let clock = ManualClock()
        let watchdog = LivenessWatchdog(timeout: .seconds(60), now: clock.now)
        #expect(watchdog.status == .live)
        clock.advance(by: .seconds(60))
        #expect(watchdog.status == .live, "exactly the timeout is still live")
        clock.advance(by: .milliseconds(1))
        #expect(watchdog.status == .stalled(since: .milliseconds(60_001)))
    }

    @Test("each completed iteration, whatever its outcome, restarts the count")
    func iterationsKeepItLive() {
        let clock = ManualClock()
        let watchdog = LivenessWatchdog(timeout: .seconds(10), now: clock.now)
        for _ in 0..<5 {
            clock.advance(by: .seconds(9))
            watchdog.iterationCompleted()
            #expect(watchdog.status == .live)
        }
        clock.advance(by: .seconds(11))
        #expect(watchdog.status == .stalled(since: .seconds(11)))
        watchdog.iterationCompleted()
        #expect(watchdog.status == .live, "live again once the loop completes a pass")
    }

    @Test("start() counts the timeout from then, after a long start-up")
    func startResetsTheCount() {
        let clock = ManualClock()
        let watchdog = LivenessWatchdog(timeout: .seconds(5), now: clock.now)
        clock.advance(by: .seconds(30))
        #expect(watchdog.status != .live)
        watchdog.start()
        #expect(watchdog.status == .live)
        clock.advance(by: .seconds(6))
        #expect(watchdog.status == .stalled(since: .seconds(6)))
    }

    @Test("the default clock is monotonic and a fresh watchdog is live")
    func defaultClock() {
        let watchdog = LivenessWatchdog(timeout: .seconds(1))
        let first = LivenessWatchdog.monotonicNow()
        #expect(LivenessWatchdog.monotonicNow() >= first)
        #expect(watchdog.status == .live)
    }
}
