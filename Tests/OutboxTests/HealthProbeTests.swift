import Testing

@testable import OutboxRuntime

@Suite("Health probe")
struct HealthProbeTests {
    @Test("URLs: host, port and path")
    func urls() throws {
        #expect(try HealthProbe.target(url: "http://127.0.0.1:9400/health/ready") == .init(host: "127.0.0.1", port: 9400, path: "/health/ready"))
        #expect(try HealthProbe.target(url: "http://relay") == .init(host: "relay", port: 80, path: "/"))
        #expect(try HealthProbe.target(url: "http://[::1]:9400/health/live") == .init(host: "::1", port: 9400, path: "/health/live"))
        #expect(throws: HealthProbe.Failure.self) { try HealthProbe.target(url: "https://relay/health") }
        #expect(throws: HealthProbe.Failure.self) { try HealthProbe.target(url: "http://relay:99999/") }
    }

    @Test("a wildcard listen address is probed on the loopback interface")
    func listenAddresses() throws {
        #expect(
            try HealthProbe.target(listenAddress: "0.0.0.0:9400", path: "/health/ready")
                == .init(host: "127.0.0.1", port: 9400, path: "/health/ready"))
        #expect(try HealthProbe.target(listenAddress: "[::]:9401", path: "/x") == .init(host: "::1", port: 9401, path: "/x"))
        #expect(try HealthProbe.target(listenAddress: "10.1.2.3:80", path: "/").host == "10.1.2.3")
        #expect(throws: HealthProbe.Failure.self) { try HealthProbe.target(listenAddress: "off", path: "/") }
    }

    @Test("status codes from status lines")
    func statusLines() {
        #expect(HealthProbe.statusCode(of: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}") == 200)
        #expect(HealthProbe.statusCode(of: "HTTP/1.1 503 Service Unavailable\r\n") == 503)
        #expect(HealthProbe.statusCode(of: "SSH-2.0-OpenSSH") == nil)
        #expect(HealthProbe.statusCode(of: "") == nil)
    }
}
