import Foundation
import Outbox

/// Partition leases and relay heartbeats in MongoDB.
///
/// `outbox_leases`: one document per partition `{_id: partition, owner, epoch, expiresAt}`.
/// `outbox_relays`: one heartbeat document per running relay `{_id: owner, expiresAt}`.
/// Every expiry is computed and compared with `$$NOW`, the database's clock. A lease is taken with
/// a compare-and-set on the epoch it was seen with, and taking it increments the epoch: the
/// fencing token that guards every write the owner makes to the partition's events (each write
/// raises the event's `fence` to the writer's epoch and requires it not to be higher already).
public final class MongoLeaseStore: LeaseStore {
    public static let leasesCollection = "outbox_leases"
    public static let relaysCollection = "outbox_relays"

    private let pool: MongoClientPool
    public let partitions: Int

    public init(pool: MongoClientPool, partitions: Int = OutboxSchema.defaultPartitions) {
        self.pool = pool
        self.partitions = partitions
    }

    /// How many partitions the outbox is set up for: the lease documents there are (nil before
    /// the first relay made them). Every relay must use this count; `outboxctl repartition`
    /// changes it.
    public func configuredPartitions() async throws -> Int? {
        let count = try await pool.withConnection { try $0.collection(Self.leasesCollection).countDocuments() }
        return count == 0 ? nil : count
    }

    /// Creates the lease documents that do not exist yet; idempotent.
    public func ensurePartitions() async throws {
        let documents: [Document] = (0..<partitions).map {
            ["_id": .int32(Int32($0)), "owner": .null, "epoch": .int64(0), "expiresAt": .datetime(0)]
        }
        try await pool.withConnection { connection in
            do {
                try connection.collection(Self.leasesCollection).insertMany(documents, ordered: false)
            } catch let error as MongoError where error.isDuplicateKey {
                // Some or all existed already; the others were inserted (unordered insert).
            }
        }
    }

    static func expiresIn(_ ttl: Duration) -> BSON { ["$add": ["$$NOW", .int64(ttl.milliseconds)]] }
    // Expiry compares milliseconds since the epoch of both dates (`$toLong`, MongoDB ≥ 4.0): the
    // same meaning as comparing the dates, and it also holds on servers whose date comparison
    // against `$$NOW` is unreliable (seen on SecantusDB, where it is false both ways).
    static let expired: BSON = ["$lt": [["$toLong": "$expiresAt"], ["$toLong": "$$NOW"]]]
    /// True for a lease or heartbeat that has not run out (an `$expr`).
    public static let live: BSON = ["$gt": [["$toLong": "$expiresAt"], ["$toLong": "$$NOW"]]]

    public func round(owner: String, held: [PartitionLease], release: [PartitionLease], want: Int, ttl: Duration) async throws -> LeaseRound {
        let total = partitions
        return try await pool.withConnection { connection in
            let relays = connection.collection(Self.relaysCollection)
            let leases = connection.collection(Self.leasesCollection)
            // Renewal first: on a busy store every command of the round waits its turn, and the
            // leases run out one TTL after the last renewal, not after the round.
            var kept: [PartitionLease] = []
            let releasing = Set(release.map(\.partition))
            let renewing = held.filter { !releasing.contains($0.partition) }
            if !renewing.isEmpty {
                // One update renews them all; owner and epoch unchanged means nobody took a lease
                // over, even if it ran out meanwhile. One read tells which are still ours.
                let clauses: [BSON] = renewing.map { ["_id": .int32(Int32($0.partition)), "epoch": .int64($0.epoch)] }
                try leases.updateMany(["owner": .string(owner), "$or": .array(clauses)], pipeline: [["$set": ["expiresAt": Self.expiresIn(ttl)]]])
                let ours = try leases.find(["owner": .string(owner)], options: ["projection": ["epoch": 1]])
                let epochs = Dictionary(
                    ours.compactMap { d in d["_id"]?.intValue.map { ($0, Int64(d["epoch"]?.intValue ?? -1)) } }, uniquingKeysWith: max)
                kept = renewing.filter { epochs[$0.partition] == $0.epoch }
            }
            // A heartbeat outlives one missed round, so a slow round does not make the relay vanish.
            try relays.updateOne(["_id": .string(owner)], pipeline: [["$set": ["expiresAt": Self.expiresIn(ttl * 2)]]], upsert: true)
            // The live relays, this one included; its place among them by id decides which of
            // them hold one partition more (`LeaseBalancer`).
            let live = try relays.find(["$expr": Self.live], options: ["projection": ["_id": 1]]).compactMap { $0["_id"]?.stringValue }
            let active = live.count
            let rank = live.filter { $0 < owner }.count

            for lease in release {
                try leases.updateOne(
                    ["_id": .int32(Int32(lease.partition)), "owner": .string(owner), "epoch": .int64(lease.epoch)],
                    ["$set": ["owner": .null, "expiresAt": .datetime(0)]])
            }
            // Free, expired, or held under this relay's name by an earlier instance (a restart with
            // the same RELAY_ID): taking it bumps the epoch, which fences that instance out.
            // Free partitions are taken up to the relay's share; expired ones (their owner stalled or
            // died) are always taken, so none stays orphaned: the hand-back evens things out later.
            let keptPartitions = Set(kept.map(\.partition))
            let takeable: BSON = [["owner": .null], ["owner": .string(owner)], ["$expr": Self.expired]]
            let free = try leases.find(
                ["_id": ["$lt": .int32(Int32(total))], "$or": takeable], options: ["projection": ["epoch": 1, "owner": 1]])
            var freeTaken = 0
            for candidate in free.shuffled() {
                guard let partition = candidate["_id"]?.intValue, let epoch = candidate["epoch"]?.intValue,
                    !keptPartitions.contains(partition), !releasing.contains(partition)
                else { continue }
                let orphaned = candidate["owner"]?.stringValue.map { $0 != owner } ?? false
                if !orphaned {
                    guard freeTaken < want else { continue }
                    freeTaken += 1
                }
                let taken = try leases.findOneAndUpdate(
                    ["_id": .int32(Int32(partition)), "epoch": .int64(Int64(epoch)), "$or": takeable],
                    update: [["$set": ["owner": .string(owner), "epoch": ["$add": ["$epoch", 1]], "expiresAt": Self.expiresIn(ttl)]]])
                if let taken, let newEpoch = taken["epoch"]?.intValue {
                    kept.append(PartitionLease(partition: partition, epoch: Int64(newEpoch)))
                }
            }
            let heldByOthers = try leases.countDocuments(["owner": ["$nin": [.null, .string(owner)]], "$expr": Self.live])
            return LeaseRound(held: kept, activeRelays: active, heldByOthers: heldByOthers, rank: rank)
        }
    }

    public func resign(owner: String, leases: [PartitionLease]) async throws {
        try await pool.withConnection { connection in
            for lease in leases {
                try connection.collection(Self.leasesCollection).updateOne(
                    ["_id": .int32(Int32(lease.partition)), "owner": .string(owner), "epoch": .int64(lease.epoch)],
                    ["$set": ["owner": .null, "expiresAt": .datetime(0)]])
            }
            try connection.collection(Self.relaysCollection).deleteMany(["_id": .string(owner)])
        }
    }

    /// The lease documents as stored (for status displays and tests).
    public func snapshot() async throws -> [Document] {
        try await pool.withConnection { try $0.collection(Self.leasesCollection).find([:], options: ["sort": ["_id": 1]]) }
    }
}
