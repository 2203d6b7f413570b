import ArgumentParser
import Foundation
import OutboxMongo
import Synchronization

/// Issue 26's choice between one change stream per source (what the relay opens) and one
/// cluster-wide stream filtered by collection name, by what each costs the store.
extension Bench {
    /// How a run of `streamCost` watches its outboxes.
    enum StreamLayout: String {
        case none = "no stream"
        case perSource = "a stream per source"
        case clusterWide = "one cluster-wide"
    }

    struct StreamCost {
        /// The store's CPU time per second of the run, in milliseconds.
        var storeMillisPerSecond: Double
        var changesSeen: Int
        var written: Int
    }

    /// Creates `sources` outboxes (`bench_streams_<i>.outbox`), opens the streams of `layout`,
    /// each on a thread of its own and asking again as soon as an ask returns (as for a relay
    /// that waits for work), and inserts `rate` events a second round robin into the outboxes for
    /// `seconds`. Returns the store's CPU time over that window, read from `/proc` for the pid in
    /// `storePidFile`.
    func streamCost(layout: StreamLayout, sources: Int, rate: Int, seconds: Int, storePidFile: String) async throws -> StreamCost {
        let pools = try (0..<sources).map { try database("bench_streams_\($0)") }
        for pool in pools {
            try await pool.withConnection { connection in
                try connection.collection("outbox").insertOne(["type": "Created"])
                try connection.collection("outbox").deleteMany([:])
            }
        }
        let streams: [ChangeStreamHint.Stream]
        switch layout {
        case .none: streams = []
        case .perSource: streams = try pools.map { try ChangeStreamHint.Stream(pool: $0, scope: .collection("outbox")) }
        case .clusterWide: streams = [try ChangeStreamHint.Stream(pool: pools[0], scope: .everyDatabase(collection: "outbox"))]
        }
        let watching = Watching()
        let finished = DispatchGroup()
        for stream in streams {
            finished.enter()
            Thread {
                while !watching.stop.load(ordering: .relaxed) {
                    guard let changes = try? stream.nextDatabases(maxAwait: .milliseconds(500)).count else { break }
                    watching.seen.add(changes, ordering: .relaxed)
                }
                stream.close()
                finished.leave()
            }.start()
        }
        // Streams open and asking before the window starts.
        try await Task.sleep(for: .seconds(1))
        let cpuBefore = try Self.cpuSeconds(pidFile: storePidFile)
        let started = ContinuousClock.now
        var written = 0
        if rate > 0 {
            let interval = Duration.seconds(1) / rate
            while ContinuousClock.now - started < .seconds(seconds) {
                let (pool, n) = (pools[written % sources], Int64(written))
                try await pool.withConnection { try $0.collection("outbox").insertOne(["type": "Created", "n": .int64(n)]) }
                written += 1
                try await Task.sleep(until: started + interval * written)
            }
        } else {
            try await Task.sleep(for: .seconds(seconds))
        }
        // The last changes reach their streams within an ask.
        try await Task.sleep(for: .seconds(1))
        let cpu = try Self.cpuSeconds(pidFile: storePidFile) - cpuBefore
        let elapsed = (ContinuousClock.now - started) / .seconds(1)
        watching.stop.store(true, ordering: .relaxed)
        await withCheckedContinuation { continuation in finished.notify(queue: .global()) { continuation.resume() } }
        return StreamCost(storeMillisPerSecond: cpu * 1000 / elapsed, changesSeen: watching.seen.load(ordering: .relaxed), written: written)
    }

    /// What the streams' threads share with the run.
    private final class Watching: Sendable {
        let stop = Atomic<Bool>(false)
        let seen = Atomic<Int>(0)
    }

    /// User and system CPU seconds of the process whose pid `pidFile` holds.
    static func cpuSeconds(pidFile: String) throws -> Double {
        guard let pid = try? String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
            let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { throw ValidationError("cannot read the store's CPU time (pid file \(pidFile))") }
        // After the command name: state is field 3, utime and stime are fields 14 and 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else {
            throw ValidationError("cannot parse /proc/\(pid)/stat")
        }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}
