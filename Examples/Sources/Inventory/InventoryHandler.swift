import Foundation
import Outbox
import OutboxConsumer
import OrderEvents
import OutboxMongo

/// Reserves stock for each `OrderCreated`.
///
/// When every item is available it decrements the stock and emits `InventoryReserved`; otherwise
/// it changes no stock and emits `InventoryReservationFailed` with the missing items. The stock
/// change, the reservation record and the follow-up event are written in the consumer's
/// transaction, together with the inbox entry, so they happen once per order. A batch is applied
/// in delivery order, as if one by one: an order early in the batch can take the last of a SKU.
public struct InventoryHandler: InboxHandler {
    public static let stockCollection = "stock"
    public static let reservationsCollection = "reservations"
    public static let aggregateType = "InventoryReservation"

    public let writer: OutboxWriter
    /// Exchange the follow-up events are published to.
    public let exchange: String

    public init(writer: OutboxWriter = OutboxWriter(), exchange: String = "inventory") {
        self.writer = writer
        self.exchange = exchange
    }

    public func handle(_ message: IncomingMessage, connection: MongoConnection) throws {
        try handle(batch: [message], connection: connection)
    }

    /// Reserves for the orders in delivery order, as if one by one, with one stock query, one
    /// guarded update per SKU and one insert each of reservations and follow-up events.
    public func handle(batch messages: [IncomingMessage], connection: MongoConnection) throws {
        var orders: [(message: IncomingMessage, order: OrderCreated)] = []
        for (index, message) in messages.enumerated() {
            do {
                // Any body format the relay may use: the event's type and data read the same.
                let received = try message.event()
                guard received.type == nil || received.type == OrderCreated.type else { continue }
                orders.append((message, try OrderCreated(received)))
            } catch {
                throw MessageFailure(index: index, error: error)
            }
        }
        guard !orders.isEmpty else { return }
        let stock = connection.collection(Self.stockCollection)
        let allSKUs = Set(orders.flatMap { $0.order.items.map(\.sku) }).sorted()
        var available: [String: Int] = [:]
        for document in try stock.find(["_id": ["$in": .array(allSKUs.map { .string($0) })]]) {
            if let sku = document["_id"]?.stringValue { available[sku] = document["available"]?.intValue ?? 0 }
        }
        var taken: [String: Int] = [:]
        var reservations: [Document] = []
        var events: [NewEvent] = []
        for (message, order) in orders {
            // The same SKU may appear on several lines: reserve the sum.
            var needed: [String: Int] = [:]
            for item in order.items { needed[item.sku, default: 0] += item.quantity }
            let skus = needed.keys.sorted()
            let missing = skus.filter { (available[$0] ?? 0) < needed[$0]! }
            let lines: [BSON] = skus.map { ["sku": .string($0), "quantity": .int64(Int64(needed[$0]!))] }
            if missing.isEmpty {
                for sku in skus {
                    available[sku]! -= needed[sku]!
                    taken[sku, default: 0] += needed[sku]!
                }
                events.append(
                    NewEvent(
                        type: "InventoryReserved", aggregateType: Self.aggregateType, aggregateId: order.orderId,
                        data: ["orderId": .string(order.orderId), "items": .array(lines)], exchange: exchange,
                        correlationId: message.messageId, traceContext: message.traceContext))
            } else {
                let shortages: [BSON] = missing.map {
                    ["sku": .string($0), "requested": .int64(Int64(needed[$0]!)), "available": .int64(Int64(available[$0] ?? 0))]
                }
                events.append(
                    NewEvent(
                        type: "InventoryReservationFailed", aggregateType: Self.aggregateType, aggregateId: order.orderId,
                        data: ["orderId": .string(order.orderId), "missing": .array(shortages)], exchange: exchange,
                        correlationId: message.messageId, traceContext: message.traceContext))
            }
            reservations.append([
                "_id": .string(order.orderId), "status": .string(missing.isEmpty ? "reserved" : "failed"),
                "items": .array(lines), "messageId": .string(message.messageId), "at": .date(Date()),
            ])
        }
        for (sku, quantity) in taken.sorted(by: { $0.key < $1.key }) {
            let result = try stock.updateOne(
                ["_id": .string(sku), "available": ["$gte": .int64(Int64(quantity))]],
                ["$inc": ["available": .int64(Int64(-quantity)), "reserved": .int64(Int64(quantity))]])
            // Read and update are in one transaction; a miss means a concurrent change won.
            guard result.matched == 1 else { throw MongoError(operation: "reserve \(sku)", message: "stock changed concurrently") }
        }
        try connection.collection(Self.reservationsCollection).insertMany(reservations)
        try writer.append(events, using: connection)
    }

    /// Sets the available quantity of SKUs (for demos and tests).
    public static func setStock(_ levels: [String: Int], pool: MongoClientPool) async throws {
        try await pool.withConnection { connection in
            let stock = connection.collection(stockCollection)
            for (sku, available) in levels {
                try stock.updateOne(["_id": .string(sku)], ["$set": ["available": .int64(Int64(available)), "reserved": .int64(0)]], upsert: true)
            }
        }
    }
}
