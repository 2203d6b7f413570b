import Foundation
import Outbox
import Testing

@testable import OrderService

@Suite("Order validation and money")
struct OrderValidationTests {
    func validate(_ json: String) throws(OrderValidationError) -> ValidatedOrder {
        try OrderValidation.validate(Array(json.utf8))
    }

    @Test("a valid order; money is exact")
    func valid() throws {
        let order = try validate(
            #"{"customerId":" c-1 ","items":[{"sku":"A","quantity":3,"unitPrice":"0.10"},{"sku":"B","quantity":1,"unitPrice":0.2}]}"#)
        #expect(order.customerId == "c-1")
        #expect(order.items.map(\.quantity) == [3, 1])
        #expect(order.totalAmount == Decimal(string: "0.5")!)
        #expect(order.totalAmountText == "0.50")
        #expect(order.items[0].unitPriceText == "0.10")
    }

    @Test("binary floating point would get this wrong; decimals do not")
    func exactSum() throws {
        let items = (0..<10).map { _ in #"{"sku":"x","quantity":1,"unitPrice":"0.1"}"# }.joined(separator: ",")
        let order = try validate(#"{"customerId":"c","items":[\#(items)]}"#)
        // Ten binary-float 0.1s sum to 0.9999999999999999; the decimal sum is exactly 1.0.
        #expect(order.totalAmountText == "1.0")
        #expect(order.totalAmount == Decimal(1))
    }

    @Test(
        "bad requests name the field",
        arguments: [
            ("not json", nil as String?),
            ("[]", nil),
            (#"{"items":[{"sku":"A","quantity":1,"unitPrice":"1"}]}"#, "customerId"),
            (#"{"customerId":"","items":[{"sku":"A","quantity":1,"unitPrice":"1"}]}"#, "customerId"),
            (#"{"customerId":7,"items":[{"sku":"A","quantity":1,"unitPrice":"1"}]}"#, "customerId"),
            (#"{"customerId":"c","items":[]}"#, "items"),
            (#"{"customerId":"c","items":{}}"#, "items"),
            (#"{"customerId":"c"}"#, "items"),
            (#"{"customerId":"c","items":[{"sku":"A","quantity":0,"unitPrice":"1"}]}"#, "items[0].quantity"),
            (#"{"customerId":"c","items":[{"sku":"A","quantity":-1,"unitPrice":"1"}]}"#, "items[0].quantity"),
            (#"{"customerId":"c","items":[{"sku":"A","quantity":1.5,"unitPrice":"1"}]}"#, "items[0].quantity"),
            (#"{"customerId":"c","items":[{"sku":"A","quantity":"1","unitPrice":"1"}]}"#, "items[0].quantity"),
            (#"{"customerId":"c","items":[{"sku":"A","quantity":1,"unitPrice":"-1"}]}"#, "items[0].unitPrice"),
            (#"{"customerId":"c","items":[{"sku":"A","quantity":1,"unitPrice":"1e3"}]}"#, "items[0].unitPrice"),
            (#"{"customerId":"c","items":[{"sku":"A","quantity":1,"unitPrice":"abc"}]}"#, "items[0].unitPrice"),
            (#"{"customerId":"c","items":[{"sku":"A","quantity":1,"unitPrice":true}]}"#, "items[0].unitPrice"),
            (#"{"customerId":"c","items":[{"sku":"A","quantity":1,"unitPrice":"1.00001"}]}"#, "items[0].unitPrice"),
            (#"{"customerId":"c","items":[{"quantity":1,"unitPrice":"1"}]}"#, "items[0].sku"),
            (#"{"customerId":"c","items":[{"sku":"A","quantity":1,"unitPrice":"1","color":"red"}]}"#, "items[0].color"),
            (#"{"customerId":"c","extra":1,"items":[]}"#, "extra"),
        ])
    func invalid(json: String, field: String?) {
        #expect {
            try validate(json)
        } throws: { error in
            let error = error as! OrderValidationError
            return error.field == field && !error.message.isEmpty
        }
    }

    @Test("too many items")
    func tooMany() {
        let items = (0..<101).map { _ in #"{"sku":"x","quantity":1,"unitPrice":"1"}"# }.joined(separator: ",")
        #expect(throws: OrderValidationError(field: "items", "must contain at most 100 items")) {
            try validate(#"{"customerId":"c","items":[\#(items)]}"#)
        }
    }
}
