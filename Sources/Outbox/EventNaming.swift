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

/// Which exchange an event goes to when its outbox document names none: by its type, else by its
/// aggregate type, else the default exchange.
public struct EventRouting: Sendable, Equatable {
    public var defaultExchange: String
    /// Exchange by event type or aggregate type (an event type wins over an aggregate type).
    public var exchangeByName: [String: String]
    /// Headers and routing keys taken from the document's fields.
    public var mapping: FieldMapping

    public init(defaultExchange: String = "orders", exchangeByName: [String: String] = [:], mapping: FieldMapping = FieldMapping()) {
        self.defaultExchange = defaultExchange
        self.exchangeByName = exchangeByName
        self.mapping = mapping
    }

    public func exchange(type: String, aggregateType: String) -> String {
        exchangeByName[type] ?? (aggregateType.isEmpty ? nil : exchangeByName[aggregateType]) ?? defaultExchange
    }

    /// Parses `Name=exchange,Name=exchange` (spaces around items are ignored).
    public static func parseMap(_ text: String, setting: String) throws -> [String: String] {
        var map: [String: String] = [:]
        for item in text.split(separator: ",") {
            let pair = item.split(separator: "=", maxSplits: 1).map { $0.trimmingSpaces }
            guard pair.count == 2, !pair[0].isEmpty, !pair[1].isEmpty, pair[1].utf8.count <= 255 else {
                throw ConfigurationError(setting: setting, reason: "'\(item.trimmingSpaces)' is not Name=exchange")
            }
            guard map[pair[0]] == nil else {
                throw ConfigurationError(setting: setting, reason: "'\(pair[0])' is mapped twice")
            }
            map[pair[0]] = pair[1]
        }
        return map
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
