import ArgumentParser
import Foundation
import OutboxRuntime

extension OutboxCtl {
    /// The container health check: the images hold no shell, curl or wget.
    struct Probe: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Ask a health endpoint of the relay or a consumer; exit 0 when it answers 200 (container health checks).",
            discussion: """
                Prints the answer's status line and body. Exit status 0 when the endpoint answered 200, \
                1 otherwise (another status, no answer, refused), as HEALTHCHECK and probes expect. \
                Without a URL it asks http://RELAY_HTTP_ADDRESS/health/ready, the address the relay of the \
                same container listens on (a wildcard host such as 0.0.0.0 is asked on the loopback interface).
                """)

        @Argument(
            help:
                "http://host:port/path to ask (default: /health/ready at RELAY_HTTP_ADDRESS, or \(SettingDeclaration.relayHTTPAddress.shownDefault))."
        )
        var url: String?

        @Flag(help: "Ask /health/live instead of /health/ready when no URL is given.")
        var live = false

        @Option(help: "Seconds to wait for the connection and for each read.")
        var timeout = 3

        func validate() throws {
            guard (1...60).contains(timeout) else { throw ValidationError("--timeout must be between 1 and 60 seconds") }
        }

        func run() throws {
            let target: HealthProbe.Target
            do {
                if let url {
                    target = try HealthProbe.target(url: url)
                } else {
                    let address = try Settings().string(nil, .relayHTTPAddress)
                    target = try HealthProbe.target(listenAddress: address, path: live ? "/health/live" : "/health/ready")
                }
            } catch {
                throw ValidationError("\(error)")
            }
            do {
                let answer = try HealthProbe.get(target, timeoutSeconds: timeout)
                print(answer.text)
                if answer.status != 200 { throw ExitCode(1) }
            } catch let failure as HealthProbe.Failure {
                print("unhealthy: \(failure)")
                throw ExitCode(1)
            }
        }
    }
}
