// swift-tools-version:6.1
import PackageDescription

// The product is under Sources/: the relay, outboxctl and the libraries a service or consumer
// links. Benchmarks/ holds the benchmark behind ops/bench. The reference application that uses the
// product (an order service, two consumers, a demo, and writers in other languages) is a package of
// its own in Examples/, which depends on this one by path.
let package = Package(
    name: "outbox",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "outbox-relay", targets: ["outbox-relay"]),
        .executable(name: "outboxctl", targets: ["outboxctl"]),
        .library(name: "Outbox", targets: ["Outbox"]),
        .library(name: "OutboxMongo", targets: ["OutboxMongo"]),
        .library(name: "OutboxAMQP", targets: ["OutboxAMQP"]),
        .library(name: "OutboxConsumer", targets: ["OutboxConsumer"]),
        .library(name: "OutboxRuntime", targets: ["OutboxRuntime"]),
        .library(name: "OutboxTracing", targets: ["OutboxTracing"]),
        .executable(name: "outbox-bench", targets: ["outbox-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        // OTLP/gRPC for the tracing exporter (HTTP/2 over SwiftNIO).
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
    ],
    targets: [
        // MARK: The product (Sources/)

        // C libraries, one system-library target each (pkg-config + module map + shim header).
        .systemLibrary(
            name: "CMongoC",
            pkgConfig: "libmongoc-1.0",
            providers: [.apt(["libmongoc-dev", "libbson-dev"])]
        ),
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev", "libssl-dev"])]
        ),

        // Pure Swift core: event model, relay engine, retry policy, configuration errors. No C imports
        // and nothing of the links (AMQP endpoints live in OutboxAMQP, MongoDB URIs in OutboxMongo).
        .target(
            name: "Outbox",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ]
        ),
        .target(
            name: "OutboxMongo",
            dependencies: [
                "CMongoC", "Outbox",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "OutboxAMQP",
            dependencies: [
                "CRabbitMQ", "Outbox",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Idempotent consumers: inbox + effect in one transaction, ack after commit, dead-lettering.
        .target(
            name: "OutboxConsumer",
            dependencies: [
                "Outbox", "OutboxMongo", "OutboxAMQP",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // What the executables share: settings from flags or environment, logging, signals.
        .target(
            name: "OutboxRuntime",
            dependencies: [
                "Outbox", "OutboxMongo", "OutboxAMQP", "OutboxConsumer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // OpenTelemetry spans exported over OTLP (HTTP/protobuf or gRPC), for the programs that make
        // spans (not outboxctl).
        .target(
            name: "OutboxTracing",
            dependencies: [
                "Outbox", "OutboxRuntime",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Operator actions on the outbox (status, init, retry, park, replay, purge), for outboxctl.
        .target(
            name: "OutboxOps",
            dependencies: ["Outbox", "OutboxMongo", "OutboxAMQP", .product(name: "Logging", package: "swift-log")]
        ),
        // The operator console: a JSON API and server-rendered pages with tokens, roles and an audit
        // trail, served by `outboxctl console`.
        .target(
            name: "OutboxConsole",
            dependencies: [
                "Outbox", "OutboxMongo", "OutboxOps",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "outbox-relay",
            dependencies: [
                "OutboxRuntime", "OutboxTracing", "Outbox", "OutboxMongo", "OutboxAMQP",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "outboxctl",
            dependencies: [
                "OutboxRuntime", "OutboxOps", "OutboxConsole", "Outbox", "OutboxMongo", "OutboxAMQP",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // MARK: Benchmark and tests

        .executableTarget(
            name: "outbox-bench",
            dependencies: [
                "OutboxRuntime", "Outbox", "OutboxMongo", "OutboxAMQP",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/outbox-bench"
        ),
        // Unit tests: no servers.
        .testTarget(
            name: "OutboxTests",
            dependencies: ["Outbox", "OutboxMongo", "OutboxAMQP", "OutboxRuntime", "OutboxConsumer", "OutboxTracing", "OutboxConsole"]
        ),
        // Real SecantusDB and RabbitMQ (and, for foreign writers and consumers, real Node.js and Python clients).
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "Outbox", "OutboxMongo", "OutboxAMQP", "OutboxConsumer", "OutboxOps", "OutboxConsole",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ]
        ),
        // Kill and restart real processes and servers; run alone (ops/test runs them after the rest).
        .testTarget(
            name: "FaultTests",
            dependencies: [
                "Outbox", "OutboxMongo", "OutboxAMQP",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
