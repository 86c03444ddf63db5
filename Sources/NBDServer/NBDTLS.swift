import NIOSSL

/// TLS for the NBD server's TCP listeners (nbd-proto.md "TLS support", FORCEDTLS mode): with this set, a TCP
/// client must send NBD_OPT_STARTTLS before anything else; every other option is refused with
/// NBD_REP_ERR_TLS_REQD and NBD_OPT_EXPORT_NAME before TLS ends the session. Unix sockets (mode 0600) and
/// kernel sockets are not affected.
public struct NBDTLSConfiguration: Sendable, Hashable {
    /// PEM file with the server certificate (and any intermediates after it).
    public var certificateChainFile: String
    /// PEM file with the server's private key.
    public var privateKeyFile: String
    /// Require a client certificate and verify it against `trustRootsFile` (hostnames are not checked:
    /// the client is identified by its certificate chain alone).
    public var verifyPeer: Bool
    /// PEM file with the CA certificates trusted for client certificates (required with `verifyPeer`).
    public var trustRootsFile: String?

    public init(certificateChainFile: String, privateKeyFile: String, verifyPeer: Bool = false, trustRootsFile: String? = nil) {
        self.certificateChainFile = certificateChainFile
        self.privateKeyFile = privateKeyFile
        self.verifyPeer = verifyPeer
        self.trustRootsFile = trustRootsFile
    }

    /// Loads the files and builds the server context (TLS 1.2 minimum). Errors name the file, never its
    /// contents.
    public func makeContext() throws(NBDServerError) -> NIOSSLContext {
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificateChainFile)
        } catch {
            throw NBDServerError("cannot load the TLS certificate from \(certificateChainFile): \(error)")
        }
        guard !chain.isEmpty else { throw NBDServerError("no certificate in \(certificateChainFile)") }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: privateKeyFile, format: .pem)
        } catch {
            throw NBDServerError("cannot load the TLS private key from \(privateKeyFile)")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        if verifyPeer {
            guard let trustRootsFile else { throw NBDServerError("TLS peer verification needs a CA file") }
            do {
                _ = try NIOSSLCertificate.fromPEMFile(trustRootsFile)
            } catch {
                throw NBDServerError("cannot load the TLS CA certificates from \(trustRootsFile): \(error)")
            }
            configuration.trustRoots = .file(trustRootsFile)
            configuration.certificateVerification = .noHostnameVerification
        } else {
            configuration.certificateVerification = .none
        }
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw NBDServerError("cannot set up TLS (certificate \(certificateChainFile), key \(privateKeyFile)): \(error)")
        }
    }
}
