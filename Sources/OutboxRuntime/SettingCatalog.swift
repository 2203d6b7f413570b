import Outbox
import OutboxMongo

/// Every setting of the product's programs, in the order `docs/configuration.md` lists them.
public enum SettingCatalog {
    public static let links: [SettingDeclaration] = [
        .mongodbURI, .mongodbURIFile, .mongodbPasswordFile, .amqpURL, .amqpURLFile, .amqpPasswordFile,
        .amqpTLSCAFile, .amqpTLSCertFile, .amqpTLSKeyFile, .amqpTLSVerifyPeer, .amqpTLSVerifyHostname,
        .database, .logLevel, .collection, .otelTracesExporter,
    ]
    public static let relay: [SettingDeclaration] = [
        .relaySources, .relaySourcesFile, .relayDiscoverCollection, .relayDiscoverDatabases, .relayDiscoverInterval, .relayExchange,
        .relayExchangeMap,
        .relayHeaderFields, .relayRoutingKeyTemplate, .relayBatchSize, .relayBatchMaxBytes, .relayMaxInFlight,
        .relayPollInterval,
        .relayConfirmTimeout, .relayMaxAttempts, .relayParkTransientAfter, .relayRetryBaseDelay, .relayRetryMaxDelay,
        .relayMaxBodyBytes, .relayBodyFormat, .relayBodyFormatByExchange, .relayDecimalFormat, .relayCloudEventsSource,
        .partitions, .relayLeaseTTL, .relayLivenessTimeout, .relayID, .relayChangeStream, .relayHTTPAddress,
        .relayDeliveredRetention, .relayMetricsInterval, .metricsEventTypes, .relayShutdownTimeout,
    ]
    public static let consumers: [SettingDeclaration] = [
        .consumerExchange, .consumerQueue, .consumerQueueType, .consumerBatchSize, .consumerBatchWait, .consumerPrefetch,
        .consumerMaxAttempts, .consumerInboxRetention, .consumerHTTPAddress, .consumerMetricsInterval,
    ]
    public static let console: [SettingDeclaration] = [
        .consoleListen, .consoleTokensFile, .consoleTLSCertFile, .consoleTLSKeyFile, .consoleSecureCookies, .consoleQueues,
    ]
    public static let all = links + relay + consumers + console
}

// MARK: Links, database and logging: every program

extension SettingDeclaration {
    public static let mongodbURI = SettingDeclaration(
        env: "MONGODB_URI", flag: "mongodb-uri", default: nil, shown: "required, unless MONGODB_URI_FILE is set", usedBy: "all", secret: true,
        example:
            "mongodb://outbox@mongo1:27017,mongo2:27017,mongo3:27017/?replicaSet=rs0&tls=true&tlsCAFile=/etc/outbox/ca.pem&authSource=admin&authMechanism=SCRAM-SHA-256",
        "MongoDB connection string; must reach a replica set. TLS and authentication go in the URI: "
            + "tls=true&tlsCAFile=...&authSource=admin&authMechanism=SCRAM-SHA-256. Or a file named by MONGODB_URI_FILE; "
            + "the password may come from a file named by MONGODB_PASSWORD_FILE")
    public static let mongodbURIFile = SettingDeclaration(
        env: "MONGODB_URI_FILE", flag: nil, kind: .file, default: nil, usedBy: "all",
        "A file holding the MongoDB connection string (a container secret); not together with MONGODB_URI")
    public static let mongodbPasswordFile = SettingDeclaration(
        env: "MONGODB_PASSWORD_FILE", flag: nil, kind: .file, default: nil, usedBy: "all", example: "/etc/outbox/secrets/mongodb_password",
        "A file holding the MongoDB password; the URI then names only the user")
    public static let amqpURL = SettingDeclaration(
        env: "AMQP_URL", flag: "amqp-url", default: nil, shown: "required, unless AMQP_URL_FILE is set",
        usedBy: "relay, consumers, outboxctl replay and dlq", secret: true,
        example: "amqps://outbox@rabbit1:5671,rabbit2:5671,rabbit3:5671/%2f?heartbeat=30&connection_timeout=5000",
        "RabbitMQ URL amqp[s]://user:pass@host[:port][,host2[:port]...]/vhost[?heartbeat=S&connection_timeout=MS]; "
            + "several hosts are tried in turn. Or a file named by AMQP_URL_FILE; the password may come from a file named by "
            + "AMQP_PASSWORD_FILE. amqps:// uses TLS: AMQP_TLS_CA_FILE, AMQP_TLS_CERT_FILE and AMQP_TLS_KEY_FILE (client "
            + "certificate), AMQP_TLS_VERIFY_PEER and AMQP_TLS_VERIFY_HOSTNAME, or the URL's cacertfile, certfile, keyfile, verify")
    public static let amqpURLFile = SettingDeclaration(
        env: "AMQP_URL_FILE", flag: nil, kind: .file, default: nil, usedBy: "as AMQP_URL",
        "A file holding the RabbitMQ URL (a container secret); not together with AMQP_URL or --amqp-url")
    public static let amqpPasswordFile = SettingDeclaration(
        env: "AMQP_PASSWORD_FILE", flag: nil, kind: .file, default: nil, usedBy: "as AMQP_URL", example: "/etc/outbox/secrets/amqp_password",
        "A file holding the RabbitMQ password; the URL then names only the user")
    public static let amqpTLSCAFile = SettingDeclaration(
        env: "AMQP_TLS_CA_FILE", flag: nil, kind: .file, default: nil, shown: "the system's CA store", usedBy: "as AMQP_URL",
        example: "/etc/outbox/ca.pem",
        "amqps:// only: CA certificates (PEM) the broker's certificate must chain to; as the URL's cacertfile")
    public static let amqpTLSCertFile = SettingDeclaration(
        env: "AMQP_TLS_CERT_FILE", flag: nil, kind: .file, default: nil, usedBy: "as AMQP_URL",
        "amqps:// only: client certificate (PEM), with AMQP_TLS_KEY_FILE; as the URL's certfile")
    public static let amqpTLSKeyFile = SettingDeclaration(
        env: "AMQP_TLS_KEY_FILE", flag: nil, kind: .file, default: nil, usedBy: "as AMQP_URL",
        "amqps:// only: the client certificate's unencrypted key (PEM), with AMQP_TLS_CERT_FILE; as the URL's keyfile")
    public static let amqpTLSVerifyPeer = SettingDeclaration(
        env: "AMQP_TLS_VERIFY_PEER", flag: nil, kind: .toggle, default: "true", usedBy: "as AMQP_URL",
        "amqps:// only: verify the broker's certificate; turning it off is logged as a warning")
    public static let amqpTLSVerifyHostname = SettingDeclaration(
        env: "AMQP_TLS_VERIFY_HOSTNAME", flag: nil, kind: .toggle, default: "true", usedBy: "as AMQP_URL",
        "amqps:// only: check the broker's host name against its certificate; only with AMQP_TLS_VERIFY_PEER")
    public static let database = SettingDeclaration(
        env: "OUTBOX_DATABASE", flag: "database", default: "outbox", usedBy: "all", example: "shop",
        "Database holding the business, outbox and inbox collections")
    public static let logLevel = SettingDeclaration(
        env: "LOG_LEVEL", flag: "log-level", default: "info", usedBy: "all",
        "Log level: trace, debug, info, notice, warning, error")
    public static let collection = SettingDeclaration(
        env: "OUTBOX_COLLECTION", flag: "collection", default: OutboxSchema.defaultCollection, usedBy: "relay, outboxctl",
        "Outbox collection; may be an existing event collection, whose delivered events stay as its history")
    public static let otelTracesExporter = SettingDeclaration(
        env: "OTEL_TRACES_EXPORTER", flag: nil, default: nil, shown: "unset: tracing off", usedBy: "relay, consumers", example: "otlp",
        "otlp turns OpenTelemetry tracing on: a span per publish (relay) and per message applied (consumers), exported to "
            + "OTEL_EXPORTER_OTLP_ENDPOINT over OTLP (OTEL_EXPORTER_OTLP_PROTOCOL http/protobuf or grpc); OTEL_SERVICE_NAME, "
            + "OTEL_TRACES_SAMPLER (parentbased_always_off: spans only for events a writer traced) and OTEL_BSP_* as the "
            + "OpenTelemetry specification says")
    public static let partitions = SettingDeclaration(
        env: "OUTBOX_PARTITIONS", flag: "partitions", kind: .integer(1...1024), default: "\(OutboxSchema.defaultPartitions)", usedBy: "relay",
        "Partitions of the outbox; the same for every relay, and a relay started with another count than the outbox's "
            + "refuses to start (change it with outboxctl repartition)")
}

// MARK: The relay

extension SettingDeclaration {
    public static let relayExchange = SettingDeclaration(
        env: "RELAY_EXCHANGE", flag: "exchange", default: "orders", usedBy: "relay", "Exchange of events whose document names none")
    public static let relayExchangeMap = SettingDeclaration(
        env: "RELAY_EXCHANGE_MAP", flag: "exchange-map", default: "", shown: "none", usedBy: "relay",
        "Exchanges by event type or aggregate type for events whose document names none, e.g. "
            + "'Order=orders,InventoryReserved=inventory'; a type wins over an aggregate type")
    public static let relayHeaderFields = SettingDeclaration(
        env: "RELAY_HEADER_FIELDS", flag: "header-fields", default: "", shown: "none", usedBy: "relay", example: "data.tenant=x-tenant",
        "Document fields sent as message headers, e.g. 'data.tenant=x-tenant,aggregateType=x-kind', keeping the field's type; "
            + "a header the document's own headers set wins; a document without the field is parked naming it")
    public static let relayRoutingKeyTemplate = SettingDeclaration(
        env: "RELAY_ROUTING_KEY_TEMPLATE", flag: "routing-key-template", default: "", shown: "the dotted event type", usedBy: "relay",
        example: "order.{data.region}.created",
        "Routing key of events whose document names none, from their fields, e.g. '{aggregateType}.{data.region}.{type}' (strings, "
            + "integers, booleans); a document without a field it names is parked naming it")
    public static let relayBatchSize = SettingDeclaration(
        env: "RELAY_BATCH_SIZE", flag: "batch-size", kind: .integer(1...10_000), default: "500", usedBy: "relay",
        "Events per batch, at most: fewer while a pass takes longer than a third of the lease TTL, so a batch is published and marked "
            + "while its leases hold")
    public static let relayBatchMaxBytes = SettingDeclaration(
        env: "RELAY_BATCH_MAX_BYTES", flag: "batch-max-bytes", kind: .integer(1024...(1 << 30)),
        default: "\(RelayConfiguration.defaultBatchMaxBytes)", usedBy: "relay",
        "Message bytes per batch (and so in flight); the fetch asks for as many events as fit at the size seen last, "
            + "and an event larger than it goes out alone")
    public static let relayMaxInFlight = SettingDeclaration(
        env: "RELAY_MAX_IN_FLIGHT", flag: "max-in-flight", kind: .integer(1...10_000), default: "1000", usedBy: "relay",
        "Unconfirmed publishes at once")
    public static let relayPollInterval = SettingDeclaration(
        env: "RELAY_POLL_INTERVAL", flag: "poll-interval", kind: .duration(allowZero: false), default: "200ms", usedBy: "relay",
        "Wait between polls when nothing is due, e.g. 200ms")
    public static let relayConfirmTimeout = SettingDeclaration(
        env: "RELAY_CONFIRM_TIMEOUT", flag: "confirm-timeout", kind: .duration(allowZero: false), default: "10s", usedBy: "relay",
        "How long to wait for broker confirms of a batch; at most the lease TTL (a longer one is lowered to it, with a notice)")
    public static let relayMaxAttempts = SettingDeclaration(
        env: "RELAY_MAX_ATTEMPTS", flag: "max-attempts", kind: .integer(1...1000), default: "10", usedBy: "relay",
        "Delivery attempts before an unroutable (returned) event is parked; nacks and confirm timeouts never park")
    public static let relayParkTransientAfter = SettingDeclaration(
        env: "RELAY_PARK_TRANSIENT_AFTER", flag: "park-transient-after", kind: .durationOrOff, default: "off", usedBy: "relay",
        "Park an event that still fails for a reason time may fix (nack, confirm timeout) once it is this old, e.g. 6h; "
            + "off never parks them")
    public static let relayRetryBaseDelay = SettingDeclaration(
        env: "RELAY_RETRY_BASE_DELAY", flag: "retry-base-delay", kind: .duration(allowZero: true), default: "500ms", usedBy: "relay",
        "First retry delay; doubles per attempt, with jitter")
    public static let relayRetryMaxDelay = SettingDeclaration(
        env: "RELAY_RETRY_MAX_DELAY", flag: "retry-max-delay", kind: .duration(allowZero: false), default: "5m", usedBy: "relay",
        "Longest retry delay")
    public static let relayMaxBodyBytes = SettingDeclaration(
        env: "RELAY_MAX_BODY_BYTES", flag: "max-body-bytes", kind: .integer(1...(128 << 20)), default: "1048576", usedBy: "relay",
        "Largest message body in bytes; larger events are parked")
    public static let relayBodyFormat = SettingDeclaration(
        env: "RELAY_BODY_FORMAT", flag: "body-format", default: BodyFormat.default.rawValue, usedBy: "relay",
        "Message body format: envelope, payload, cloudevents, cloudevents-binary or nestjs; an event's bodyFormat field overrides it")
    public static let relayBodyFormatByExchange = SettingDeclaration(
        env: "RELAY_BODY_FORMAT_BY_EXCHANGE", flag: "body-format-by-exchange", default: "", shown: "none", usedBy: "relay",
        "Body formats per exchange, e.g. orders=payload,inventory=cloudevents")
    public static let relayDecimalFormat = SettingDeclaration(
        env: "RELAY_DECIMAL_FORMAT", flag: "decimal-format", default: DecimalFormat.default.rawValue, usedBy: "relay",
        "Decimal128 amounts as JSON strings (\"44.99\") or exact number literals (44.99): string or number")
    public static let relayCloudEventsSource = SettingDeclaration(
        env: "RELAY_CLOUDEVENTS_SOURCE", flag: "cloudevents-source", default: WireFormat.defaultCloudEventsSource, usedBy: "relay",
        "The CloudEvents source attribute")
    public static let relayLeaseTTL = SettingDeclaration(
        env: "RELAY_LEASE_TTL", flag: "lease-ttl", kind: .duration(allowZero: false), default: "10s", usedBy: "relay",
        "Lease time of a partition, at least 300ms; another relay takes over after it")
    public static let relayLivenessTimeout = SettingDeclaration(
        env: "RELAY_LIVENESS_TIMEOUT", flag: "liveness-timeout", kind: .duration(allowZero: false), default: "60s", usedBy: "relay",
        "/health/live fails once the relay loop has completed no pass (delivered, idle or failed) for this long; "
            + "longer than the confirm timeout plus 5s")
    public static let relayID = SettingDeclaration(
        env: "RELAY_ID", flag: "relay-id", default: nil, shown: "host-pid-random", usedBy: "relay", "This relay's name in the lease table")
    public static let relaySources = SettingDeclaration(
        env: "OUTBOX_SOURCES", flag: "source", default: nil, shown: "unset: OUTBOX_DATABASE.OUTBOX_COLLECTION",
        usedBy: "relay, outboxctl", example: "orders.outbox,billing.outbox",
        "Outboxes this relay serves, database.collection each (the first dot splits), comma-separated or --source "
            + "repeated; at most one a database and 64 in all. Each has its own leases, loop, change stream and metrics "
            + "(label source); the other relay settings apply to every one")
    public static let relaySourcesFile = SettingDeclaration(
        env: "OUTBOX_SOURCES_FILE", flag: "sources-file", kind: .file, default: nil, shown: "unset: every source takes the relay's settings",
        usedBy: "relay", example: "/etc/outbox/sources.json",
        "JSON file of sources with settings of their own: {\"sources\": [{\"source\": \"orders.outbox\", \"exchange\": "
            + "\"orders\", \"bodyFormat\": \"cloudevents-binary\", \"partitions\": 32}]}; keys exchange, exchangeMap, headerFields, "
            + "routingKeyTemplate, bodyFormat, bodyFormatByExchange, decimalFormat, cloudEventsSource, partitions, each written "
            + "as its environment variable; what an entry leaves out, and every other source, takes the relay's settings")
    public static let relayDiscoverCollection = SettingDeclaration(
        env: "OUTBOX_DISCOVER_COLLECTION", flag: "discover-collection", default: nil, shown: "unset: no discovery", usedBy: "relay",
        example: "outbox",
        "Serve, beside OUTBOX_SOURCES, every database's collection of this name, looked for again every "
            + "OUTBOX_DISCOVER_INTERVAL: a new service's outbox is picked up without a redeploy")
    public static let relayDiscoverDatabases = SettingDeclaration(
        env: "OUTBOX_DISCOVER_DATABASES", flag: "discover-databases", default: "*", usedBy: "relay", example: "shop-*,!shop-test",
        "Databases discovery looks in: comma-separated name patterns (* any characters), !pattern excludes; admin, "
            + "config and local never")
    public static let relayDiscoverInterval = SettingDeclaration(
        env: "OUTBOX_DISCOVER_INTERVAL", flag: "discover-interval", kind: .duration(allowZero: false), default: "30s", usedBy: "relay",
        "How often discovery looks for new outboxes")
    public static let relayChangeStream = SettingDeclaration(
        env: "RELAY_CHANGE_STREAM", flag: "change-stream", kind: .toggle, default: "true", usedBy: "relay",
        "Watch the outbox with a change stream as a wake-up hint for low latency; polling stays the source of truth")
    public static let relayHTTPAddress = SettingDeclaration(
        env: "RELAY_HTTP_ADDRESS", flag: "http-address", default: "127.0.0.1:9400", usedBy: "relay", example: "0.0.0.0:9400",
        "Address of /metrics, /health/live and /health/ready, host:port; off for none")
    public static let relayDeliveredRetention = SettingDeclaration(
        env: "RELAY_DELIVERED_RETENTION", flag: "delivered-retention", kind: .durationOrOff, default: nil,
        shown: "unset: the collection's retention is left as it is, and a new outbox keeps everything", usedBy: "relay",
        "Delete delivered events this long after delivery (a TTL index on deliveredAt that holds delivered events only), "
            + "e.g. 30d; off keeps them for ever")
    public static let relayMetricsInterval = SettingDeclaration(
        env: "RELAY_METRICS_INTERVAL", flag: "metrics-interval", kind: .duration(allowZero: false), default: "15s", usedBy: "relay",
        "How often the backlog gauges are sampled; each sample counts the backlog, and N live relays take turns "
            + "(each samples every N intervals); a sample that took more than 2 % of that spaces the next one out")
    public static let metricsEventTypes = SettingDeclaration(
        env: "METRICS_EVENT_TYPES", flag: "metrics-event-types", kind: .integer(0...1000), default: "\(EventTypeLabels.defaultLimit)",
        usedBy: "relay, consumers",
        "Event types that get a type label of their own on outbox_delivery_lag_seconds and outbox_consumer_lag_seconds: "
            + "the first N a process sees; later ones share the label other")
    public static let relayShutdownTimeout = SettingDeclaration(
        env: "RELAY_SHUTDOWN_TIMEOUT", flag: "shutdown-timeout", kind: .duration(allowZero: false), default: "30s", usedBy: "relay",
        "Longest graceful shutdown before exiting anyway")
}

// MARK: The consumers

extension SettingDeclaration {
    public static let consumerExchange = SettingDeclaration(
        env: "CONSUMER_EXCHANGE", flag: "exchange", default: "orders", usedBy: "consumers", "Exchange to consume from")
    public static let consumerQueue = SettingDeclaration(
        env: "CONSUMER_QUEUE", flag: "queue", default: nil, shown: "<consumer>.order-created", usedBy: "consumers", "Queue name")
    public static let consumerQueueType = SettingDeclaration(
        env: "CONSUMER_QUEUE_TYPE", flag: "queue-type", default: "quorum", usedBy: "consumers",
        "Type of the queue and its dead-letter queue: quorum (replicated, RabbitMQ's choice for data safety) or classic; "
            + "an existing queue keeps its type (docs/production-checklist.md says how to move one)")
    public static let consumerBatchSize = SettingDeclaration(
        env: "CONSUMER_BATCH_SIZE", flag: "batch-size", kind: .integer(1...1000), default: "32", usedBy: "consumers",
        "Most messages applied in one transaction and acked together; 1 applies them one by one")
    public static let consumerBatchWait = SettingDeclaration(
        env: "CONSUMER_BATCH_WAIT", flag: "batch-wait", kind: .duration(allowZero: true), default: "100ms", usedBy: "consumers",
        "How long a batch waits for more messages once it has one; bounds the latency batching adds to a lone message, "
            + "and under a steady trickle makes batches of more than one; 0 takes only what has arrived")
    public static let consumerPrefetch = SettingDeclaration(
        env: "CONSUMER_PREFETCH", flag: "prefetch", kind: .integer(1...1000), default: nil,
        shown: "twice the batch size, at least 32", usedBy: "consumers",
        "Unacknowledged messages in flight; at least the batch size")
    public static let consumerMaxAttempts = SettingDeclaration(
        env: "CONSUMER_MAX_ATTEMPTS", flag: "max-attempts", kind: .integer(1...100), default: "5", usedBy: "consumers",
        "Handler tries before a message is dead-lettered")
    public static let consumerInboxRetention = SettingDeclaration(
        env: "CONSUMER_INBOX_RETENTION", flag: "inbox-retention", kind: .duration(allowZero: false), default: "168h", usedBy: "consumers",
        "How long processed message ids are kept, e.g. 7d as 168h")
    public static let consumerHTTPAddress = SettingDeclaration(
        env: "CONSUMER_HTTP_ADDRESS", flag: "http-address", default: nil, shown: "127.0.0.1:9401 inventory, 9402 notification",
        usedBy: "consumers", "Address of /metrics, /health/live and /health/ready, host:port; off for none")
    public static let consumerMetricsInterval = SettingDeclaration(
        env: "CONSUMER_METRICS_INTERVAL", flag: "metrics-interval", kind: .duration(allowZero: false), default: "15s", usedBy: "consumers",
        "How often the dead-letter queue's depth is read for outbox_consumer_dead_letters")
}

// MARK: The operator console (outboxctl console)

extension SettingDeclaration {
    public static let consoleListen = SettingDeclaration(
        env: "OUTBOX_CONSOLE_LISTEN", flag: "listen", default: "127.0.0.1:9410", usedBy: "outboxctl console",
        "Address of the operator console (pages and /api), host:port")
    public static let consoleTokensFile = SettingDeclaration(
        env: "OUTBOX_CONSOLE_TOKENS_FILE", flag: "tokens-file", kind: .file, default: nil,
        shown: "required, unless --no-auth on a loopback address", usedBy: "outboxctl console", example: "/etc/outbox/secrets/console_tokens",
        "A file of the console's tokens, one role:token or role:name:token a line, role viewer (reads) or operator "
            + "(reads and acts); a token has at least 16 characters")
    public static let consoleTLSCertFile = SettingDeclaration(
        env: "OUTBOX_CONSOLE_TLS_CERT_FILE", flag: "tls-cert-file", kind: .file, default: nil, shown: "none: plain HTTP",
        usedBy: "outboxctl console", "A PEM certificate chain: the console serves HTTPS (with OUTBOX_CONSOLE_TLS_KEY_FILE) and its cookie is Secure")
    public static let consoleTLSKeyFile = SettingDeclaration(
        env: "OUTBOX_CONSOLE_TLS_KEY_FILE", flag: "tls-key-file", kind: .file, default: nil, usedBy: "outboxctl console",
        "The PEM private key of OUTBOX_CONSOLE_TLS_CERT_FILE")
    public static let consoleSecureCookies = SettingDeclaration(
        env: "OUTBOX_CONSOLE_SECURE_COOKIES", flag: "secure-cookies", kind: .toggle, default: "false", usedBy: "outboxctl console",
        "Mark the console's session cookie Secure when a TLS-terminating proxy serves it over HTTPS (with the console's own TLS it is)")
    public static let consoleQueues = SettingDeclaration(
        env: "OUTBOX_CONSOLE_QUEUES", flag: "queues", default: nil, shown: "none", usedBy: "outboxctl console",
        example: "inventory.order-created,notification.order-created",
        "Consumers' queues, comma-separated, whose dead letters (in <queue>.dlq) the console groups by reason and may requeue "
            + "or purge; needs AMQP_URL")
}
