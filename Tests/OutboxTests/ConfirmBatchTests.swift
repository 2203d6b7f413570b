import Logging
import Synchronization
import Testing

@testable import Outbox
@testable import OutboxAMQP

@Suite("Confirm bookkeeping")
struct ConfirmBatchTests {
    @Test("multiple acks settle every earlier tag; nacks and returns are failures")
    func multiple() {
        var batch = ConfirmBatch(count: 5, messageIds: ["m0", "m1", "m2", "m3", "m4"])
        for i in 0..<5 { batch.published(index: i, tag: UInt64(101 + i)) }
        batch.apply(.returned(messageId: "m1", replyText: "312 NO_ROUTE"))
        batch.apply(.ack(tag: 102, multiple: true))
        #expect(batch.outstanding == 3)
        batch.apply(.nack(tag: 104, multiple: false))
        batch.apply(.ack(tag: 100, multiple: true))  // from an earlier batch: ignored
        #expect(batch.outstanding == 2)
        batch.apply(.ack(tag: 105, multiple: true))
        #expect(batch.outstanding == 0)
        #expect(batch.outcomes(orElse: .timedOut) == [.acked, .returned("312 NO_ROUTE"), .acked, .nacked, .acked])
    }

    @Test("publishes held back while blocked are settled by later confirms, once; a nacked one is sent again")
    func heldBack() {
        var batch = ConfirmBatch(count: 4, messageIds: ["a", "b", "c", "d"])
        batch.settled(index: 0, .acked)
        for (i, tag) in [(1, 7), (2, 8), (3, 9)] { batch.published(index: i, tag: UInt64(tag)) }
        batch.apply(.ack(tag: 7, multiple: false))
        #expect(batch.unconfirmed.map(\.messageId) == ["c", "d"])
        var held = HeldBackPublishes()
        held.hold(batch.unconfirmed, reason: "low memory")
        batch.settleOutstanding(.blocked("low memory"))
        #expect(batch.outcomes(orElse: .timedOut) == [.acked, .acked, .blocked("low memory"), .blocked("low memory")])
        #expect(held.isWaiting && held.holds("c") == "low memory")
        held.apply(.ack(tag: 8, multiple: true))
        held.apply(.nack(tag: 9, multiple: false))
        #expect(!held.isWaiting)
        #expect(held.take("c") == .acked)
        #expect(held.take("c") == nil, "once")
        #expect(held.take("d") == nil, "nacked: published again")
    }

    @Test("outstanding confirms on a closed channel are not delivered; unpublished ones neither")
    func closed() {
        var batch = ConfirmBatch(count: 3, messageIds: ["a", "b", "c"])
        batch.published(index: 0, tag: 1)
        batch.published(index: 1, tag: 2)
        batch.apply(.ack(tag: 1, multiple: false))
        batch.settleOutstanding(.connectionLost("closed"))
        #expect(batch.outcomes(orElse: .connectionLost("closed")) == [.acked, .connectionLost("closed"), .connectionLost("closed")])
    }
}
