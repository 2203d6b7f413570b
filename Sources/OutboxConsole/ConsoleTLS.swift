import HummingbirdTLS
import NIOSSL
import Outbox

/// The console's HTTPS: a PEM certificate chain and its private key, read at start. Errors name the
/// setting whose file is wrong.
public struct ConsoleTLS: Sendable {
    let configuration: TLSConfiguration

    public init(certificateFile: String, keyFile: String, certificateSetting: String, keySetting: String) throws {
        let chain: [NIOSSLCertificate]
        do { chain = try NIOSSLCertificate.fromPEMFile(certificateFile) } catch {
            throw ConfigurationError(setting: certificateSetting, reason: "cannot read a PEM certificate from \(certificateFile): \(error)")
        }
        guard !chain.isEmpty else { throw ConfigurationError(setting: certificateSetting, reason: "\(certificateFile) holds no certificate") }
        let key: NIOSSLPrivateKey
        do { key = try NIOSSLPrivateKey(file: keyFile, format: .pem) } catch {
            throw ConfigurationError(setting: keySetting, reason: "cannot read a PEM private key from \(keyFile)")
        }
        configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
    }
}
