import Logging
import Synchronization
import Testing

@testable import Outbox
@testable import OutboxAMQP

@Suite("Retry policy")
struct RetryPolicyTests {
    @Test("exponential with equal jitter, capped, then park")
    func backoff() {
        let policy = RetryPolicy(maxAttempts: 5, baseDelay: .seconds(1), maxDelay: .seconds(4))
        for _ in 0..<200 {
            guard case .retry(let first) = policy.decision(afterAttempts: 1) else { Issue.record("expected retry"); return }
            #expect(first >= .milliseconds(500) && first <= .seconds(1))
            guard case .retry(let third) = policy.decision(afterAttempts: 3) else { Issue.record("expected retry"); return }
            #expect(third >= .seconds(2) && third <= .seconds(4))
            guard case .retry(let capped) = policy.decision(afterAttempts: 4) else { Issue.record("expected retry"); return }
            #expect(capped <= .seconds(4))
        }
        #expect(policy.decision(afterAttempts: 5) == .park)
    }

    @Test("transient failures keep the capped backoff and never park")
    func transient() {
        let policy = RetryPolicy(maxAttempts: 5, baseDelay: .seconds(1), maxDelay: .seconds(4))
        #expect(policy.decision(afterAttempts: 5, transient: false) == .park)
        for attempts in [5, 50, 5000] {
            guard case .retry(let delay) = policy.decision(afterAttempts: attempts, transient: true) else {
                Issue.record("a transient failure parked after \(attempts) attempts")
                return
            }
            #expect(delay >= .seconds(2) && delay <= .seconds(4))
        }
    }
}

extension RetryPolicyTests {
    @Test("with parkTransientAfter, a transient failure parks an event that old, not a younger one")
    func parkTransientAfter() {
        let policy = RetryPolicy(maxAttempts: 5, baseDelay: .seconds(1), maxDelay: .seconds(4), parkTransientAfter: .seconds(3600))
        #expect(policy.decision(afterAttempts: 2, transient: true, age: .seconds(3600)) == .park)
        #expect(policy.decision(afterAttempts: 2, transient: true, age: .seconds(3599)) != .park)
        #expect(policy.decision(afterAttempts: 2, transient: true, age: nil) != .park, "an unknown age never parks")
        #expect(RetryPolicy().decision(afterAttempts: 2, transient: true, age: .seconds(86_400 * 365)) != .park, "off by default")
    }
}
