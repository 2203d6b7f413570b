import ArgumentParser
import Foundation
import Logging
import Outbox
import OutboxAMQP
import OutboxMongo
import OutboxOps
import OutboxRuntime

func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { column in ([header[column]] + rows.map { $0[column] }).map(\.count).max() ?? 0 }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }.joined(separator: "  ")
            .trimmingCharacters(in: .whitespaces)
    }
    print(line(header))
    for row in rows { print(line(row)) }
}

func printJSON(_ value: BSON) { print(ExtendedJSON.render(value)) }

func age(_ date: Date?) -> String {
    guard let date else { return "-" }
    let seconds = Int(Date().timeIntervalSince(date))
    switch seconds {
    case ..<120: return "\(seconds)s"
    case ..<7200: return "\(seconds / 60)m"
    default: return "\(seconds / 3600)h"
    }
}

/// How long until `date`, as `age` says how long ago ("now" once it has passed).
func timeUntil(_ date: Date?) -> String {
    guard let date else { return "-" }
    let seconds = Int(date.timeIntervalSince(Date()).rounded(.up))
    switch seconds {
    case ..<1: return "now"
    case ..<120: return "\(seconds)s"
    case ..<7200: return "\(seconds / 60)m"
    default: return "\(seconds / 3600)h"
    }
}

/// Scheduled events: when each is due.
func scheduledRows(_ documents: [Document]) -> [[String]] {
    documents.map { d in
        [
            d["_id"].flatMap(OutboxDocument.messageId(of:)) ?? ExtendedJSON.render(d["_id"] ?? .null), d["type"]?.stringValue ?? "-",
            d["aggregateId"]?.stringValue ?? "-", d["deliverAt"].map { ExtendedJSON.render($0) } ?? "-", timeUntil(d["dueAt"]?.dateValue),
        ]
    }
}

let scheduledHeader = ["ID", "TYPE", "AGGREGATE", "DELIVER AT", "DUE IN"]

func eventRows(_ documents: [Document]) -> [[String]] {
    documents.map { d in
        [
            d["_id"].flatMap(OutboxDocument.messageId(of:)) ?? ExtendedJSON.render(d["_id"] ?? .null), d["status"]?.stringValue ?? "new",
            d["type"]?.stringValue ?? "-",
            d["aggregateId"]?.stringValue ?? "-", d["aggregateVersion"].map { ExtendedJSON.render($0) } ?? "-", age(d["timestamp"]?.dateValue),
            d["attempts"].map { ExtendedJSON.render($0) } ?? "0", String((d["lastError"]?.stringValue ?? "").prefix(60)),
        ]
    }
}

let eventHeader = ["ID", "STATUS", "TYPE", "AGGREGATE", "VERSION", "AGE", "ATTEMPTS", "LAST ERROR"]

func report(_ result: ChangeResult, verb: String, json: Bool) {
    if json {
        printJSON([
            "matched": .int64(Int64(result.matched)), "changed": .int64(Int64(result.changed)), "dryRun": .bool(result.dryRun),
            "ids": .array(result.ids.map { .string($0) }),
        ])
    } else if result.dryRun {
        print("dry run: \(result.matched) event(s) would be \(verb); nothing changed")
        for id in result.ids.prefix(20) { print("  \(id)") }
        if result.ids.count > 20 { print("  … \(result.ids.count - 20) more") }
    } else {
        print("\(result.changed) of \(result.matched) matching event(s) \(verb)")
    }
}
