#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// One HTTP GET of a health endpoint, with nothing but sockets: what a container health check
/// runs inside an image that has no shell, curl or wget (`outboxctl probe`).
public enum HealthProbe {
    public struct Target: Equatable, Sendable {
        public var host: String
        public var port: Int
        public var path: String
    }

    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    public struct Answer: Sendable {
        public let status: Int
        /// The status line and the body, at most a few kilobytes.
        public let text: String
    }

    /// `http://host:port/path` (port 80 when none is given, `/` when no path).
    public static func target(url: String) throws -> Target {
        guard url.hasPrefix("http://") else { throw Failure(description: "'\(url)' is not an http:// URL") }
        let rest = url.dropFirst("http://".count)
        let authority = rest.prefix { $0 != "/" }
        let path = rest.dropFirst(authority.count)
        var host = String(authority)
        var port = 80
        if let colon = authority.lastIndex(of: ":"), !authority.hasSuffix("]") {
            guard let parsed = Int(authority[authority.index(after: colon)...]), (1...65535).contains(parsed) else {
                throw Failure(description: "'\(url)' has no valid port")
            }
            port = parsed
            host = String(authority[..<colon])
        }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw Failure(description: "'\(url)' names no host") }
        return Target(host: host, port: port, path: path.isEmpty ? "/" : String(path))
    }

    /// The address to probe for a listen address `host:port`: a wildcard host (`0.0.0.0`, `::`)
    /// is probed on the loopback interface.
    public static func target(listenAddress: String, path: String) throws -> Target {
        guard let colon = listenAddress.lastIndex(of: ":"), let port = Int(listenAddress[listenAddress.index(after: colon)...]),
            (1...65535).contains(port)
        else { throw Failure(description: "'\(listenAddress)' is not host:port") }
        var host = String(listenAddress[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        switch host {
        case "", "0.0.0.0": host = "127.0.0.1"
        case "::": host = "::1"
        default: break
        }
        return Target(host: host, port: port, path: path)
    }

    /// The status code from the first line of an HTTP response, e.g. `HTTP/1.1 503 Service Unavailable`.
    public static func statusCode(of response: String) -> Int? {
        let firstLine = response.prefix { !$0.isNewline }
        let parts = firstLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let code = Int(parts[1]), (100...599).contains(code) else { return nil }
        return code
    }

    /// GETs `target`, giving up after `timeoutSeconds` for connecting and for each read or write.
    public static func get(_ target: Target, timeoutSeconds: Int = 3) throws -> Answer {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
            hints.ai_socktype = SOCK_STREAM
        #endif
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(target.host, String(target.port), &hints, &list) == 0, let first = list else {
            throw Failure(description: "cannot resolve \(target.host)")
        }
        defer { freeaddrinfo(list) }
        var problem = "cannot connect to \(target.host):\(target.port)"
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let address = candidate {
            candidate = address.pointee.ai_next
            let fd = socket(address.pointee.ai_family, address.pointee.ai_socktype, address.pointee.ai_protocol)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var limit = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
            // On Linux the send timeout also bounds connect().
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            guard connect(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) == 0 else {
                problem = "cannot connect to \(target.host):\(target.port): \(String(cString: strerror(errno)))"
                continue
            }
            return try exchange(fd, target)
        }
        throw Failure(description: problem)
    }

    private static func exchange(_ fd: Int32, _ target: Target) throws -> Answer {
        let host = target.host.contains(":") ? "[\(target.host)]" : target.host
        let request = Array("GET \(target.path) HTTP/1.1\r\nHost: \(host):\(target.port)\r\nConnection: close\r\n\r\n".utf8)
        var sent = 0
        while sent < request.count {
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Failure(description: "sending the request failed: \(String(cString: strerror(errno)))") }
            sent += n
        }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while response.count < 16384 {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            guard n > 0 else {
                if response.isEmpty { throw Failure(description: "no answer: \(String(cString: strerror(errno)))") }
                break
            }
            response += buffer[..<n]
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let status = statusCode(of: text) else { throw Failure(description: "the answer is not HTTP") }
        // The status line and the body, without the headers.
        let statusLine = String(text.prefix { !$0.isNewline })
        let body = text.firstRange(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
        return Answer(status: status, text: body.isEmpty ? statusLine : "\(statusLine) \(body)")
    }
}
