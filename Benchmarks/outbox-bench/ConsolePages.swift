import ArgumentParser
import Foundation
import OutboxMongo

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Issue 27's console figure: how long the operator console takes to answer its pages and API over
/// a large parked backlog (grouped by lastError with the status index; no document is returned).
extension Bench {
    struct ConsoleTimes {
        /// (what, median ms, slowest ms, bytes of the answer).
        var rows: [(String, Double, Double, Int)]
    }

    /// Writes `parked` parked events over `errors` errors (a few large groups, many small ones) and
    /// `pending` pending ones, starts `outboxctl console --no-auth` on them, and times each request
    /// `rounds` times after one warm-up.
    func consolePages(parked: Int, pending: Int = 1000, errors: Int = 25, rounds: Int = 5) async throws -> ConsoleTimes {
        let database = "bench_console"
        let pool = try self.database(database)
        let errorTexts = (0..<errors).map { "PRECONDITION_FAILED - unroutable: exchange 'orders-\($0)' not found" }
        let now = Date()
        for start in stride(from: 0, to: parked + pending, by: 1000) {
            let documents: [Document] = (start..<min(start + 1000, parked + pending)).map { i in
                var document: Document = [
                    "_id": .string("evt-\(i)"), "type": .string(["OrderCreated", "OrderPaid", "OrderShipped"][i % 3]),
                    "aggregateId": .string("order-\(i)"), "data": ["n": .int64(Int64(i))], "timestamp": .date(now.addingTimeInterval(-Double(i))),
                ]
                if i < parked {
                    // Group k holds about twice as many as group k + 1: the page sorts by size.
                    let group = min(errors - 1, Int(log2(Double(parked) / Double(parked - i))))
                    document["status"] = "parked"
                    document["lastError"] = .string(errorTexts[group])
                    document["parkedAt"] = .date(now)
                }
                return document
            }
            try await pool.withConnection { _ = try $0.collection("outbox").insertMany(documents) }
        }
        // The indexes a relay creates at start, and the console's (outboxctl init --console).
        try await pool.withConnection { try $0.collection("outbox").createIndexes(OutboxSchema.indexes + OutboxSchema.consoleIndexes) }
        let port = freeLoopbackPort()
        var environment = relayEnvironment(database: database)
        environment["OUTBOX_CONSOLE_TOKENS_FILE"] = nil
        let pid = try spawnChild(
            ["\(bin)/outboxctl", "console", "--no-auth", "--listen", "127.0.0.1:\(port)", "--log-level", "warning"], environment: environment)
        defer {
            kill(pid, SIGTERM)
            waitChild(pid)
        }
        let base = "http://127.0.0.1:\(port)"
        var ready = false
        for _ in 0..<100 where !ready {
            ready = (try? await get(base + "/health")) != nil
            if !ready { try await Task.sleep(for: .milliseconds(100)) }
        }
        guard ready else { throw ValidationError("outboxctl console did not answer on port \(port)") }
        let group = errorTexts[0].addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
        let requests = [
            ("overview page (parked groups, failing groups, backlog)", "/"),
            ("GET /api/groups?status=parked", "/api/groups?status=parked"),
            ("GET /api/events?status=parked&lastError=… (50)", "/api/events?status=parked&lastError=\(group)"),
            ("GET /api/status", "/api/status"),
        ]
        var rows: [(String, Double, Double, Int)] = []
        for (name, path) in requests {
            _ = try await get(base + path)
            var times: [Double] = []
            var bytes = 0
            for _ in 0..<rounds {
                let started = ContinuousClock.now
                bytes = try await get(base + path)
                times.append((ContinuousClock.now - started).seconds * 1000)
            }
            times.sort()
            rows.append((name, times[times.count / 2], times[times.count - 1], bytes))
        }
        _ = try await pool.withConnection { try $0.runCommand(["dropDatabase": 1]) }
        return ConsoleTimes(rows: rows)
    }

    /// The body's size; throws unless the answer is 200.
    private func get(_ url: String) async throws -> Int {
        var request = URLRequest(url: URL(string: url)!)
        request.timeoutInterval = 60
        let (data, response) = try await URLSession.shared.data(for: request)
        guard (response as? HTTPURLResponse)?.statusCode == 200 else {
            throw ValidationError("\(url): \((response as? HTTPURLResponse)?.statusCode ?? 0)")
        }
        return data.count
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
func freeLoopbackPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}
