import Foundation
import Outbox
import OutboxMongo

/// What may differ between the sources of one relay: where events go, how their bodies are
/// written and how the outbox is partitioned.
public struct SourceSettings: Sendable {
    public var routing: EventRouting
    public var body: MessageBodyOptions
    public var partitions: Int
}

/// `OUTBOX_SOURCES_FILE`: sources with settings of their own, as JSON,
/// `{"sources": [{"source": "orders.outbox", "exchange": "orders", "partitions": 32}]}`. Each key is
/// written as its environment variable would be and parsed by the same code; what an entry leaves
/// out is the relay's. Errors name the file, the entry and the reason.
struct SourcesFile {
    struct Entry: Decodable {
        var source: String
        var exchange: String?
        var exchangeMap: String?
        var headerFields: String?
        var routingKeyTemplate: String?
        var bodyFormat: String?
        var bodyFormatByExchange: String?
        var decimalFormat: String?
        var cloudEventsSource: String?
        var partitions: Int?
    }

    struct Contents: Decodable {
        var sources: [Entry]
    }

    /// The sources of the file at `path`, in its order, with their settings; `options` are the
    /// relay's (an entry's keys take the place of its flags).
    static func read(_ path: String, options: RelayOptions, settings: Settings) throws -> [(OutboxSource, SourceSettings)] {
        let label = SettingDeclaration.relaySourcesFile.env
        let text = try settings.readFile(path, setting: label)
        let contents: Contents
        do {
            contents = try JSONDecoder().decode(Contents.self, from: Data(text.utf8))
        } catch let DecodingError.keyNotFound(key, context) {
            throw ConfigurationError(setting: label, reason: "\(path): \(Self.place(context.codingPath)) has no \"\(key.stringValue)\"")
        } catch let DecodingError.typeMismatch(_, context) {
            throw ConfigurationError(setting: label, reason: "\(path): \(Self.place(context.codingPath)) has the wrong type")
        } catch {
            throw ConfigurationError(setting: label, reason: "\(path) is not JSON of the form {\"sources\": [{\"source\": \"db.collection\", …}]}")
        }
        let listed = try OutboxSource.parseList(contents.sources.map(\.source).joined(separator: ","), setting: "\(label) (\(path))")
        return try zip(listed, contents.sources).map { source, entry in
            var own = options
            own.exchange = entry.exchange ?? options.exchange
            own.exchangeMap = entry.exchangeMap ?? options.exchangeMap
            own.headerFields = entry.headerFields ?? options.headerFields
            own.routingKeyTemplate = entry.routingKeyTemplate ?? options.routingKeyTemplate
            own.bodyFormat = entry.bodyFormat ?? options.bodyFormat
            own.bodyFormatByExchange = entry.bodyFormatByExchange ?? options.bodyFormatByExchange
            own.decimalFormat = entry.decimalFormat ?? options.decimalFormat
            own.cloudEventsSource = entry.cloudEventsSource ?? options.cloudEventsSource
            own.partitions = entry.partitions ?? options.partitions
            do {
                return (source, try own.sourceSettings(settings))
            } catch let error as ConfigurationError {
                throw ConfigurationError(setting: "\(label) (\(path), source \(source))", reason: "\(error.setting) \(error.reason)")
            }
        }
    }

    static func place(_ path: [any CodingKey]) -> String {
        path.isEmpty ? "the top level" : path.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
    }
}
