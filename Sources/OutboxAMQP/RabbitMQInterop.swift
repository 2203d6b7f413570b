import CRabbitMQ
import Foundation

/// rabbitmq-c's text for a status code.
func statusText(_ status: Int32) -> String {
    String(cString: amqp_error_string2(status))
}

extension timeval {
    init(duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(tv_sec: Int(max(seconds, 0)), tv_usec: Int(max(attoseconds, 0) / 1_000_000_000_000))
    }
}

extension String {
    init(amqpBytes bytes: amqp_bytes_t) {
        guard let base = bytes.bytes, bytes.len > 0 else {
            self = ""
            return
        }
        self = String(decoding: UnsafeRawBufferPointer(start: base, count: bytes.len), as: UTF8.self)
    }
}

extension Array where Element == UInt8 {
    init(amqpBytes bytes: amqp_bytes_t) {
        guard let base = bytes.bytes, bytes.len > 0 else {
            self = []
            return
        }
        self = Array(UnsafeRawBufferPointer(start: base, count: bytes.len))
    }
}

/// C memory for the duration of one rabbitmq-c call: strings, bodies and tables copied into
/// malloc'd buffers that stay valid until the arena is released.
final class CArena {
    private var allocations: [UnsafeMutableRawPointer] = []

    deinit { allocations.forEach { free($0) } }

    func allocate(_ count: Int) -> UnsafeMutableRawPointer {
        let pointer = malloc(Swift.max(count, 1))!
        allocations.append(pointer)
        return pointer
    }

    func bytes(_ string: String) -> amqp_bytes_t { bytes(Array(string.utf8)) }

    func bytes(_ array: [UInt8]) -> amqp_bytes_t {
        let pointer = allocate(array.count)
        array.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: array.count) }
        return amqp_bytes_t(len: array.count, bytes: pointer)
    }

    func table(_ arguments: [String: AMQPArgument]) -> amqp_table_t {
        guard !arguments.isEmpty else { return amqp_empty_table }
        let entries = allocate(MemoryLayout<amqp_table_entry_t>.stride * arguments.count)
            .bindMemory(to: amqp_table_entry_t.self, capacity: arguments.count)
        for (i, (key, value)) in arguments.sorted(by: { $0.key < $1.key }).enumerated() {
            var field = amqp_field_value_t()
            switch value {
            case .string(let s):
                field.kind = UInt8(ascii: "S")
                field.value.bytes = bytes(s)
            case .int(let n):
                field.kind = UInt8(ascii: "l")
                field.value.i64 = n
            case .bool(let b):
                field.kind = UInt8(ascii: "t")
                field.value.boolean = b ? 1 : 0
            }
            (entries + i).initialize(to: amqp_table_entry_t(key: bytes(key), value: field))
        }
        return amqp_table_t(num_entries: Int32(arguments.count), entries: entries)
    }
}
