import Outbox
import Testing

@Suite("Wake signal")
struct WakeSignalTests {
    @Test("a timeout that fires before its waiter registered still ends the wait", .timeLimit(.minutes(1)))
    func timeoutNeverLost() async {
        let wake = WakeSignal()
        // A zero timeout often elapses before the waiting child has run: every wait must still end.
        for _ in 0..<5_000 { await wake.wait(timeout: .zero) }
        for _ in 0..<200 { await wake.wait(timeout: .microseconds(50)) }
    }

    @Test("a signal given while nobody waits ends the next wait at once; only once", .timeLimit(.minutes(1)))
    func signalRemembered() async {
        let wake = WakeSignal()
        wake.signal()
        let start = ContinuousClock.now
        await wake.wait(timeout: .seconds(30))
        #expect(ContinuousClock.now - start < .seconds(5))
        let second = ContinuousClock.now
        await wake.wait(timeout: .milliseconds(200))
        #expect(ContinuousClock.now - second >= .milliseconds(150), "the signal was used up")
    }

    @Test("a cancelled wait ends at once and leaves no signal behind", .timeLimit(.minutes(1)))
    func cancelled() async {
        let wake = WakeSignal()
        let start = ContinuousClock.now
        let waiting = Task { await wake.wait(timeout: .seconds(60)) }
        try? await Task.sleep(for: .milliseconds(50))
        waiting.cancel()
        await waiting.value
        #expect(ContinuousClock.now - start < .seconds(10))
        let next = ContinuousClock.now
        await wake.wait(timeout: .milliseconds(200))
        #expect(ContinuousClock.now - next >= .milliseconds(150), "no signal was left pending")
    }
}
