// swift-tools-version:6.0
import PackageDescription

// The reference application: an order service that writes each order and its OrderCreated event
// in one transaction, two idempotent consumers (inventory, notifications) and a demo that drives
// them. It uses the product as any service would, through its libraries, by path.
let package = Package(
    name: "outbox-examples",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "order-service", targets: ["order-service"]),
        .executable(name: "inventory-consumer", targets: ["inventory-consumer"]),
        .executable(name: "notification-consumer", targets: ["notification-consumer"]),
        .executable(name: "outbox-demo", targets: ["outbox-demo"]),
    ],
    dependencies: [
        .package(name: "outbox", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
    ],
    targets: [
        // The OrderCreated event as the example consumers read it.
        .target(
            name: "OrderEvents",
            dependencies: [.product(name: "Outbox", package: "outbox"), .product(name: "OutboxConsumer", package: "outbox")]
        ),
        // The order service's HTTP API and its transactional store.
        .target(
            name: "OrderService",
            dependencies: [
                .product(name: "Outbox", package: "outbox"),
                .product(name: "OutboxMongo", package: "outbox"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Reserves stock for each order and writes InventoryReserved or InventoryReservationFailed.
        .target(
            name: "Inventory",
            dependencies: [
                "OrderEvents",
                .product(name: "Outbox", package: "outbox"),
                .product(name: "OutboxMongo", package: "outbox"),
                .product(name: "OutboxConsumer", package: "outbox"),
            ]
        ),
        // Writes one confirmation per order.
        .target(
            name: "Notifications",
            dependencies: [
                "OrderEvents",
                .product(name: "Outbox", package: "outbox"),
                .product(name: "OutboxMongo", package: "outbox"),
                .product(name: "OutboxConsumer", package: "outbox"),
            ]
        ),
        .executableTarget(
            name: "order-service",
            dependencies: [
                "OrderService",
                .product(name: "OutboxRuntime", package: "outbox"),
                .product(name: "OutboxMongo", package: "outbox"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "inventory-consumer",
            dependencies: [
                .product(name: "OutboxTracing", package: "outbox"),
                "Inventory",
                .product(name: "OutboxRuntime", package: "outbox"),
                .product(name: "OutboxMongo", package: "outbox"),
                .product(name: "OutboxConsumer", package: "outbox"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "notification-consumer",
            dependencies: [
                .product(name: "OutboxTracing", package: "outbox"),
                "Notifications",
                .product(name: "OutboxRuntime", package: "outbox"),
                .product(name: "OutboxMongo", package: "outbox"),
                .product(name: "OutboxConsumer", package: "outbox"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "outbox-demo",
            dependencies: [
                "Inventory",
                .product(name: "OutboxRuntime", package: "outbox"),
                .product(name: "Outbox", package: "outbox"),
                .product(name: "OutboxMongo", package: "outbox"),
                .product(name: "OutboxAMQP", package: "outbox"),
                .product(name: "OutboxConsumer", package: "outbox"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The order service and both consumers on the real servers (and validation without them).
        .testTarget(
            name: "ExampleTests",
            dependencies: [
                "OrderService", "OrderEvents", "Inventory", "Notifications",
                .product(name: "Outbox", package: "outbox"),
                .product(name: "OutboxMongo", package: "outbox"),
                .product(name: "OutboxAMQP", package: "outbox"),
                .product(name: "OutboxConsumer", package: "outbox"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
