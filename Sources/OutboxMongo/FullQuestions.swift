extension MongoOutboxStore {
    /// When a question that some servers answer by reading the whole collection is asked, of a
    /// store's turns (its sweeps, or its looks): once the relay has caught up (its last fetch
    /// found less than it asked for), at once the first time and then every `every`th turn; under
    /// a backlog, every `10 × every`th. So a relay draining a backlog at its start does not hold
    /// the store with them, and nothing stays unseen for ever.
    struct FullQuestions: Sendable {
        let every: Int
        var turns = 0
        var lastFull: Int?

        init(every: Int) { self.every = every }

        mutating func nextIsFull(caughtUp: Bool) -> Bool {
            turns += 1
            let since = turns - (lastFull ?? 0)
            let full = since >= (caughtUp ? (lastFull == nil ? 1 : every) : 10 * every)
            if full { lastFull = turns }
            return full
        }
    }
}
