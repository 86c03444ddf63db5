import ArgumentParser
import Foundation
import ISCSIClient
import ISCSIConfig
import Logging
import NIOCore
import NBDServer

/// `iscsi-nbd serve URL --socket PATH [--listen HOST:PORT]`
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Log in to an iSCSI target and serve one LUN as an NBD export until SIGINT/SIGTERM.",
        discussion: """
            URL form (as libiscsi and qemu write it):
              iscsi://[USER[%SECRET]@]HOST[:PORT]/TARGET-IQN/LUN
            The LUN is the NBD server's default export (empty name) and is also listed under a
            descriptive name. On SIGINT/SIGTERM in-flight requests are drained, the session logs out
            and the socket is removed.
            """
    )

    @Argument(help: "iscsi://[USER[%SECRET]@]HOST[:PORT]/TARGET-IQN/LUN (or use -T with a node record)")
    var url: String?

    @Option(name: [.customShort("T"), .customLong("targetname")], help: "Serve a recorded node (see -m discovery) instead of a URL.")
    var targetName: String?

    @Option(name: [.customShort("p"), .customLong("portal")], help: "With -T: the record's portal HOST[:PORT] when it has several.")
    var portal: String?

    @Option(name: .long, help: "With -T: the LUN to serve (default: the first direct-access LUN).")
    var lun: UInt16?

    @Option(name: .long, help: "Configuration directory (default /etc/iscsi, or ISCSI_NBD_CONFIG_DIR).")
    var configDir: String?

    @Option(name: .long, help: "Serve on this unix socket (mode 0600).")
    var socket: [String] = []

    @Option(name: .long, help: "Serve on TCP HOST:PORT (HOST defaults to 127.0.0.1, PORT to 10809).")
    var listen: [String] = []

    @Option(name: .long, help: "NBD export name to list (default: TARGET-IQN/lun-N).")
    var exportName: String?

    @Flag(name: .long, help: "Serve the LUN read-only.")
    var readOnly = false

    @OptionGroup var chap: CHAPOptions

    @Option(name: .long, help: "Initiator name (default: from /etc/iscsi/initiatorname.iscsi, or generated).")
    var initiatorName: String?

    @Option(name: .long, help: "Commands in flight to the target at most (default: node.session.queue_depth, 128 for URLs).")
    var queueDepth: Int?

    @Option(name: .long, help: "Event loop threads.")
    var threads: Int = 1

    @OptionGroup var polling: PollOptions

    @Option(name: .long, help: "TLS for --listen (PEM server certificate chain); clients must use NBD_OPT_STARTTLS.")
    var tlsCertificate: String?

    @Option(name: .long, help: "PEM private key for --tls-certificate.")
    var tlsKey: String?

    @Flag(name: .long, help: "Require a client certificate signed by --tls-ca.")
    var tlsVerifyPeer = false

    @Option(name: .long, help: "PEM CA certificates trusted for client certificates (with --tls-verify-peer).")
    var tlsCa: String?

    @Option(name: .long, help: "NBD connections served at once; more are closed on accept.")
    var maxConnections: Int = 512

    @Option(name: .long, help: "Close a connection that stops sending in the middle of a message (or the handshake) for this many seconds (0: never).")
    var stallTimeout: Int = 30

    @Option(name: .long, help: "MiB of WRITE payload buffered or in flight over all connections; beyond it writes fail with ENOMEM.")
    var maxBufferedWrites: Int = 256

    @Option(name: .long, help: "KiB of socket send buffer per NBD connection (SO_SNDBUF, capped by net.core.wmem_max; 0: the system default).")
    var sendBuffer: Int = 4096
    @Option(name: .long, help: ArgumentHelp(
        "Seconds NBD requests wait for a lost iSCSI session to come back before they fail with EIO (open-iscsi node.session.timeo.replacement_timeout).",
        valueName: "SECONDS"))
    var replacementTimeout: Int?

    @OptionGroup var metrics: MetricsOptions

    @OptionGroup var logging: LoggingOptions

    /// The TLS settings, or nil without --tls-certificate.
    var tlsConfiguration: NBDTLSConfiguration? {
        guard let tlsCertificate, let tlsKey else { return nil }
        return NBDTLSConfiguration(certificateChainFile: tlsCertificate, privateKeyFile: tlsKey, verifyPeer: tlsVerifyPeer, trustRootsFile: tlsCa)
    }

    func validate() throws {
        if socket.isEmpty && listen.isEmpty {
            throw ValidationError("give --socket PATH or --listen HOST:PORT (or both)")
        }
        for l in listen { _ = try ListenAddress.parseTCP(l) }
        if let queueDepth, !(1...4096).contains(queueDepth) { throw ValidationError("--queue-depth must be 1 to 4096") }
        switch (url, targetName) {
        case (nil, nil): throw ValidationError("give an iscsi:// URL or -T TARGET-IQN (a recorded node)")
        case (.some, .some): throw ValidationError("give either a URL or -T, not both")
        case (.some, nil) where portal != nil || lun != nil:
            throw ValidationError("-p and --lun go with -T; a URL names its portal and LUN itself")
        default: break
        }
        guard (1...64).contains(threads) else { throw ValidationError("--threads must be 1 to 64") }
        guard (1...65536).contains(maxConnections) else { throw ValidationError("--max-connections must be 1 to 65536") }
        guard (64...65536).contains(maxBufferedWrites) else { throw ValidationError("--max-buffered-writes must be 64 to 65536 MiB") }
        guard (0...86400).contains(stallTimeout) else { throw ValidationError("--stall-timeout must be 0 to 86400 seconds") }
        guard (0...(1 << 20)).contains(sendBuffer) else { throw ValidationError("--send-buffer must be 0 to 1048576 KiB") }
        if (tlsCertificate == nil) != (tlsKey == nil) {
            throw ValidationError("--tls-certificate and --tls-key go together")
        }
        if tlsCertificate == nil && (tlsVerifyPeer || tlsCa != nil) {
            throw ValidationError("--tls-verify-peer and --tls-ca need --tls-certificate and --tls-key")
        }
        if tlsVerifyPeer && tlsCa == nil { throw ValidationError("--tls-verify-peer needs --tls-ca") }
        if tlsCertificate != nil && listen.isEmpty {
            throw ValidationError("TLS applies to --listen (TCP); unix sockets are protected by their 0600 mode")
        }
        if let replacementTimeout, !(1...86400).contains(replacementTimeout) { throw ValidationError("--replacement-timeout must be 1 to 86400 seconds") }
    }

    func run() async throws {
        let logger = logging.makeLogger(label: "iscsi-nbd")
        let tls = tlsConfiguration
        if let tls {
            // Fail before logging in when a file is missing or unusable.
            do { _ = try tls.makeContext() } catch { throw ValidationError(error.description) }
        }
        let planner = try SessionPlanner(configDirectory: ConfigDirectory.resolve(explicit: configDir),
                                         initiatorName: initiatorName, initiatorNameSource: .fileOrMachineID)
        var overrides = SessionOverrides(queueDepth: queueDepth, replacementTimeout: replacementTimeout.map { .seconds($0) },
                                         busyPollMicroseconds: polling.pollUs)
        let plan: SessionPlan
        if let url {
            let parsed = try ISCSIURL.fromCommandLine(url)
            overrides.chap = try chap.resolve(urlUsername: parsed.username, urlPassword: parsed.password)
            plan = try planner.plan(url: parsed, overrides: overrides)
        } else {
            overrides.chap = try chap.resolve(urlUsername: nil, urlPassword: nil)
            let record = try planner.record(target: targetName, portal: try portal.map { try Admin.portal($0, defaultPort: Portal.defaultPort) })
            plan = try planner.plan(node: record.id, record: record, lun: lun, overrides: overrides)
        }
        try await ServeRuntime(
            session: plan.configuration, lun: plan.lun,
            sockets: socket, tcp: try listen.map(ListenAddress.parseTCP),
            exportName: exportName ?? "\(plan.node.target)/lun-\(plan.lun.map(String.init) ?? "auto")",
            readOnly: readOnly, threads: threads,
            tls: tls, maxConnections: maxConnections,
            stallTimeout: stallTimeout == 0 ? nil : .seconds(Int64(stallTimeout)),
            maxBufferedWriteBytes: maxBufferedWrites << 20,
            sendBufferBytes: sendBuffer == 0 ? nil : sendBuffer << 10, metrics: try metrics.endpoints(), logger: logger
        ).run()
    }
}

/// A TCP listen address, `HOST:PORT`, `HOST`, `:PORT` or `[V6]:PORT`.
struct ListenAddress: Equatable {
    var host: String
    var port: Int

    static let defaultPort = 10809

    /// The project's one `host[:port]` grammar (`Portal.split`); an empty host is 127.0.0.1.
    static func parseTCP(_ text: String) throws -> ListenAddress {
        let split: (host: String, port: Int?)
        do { split = try Portal.split(text) } catch { throw ValidationError("--listen \(text): \(error.message)") }
        return ListenAddress(host: split.host.isEmpty ? "127.0.0.1" : split.host, port: split.port ?? defaultPort)
    }
}
