/// Naming rules shared by the writer and the relay.
public enum EventNaming {
    /// Routing key for an event type: `OrderCreated` → `order.created`,
    /// `InventoryReservationFailed` → `inventory.reservation.failed`.
    public static func routingKey(forType type: String) -> String {
        var words: [String] = []
        var current = ""
        for character in type {
            if character.isUppercase, !current.isEmpty {
                words.append(current)
                current = ""
            }
            current.append(character)
        }
        if !current.isEmpty { words.append(current) }
        return words.map { $0.lowercased() }.joined(separator: ".")
    }

    /// Stable partition of an aggregate id: FNV-1a over its UTF-8 bytes, modulo `partitions`.
    /// Stable across processes and releases (unlike Swift's seeded `Hasher`).
    public static func partition(ofAggregate aggregateId: String, partitions: Int) -> Int {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in aggregateId.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return Int(hash % UInt64(max(partitions, 1)))
    }
}
