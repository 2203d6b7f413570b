import Foundation
import Outbox
import OutboxAMQP
import OutboxMongo
import OutboxRuntime
import Testing

/// TLS, several brokers, URL parameters, secrets from files and their redaction: everything that
/// is decided before a socket opens.
@Suite("Link settings")
struct LinkSettingsTests {
    @Test("amqps:// URLs: TLS on with verification, port 5671, parameters, several hosts")
    func amqpsURL() throws {
        let endpoint = try AMQPEndpoint(
            url: "amqps://relay:s%3Acret@b1.example:5681,b2.example,[::1]:5690/prod?heartbeat=10&connection_timeout=2500&cacertfile=%2Fetc%2Fca.pem")
        #expect(endpoint.addresses == [.init(host: "b1.example", port: 5681), .init(host: "b2.example", port: 5671), .init(host: "::1", port: 5690)])
        #expect(endpoint.tls == AMQPTLSOptions(caFile: "/etc/ca.pem", verifyPeer: true, verifyHostname: true))
        #expect(endpoint.password == "s:cret")
        #expect(endpoint.heartbeatSeconds == 10)
        #expect(endpoint.connectionTimeout == .milliseconds(2500))
        #expect(endpoint.description == "amqps://relay@b1.example:5681,b2.example:5671,[::1]:5690/prod")
        let configuration = AMQPConfiguration(endpoint: endpoint)
        #expect(configuration.heartbeatSeconds == 10 && configuration.connectTimeout == .milliseconds(2500))
        #expect(AMQPConfiguration(endpoint: AMQPEndpoint(host: "h")).heartbeatSeconds == 30)
        let unverified = try AMQPEndpoint(url: "amqps://h?verify=verify_none")
        #expect(unverified.tls?.verifyPeer == false && unverified.tls?.verifyHostname == false)
        #expect(try AMQPEndpoint(url: "amqp://u@h").password == "", "a user without a password has none")
    }

    /// A scratch folder with files, removed afterwards.
    final class Files {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("link-settings-\(UUID().uuidString)")
        init() throws { try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true) }
        deinit { try? FileManager.default.removeItem(at: directory) }
        func write(_ name: String, _ text: String) throws -> String {
            let url = directory.appendingPathComponent(name)
            try text.write(to: url, atomically: true, encoding: .utf8)
            return url.path
        }
    }

    @Test("secrets from files: URL files, password files, never both silently")
    func secretFiles() throws {
        let files = try Files()
        let urlFile = try files.write("amqp_url", "amqps://relay:from-url-file@h:5671/%2f\n")
        let passwordFile = try files.write("amqp_password", "from-password-file\n")
        let ca = try files.write("ca.pem", "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n")

        let fromFile = try Settings(environment: ["AMQP_URL_FILE": urlFile, "AMQP_TLS_CA_FILE": ca]).amqp(nil)
        #expect(fromFile.endpoint.password == "from-url-file", "the final line break is not part of the value")
        #expect(fromFile.endpoint.tls?.caFile == ca)

        let withPasswordFile = try Settings(environment: ["AMQP_URL": "amqp://relay@h/", "AMQP_PASSWORD_FILE": passwordFile]).amqp(nil)
        #expect(withPasswordFile.endpoint.password == "from-password-file")

        func reason(_ environment: [String: String], flag: String? = nil) -> ConfigurationError? {
            do {
                _ = try Settings(environment: environment).amqp(flag)
                return nil
            } catch {
                return error as? ConfigurationError
            }
        }
        #expect(reason(["AMQP_URL_FILE": urlFile, "AMQP_URL": "amqp://h"])?.setting == "AMQP_URL_FILE")
        #expect(reason(["AMQP_URL_FILE": urlFile], flag: "amqp://h")?.reason.contains("--amqp-url is set too") == true)
        #expect(reason(["AMQP_URL": "amqp://relay:inline@h/", "AMQP_PASSWORD_FILE": passwordFile])?.setting == "AMQP_PASSWORD_FILE")
        #expect(reason(["AMQP_URL": "amqp://h/", "AMQP_PASSWORD_FILE": passwordFile])?.setting == "AMQP_PASSWORD_FILE")
        #expect(reason(["AMQP_URL_FILE": files.directory.appendingPathComponent("missing").path])?.reason.contains("cannot read") == true)
        #expect(reason(["AMQP_URL_FILE": try files.write("empty", "\n")])?.reason.contains("is empty") == true)

        let mongo = try MongoOptions.parse([])
        let mongoPassword = try files.write("mongo_password", "p@ss:word/x\n")
        let uri = try mongo.resolvedURI(
            Settings(environment: ["MONGODB_URI": "mongodb://app@db1,db2/?replicaSet=rs0", "MONGODB_PASSWORD_FILE": mongoPassword]))
        #expect(uri == "mongodb://app:p%40ss%3Aword%2Fx@db1,db2/?replicaSet=rs0")
        #expect(MongoURI.password(in: uri) == "p@ss:word/x")
        let uriFile = try files.write("mongodb_uri", "mongodb://db/?replicaSet=rs0\n")
        #expect(try mongo.resolvedURI(Settings(environment: ["MONGODB_URI_FILE": uriFile])) == "mongodb://db/?replicaSet=rs0")
        #expect(throws: ConfigurationError.self) {
            try mongo.resolvedURI(Settings(environment: ["MONGODB_URI_FILE": uriFile, "MONGODB_URI": "mongodb://db"]))
        }
        #expect(throws: ConfigurationError.self, "the URI holds a password already") {
            try mongo.resolvedURI(Settings(environment: ["MONGODB_URI": "mongodb://app:inline@db", "MONGODB_PASSWORD_FILE": mongoPassword]))
        }
    }

    @Test("TLS settings: environment merges with the URL, conflicts and bad files are errors naming the setting")
    func tlsSettings() throws {
        let files = try Files()
        let ca = try files.write("ca.pem", "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n")
        let cert = try files.write("client.pem", "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n")
        let key = try files.write("client.key", "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n")
        let encrypted = try files.write("encrypted.key", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nxx\n-----END ENCRYPTED PRIVATE KEY-----\n")
        let url = "amqps://u:password@h/"

        let tls = try Settings(environment: [
            "AMQP_URL": url, "AMQP_TLS_CA_FILE": ca, "AMQP_TLS_CERT_FILE": cert, "AMQP_TLS_KEY_FILE": key,
        ]).amqp(nil).endpoint.tls
        #expect(tls == AMQPTLSOptions(caFile: ca, certFile: cert, keyFile: key))
        let off = try Settings(environment: ["AMQP_URL": url, "AMQP_TLS_VERIFY_PEER": "false", "AMQP_TLS_VERIFY_HOSTNAME": "false"]).amqp(nil)
        #expect(off.endpoint.tls?.verifyPeer == false && off.endpoint.tls?.verifyHostname == false)
        let hostnameOff = try Settings(environment: ["AMQP_URL": url, "AMQP_TLS_VERIFY_HOSTNAME": "false"]).amqp(nil)
        #expect(hostnameOff.endpoint.tls?.verifyPeer == true && hostnameOff.endpoint.tls?.verifyHostname == false)

        let cases: [([String: String], String)] = [
            (["AMQP_URL": "amqp://h/", "AMQP_TLS_CA_FILE": ca], "AMQP_TLS_CA_FILE"),
            (["AMQP_URL": "amqps://h/?cacertfile=/other.pem", "AMQP_TLS_CA_FILE": ca], "AMQP_TLS_CA_FILE"),
            (["AMQP_URL": url, "AMQP_TLS_CA_FILE": files.directory.appendingPathComponent("none.pem").path], "AMQP_TLS_CA_FILE"),
            (["AMQP_URL": url, "AMQP_TLS_CA_FILE": try files.write("not.pem", "hello")], "AMQP_TLS_CA_FILE"),
            (["AMQP_URL": url, "AMQP_TLS_CERT_FILE": cert], "AMQP_TLS_KEY_FILE"),
            (["AMQP_URL": url, "AMQP_TLS_CERT_FILE": cert, "AMQP_TLS_KEY_FILE": encrypted], "AMQP_TLS_KEY_FILE"),
            (["AMQP_URL": url, "AMQP_TLS_VERIFY_PEER": "false"], "AMQP_TLS_VERIFY_HOSTNAME"),
            (["AMQP_URL": "amqps://h/?verify=verify_none", "AMQP_TLS_VERIFY_PEER": "true"], "AMQP_TLS_VERIFY_PEER"),
            (["AMQP_URL": url, "AMQP_TLS_VERIFY_PEER": "perhaps"], "AMQP_TLS_VERIFY_PEER"),
        ]
        for (environment, setting) in cases {
            #expect(
                performing: { try Settings(environment: environment).amqp(nil) },
                throws: { error in
                    (error as? ConfigurationError)?.setting.hasPrefix(setting) == true
                })
        }
    }

    @Test("secrets are masked in free text and in URIs; short ones are not hunted in free text")
    func redaction() {
        Secrets.register("Sup3r$ecret/pw")
        #expect(Secrets.redact("login failed for Sup3r$ecret/pw") == "login failed for \(Secrets.mask)")
        #expect(Secrets.redact("uri mongodb://u:Sup3r%24ecret%2Fpw@h") == "uri mongodb://u:\(Secrets.mask)@h")
        Secrets.register("guest")
        #expect(Secrets.redact("amqp://guest@h") == "amqp://guest@h")
        #expect(
            Secrets.displayURI("mongodb://app:anything@db1:27017,db2/?tls=true&tlsCertificateKeyFilePassword=kp&w=majority")
                == "mongodb://app@db1:27017,db2/?tls=true&tlsCertificateKeyFilePassword=\(Secrets.mask)&w=majority")
        #expect(Secrets.displayURI("mongodb://app:anything@db1/?replicaSet=rs0", query: false) == "mongodb://app@db1")
        #expect(Secrets.displayURI("mongodb://db1/x") == "mongodb://db1/x")
    }

    @Test("consumer queue type: quorum by default, classic on request, anything else refused")
    func queueType() throws {
        let quorum = try ConsumerOptions.parse([]).configuration(Settings(environment: [:]), name: "c").topology
        #expect(quorum.queueType == .quorum && quorum.queueTypeArguments == ["x-queue-type": .string("quorum")])
        let classic = try ConsumerOptions.parse([]).configuration(Settings(environment: ["CONSUMER_QUEUE_TYPE": "classic"]), name: "c").topology
        #expect(classic.queueType == .classic && classic.queueTypeArguments.isEmpty)
        #expect(throws: ConfigurationError.self) {
            try ConsumerOptions.parse([]).configuration(Settings(environment: ["CONSUMER_QUEUE_TYPE": "stream"]), name: "c")
        }
    }
}
