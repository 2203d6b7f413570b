import Foundation
import Outbox

/// A rejected request: which field, and why. Rendered as `{"error": {"message", "field"}}`.
public struct OrderValidationError: Error, Equatable, CustomStringConvertible {
    public let field: String?
    public let message: String

    public init(field: String?, _ message: String) {
        self.field = field
        self.message = message
    }

    public var description: String { field.map { "\($0): \(message)" } ?? message }
}

/// An order request that passed validation. Quantities are whole numbers, prices exact decimals.
public struct ValidatedOrder: Sendable, Equatable {
    public struct Item: Sendable, Equatable {
        public var sku: String
        public var quantity: Int
        public var unitPrice: Decimal
        /// The price as written, without leading zeros ("12.50" keeps its two decimals).
        public var unitPriceText: String
    }

    public var customerId: String
    public var items: [Item]

    /// Sum of quantity × unit price, computed in base-10 decimal: no binary rounding.
    public var totalAmount: Decimal {
        items.reduce(Decimal(0)) { $0 + Decimal($1.quantity) * $1.unitPrice }
    }

    /// The total written with as many decimals as the most precise price ("25.00", not "25").
    public var totalAmountText: String {
        let scale = items.map { $0.unitPriceText.split(separator: ".").dropFirst().first?.count ?? 0 }.max() ?? 0
        var text = totalAmount.description
        let decimals = text.split(separator: ".").dropFirst().first?.count ?? 0
        if decimals < scale { text += (decimals == 0 ? "." : "") + String(repeating: "0", count: scale - decimals) }
        return text
    }
}

/// Limits on what an order may contain.
public struct OrderLimits: Sendable {
    public var maxItems = 100
    public var maxQuantity = 10_000
    public var maxIdLength = 128
    /// Prices have at most this many digits after the decimal point.
    public var maxPriceScale = 4
    public var maxPrice = Decimal(1_000_000_000)
    public var maxBodyBytes = 64 * 1024

    public init() {}
}

public enum OrderValidation {
    /// Validates a JSON request body: `{"customerId": "...", "items": [{"sku", "quantity", "unitPrice"}]}`.
    public static func validate(_ body: some Collection<UInt8>, limits: OrderLimits = OrderLimits()) throws(OrderValidationError)
        -> ValidatedOrder
    {
        let json: JSONValue
        do {
            json = try JSONValue.parse(body)
        } catch {
            throw OrderValidationError(field: nil, error.description)
        }
        guard case .object(let fields) = json else {
            throw OrderValidationError(field: nil, "the body must be a JSON object, not \(json.typeName)")
        }
        let known: Set<String> = ["customerId", "items"]
        if let unknown = fields.first(where: { !known.contains($0.0) }) {
            throw OrderValidationError(field: unknown.0, "unknown field")
        }
        let customerId = try identifier(json["customerId"], field: "customerId", limits: limits)
        guard let itemsValue = json["items"] else { throw OrderValidationError(field: "items", "is required") }
        guard case .array(let rawItems) = itemsValue else {
            throw OrderValidationError(field: "items", "must be an array, not \(itemsValue.typeName)")
        }
        guard !rawItems.isEmpty else { throw OrderValidationError(field: "items", "must contain at least one item") }
        guard rawItems.count <= limits.maxItems else {
            throw OrderValidationError(field: "items", "must contain at most \(limits.maxItems) items")
        }
        var items: [ValidatedOrder.Item] = []
        for (index, raw) in rawItems.enumerated() {
            let path = "items[\(index)]"
            guard case .object(let itemFields) = raw else {
                throw OrderValidationError(field: path, "must be an object, not \(raw.typeName)")
            }
            let itemKnown: Set<String> = ["sku", "quantity", "unitPrice"]
            if let unknown = itemFields.first(where: { !itemKnown.contains($0.0) }) {
                throw OrderValidationError(field: "\(path).\(unknown.0)", "unknown field")
            }
            let sku = try identifier(raw["sku"], field: "\(path).sku", limits: limits)
            let quantity = try self.quantity(raw["quantity"], field: "\(path).quantity", limits: limits)
            let (price, priceText) = try self.price(raw["unitPrice"], field: "\(path).unitPrice", limits: limits)
            items.append(.init(sku: sku, quantity: quantity, unitPrice: price, unitPriceText: priceText))
        }
        return ValidatedOrder(customerId: customerId, items: items)
    }

    static func identifier(_ value: JSONValue?, field: String, limits: OrderLimits) throws(OrderValidationError) -> String {
        guard let value else { throw OrderValidationError(field: field, "is required") }
        guard case .string(let s) = value else { throw OrderValidationError(field: field, "must be a string, not \(value.typeName)") }
        let trimmed = s.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !trimmed.isEmpty else { throw OrderValidationError(field: field, "must not be empty") }
        guard trimmed.count <= limits.maxIdLength else {
            throw OrderValidationError(field: field, "must be at most \(limits.maxIdLength) characters")
        }
        guard !trimmed.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw OrderValidationError(field: field, "must not contain control characters")
        }
        return trimmed
    }

    static func quantity(_ value: JSONValue?, field: String, limits: OrderLimits) throws(OrderValidationError) -> Int {
        guard let value else { throw OrderValidationError(field: field, "is required") }
        guard case .number(let text) = value else {
            throw OrderValidationError(field: field, "must be a whole number, not \(value.typeName)")
        }
        guard let n = Int(text) else {
            throw OrderValidationError(field: field, "must be a whole number, got \(text)")
        }
        guard n > 0 else { throw OrderValidationError(field: field, "must be positive, got \(n)") }
        guard n <= limits.maxQuantity else { throw OrderValidationError(field: field, "must be at most \(limits.maxQuantity)") }
        return n
    }

    /// A price: a JSON number or a string in plain decimal notation ("12.50"), not negative,
    /// with at most `maxPriceScale` decimals. No exponents, no binary floating point.
    static func price(_ value: JSONValue?, field: String, limits: OrderLimits) throws(OrderValidationError) -> (Decimal, String) {
        guard let value else { throw OrderValidationError(field: field, "is required") }
        let text: String
        switch value {
        case .number(let t), .string(let t): text = t
        default: throw OrderValidationError(field: field, "must be a decimal number, not \(value.typeName)")
        }
        if text.hasPrefix("-") { throw OrderValidationError(field: field, "must not be negative, got \(text)") }
        let parts = text.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        let isDigits: (Substring) -> Bool = { !$0.isEmpty && $0.allSatisfy { ("0"..."9").contains($0) } }
        guard isDigits(parts[0]), parts.count == 1 || isDigits(parts[1]) else {
            throw OrderValidationError(field: field, "must be a plain decimal number such as 12.50, got \(text)")
        }
        if parts.count == 2, parts[1].count > limits.maxPriceScale {
            throw OrderValidationError(field: field, "must have at most \(limits.maxPriceScale) decimal places")
        }
        guard let decimal = Decimal(string: text, locale: Locale(identifier: "en_US_POSIX")), decimal <= limits.maxPrice else {
            throw OrderValidationError(field: field, "must be at most \(limits.maxPrice)")
        }
        let integer = parts[0].drop(while: { $0 == "0" })
        let normalized = (integer.isEmpty ? "0" : String(integer)) + (parts.count == 2 ? ".\(parts[1])" : "")
        return (decimal, normalized)
    }
}
