import OutboxMongo
import Foundation
let pool = try MongoClientPool(MongoConfiguration(uri: ProcessInfo.processInfo.environment["MONGODB_URI"]!, database: "smoke"))
try await pool.ping()
print("ping ok")
let id = ObjectId()
try await pool.withConnection { c in
  try c.collection("t").drop()
  try c.collection("t").insertOne(["_id": .objectId(id), "n": 1, "d": .decimal128(Decimal128("12.50")!), "when": .date(Date())])
}
let docs = try await pool.withConnection { try $0.collection("t").find() }
print(docs)
do {
  try await pool.withTransaction { c in
    try c.collection("t").insertOne(["n": 2])
    throw MongoError(operation: "test", message: "boom")
  }
} catch { print("tx error", error) }
struct Boom: Error {}
do {
  try await pool.withTransaction { c in
    try c.collection("t").insertOne(["n": 3])
    throw Boom()
  }
} catch { print("tx error", error) }
try await pool.withTransaction { c in try c.collection("t").insertOne(["n": 4]) }
print(try await pool.withConnection { try $0.collection("t").countDocuments() })
let r = try await pool.withConnection { try $0.collection("t").updateMany(["n": ["$gte": 1]], pipeline: [["$set": ["at": "$$NOW"]]]) }
print(r)
print(try await pool.withConnection { try $0.collection("t").find([:], options: ["sort": ["n": -1], "limit": 1]) })
