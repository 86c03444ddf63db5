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
        var plan = try url.map { try planFromURL($0) } ?? planFromNode(logger: logger)
        plan.session.busyPollMicroseconds = polling.pollUs
        try await ServeRuntime(
            session: plan.session, lun: plan.lun,
            sockets: socket, tcp: try listen.map(ListenAddress.parseTCP),
            exportName: exportName ?? "\(plan.session.targetName ?? "")/lun-\(plan.lun.map(String.init) ?? "auto")",
            readOnly: readOnly, threads: threads, replacementTimeout: replacementTimeout,
            tls: tls, maxConnections: maxConnections,
            stallTimeout: stallTimeout == 0 ? nil : .seconds(Int64(stallTimeout)),
            maxBufferedWriteBytes: maxBufferedWrites << 20,
            sendBufferBytes: sendBuffer == 0 ? nil : sendBuffer << 10, logger: logger
        ).run()
    }

    /// URL mode: built-in defaults < iscsid.conf (when there is one) < the URL and the command line.
    private func planFromURL(_ text: String) throws -> (session: ISCSISessionConfiguration, lun: UInt16?) {
        let parsed: ISCSIURL
        do {
            parsed = try ISCSIURL(parsing: text)
        } catch {
            throw ValidationError(error.description)
        }
        if let password = parsed.password { ArgvScrubber.scrub(password) }
        let node = NodeID(target: parsed.targetName, portal: Portal(host: parsed.host, port: parsed.port), tpgt: 1)
        var session = try sessionConfiguration(node: node, record: nil)
        try applyCommandLineCHAP(to: &session, urlUsername: parsed.username, urlPassword: parsed.password)
        return (session, parsed.lun)
    }

    /// Node mode: built-in defaults < iscsid.conf < the node record < the command line.
    private func planFromNode(logger: Logger) throws -> (session: ISCSISessionConfiguration, lun: UInt16?) {
        let directory = ConfigDirectory.resolve(explicit: configDir)
        let wanted = try portal.map { p in
            do { return try Portal(parsing: p) } catch { throw ValidationError("-p \(p): \(error)") }
        }
        let records = try NodeDatabase(configDirectory: directory).find(target: targetName, portal: wanted)
        guard let record = records.first else {
            throw CommandFailure("no node record for \(targetName ?? "")\(wanted.map { " at \($0)" } ?? "") in \(directory)/nodes (run -m discovery first, or --op new)")
        }
        if records.count > 1 {
            throw CommandFailure("\(targetName ?? "") has \(records.count) portals: \(records.map { "\($0.id.portal)" }.joined(separator: ", ")); choose one with -p")
        }
        var session = try sessionConfiguration(node: record.id, record: record)
        try applyCommandLineCHAP(to: &session, urlUsername: nil, urlPassword: nil)
        return (session, lun)
    }

    private func sessionConfiguration(node: NodeID, record: NodeRecord?) throws -> ISCSISessionConfiguration {
        let directory = ConfigDirectory.resolve(explicit: configDir)
        let iscsid = try ISCSIDConf.load(configDirectory: directory)
        var settings = try EffectiveNodeSettings.resolve(iscsid: iscsid, node: record)
        // --queue-depth wins; without a node record the bridge's own default is 128 (open-iscsi's is 32).
        if let depth = queueDepth ?? (record == nil ? 128 : nil) {
            settings.queueDepth = depth
            settings.cmdsMax = max(settings.cmdsMax, depth)
        }
        let name = try initiatorName ?? InitiatorIdentity.defaultName(configDir: directory)
        return ISCSISessionConfiguration(node: node, settings: settings, initiatorName: name, initiatorAlias: nil)
    }

    /// Credentials given on the command line, in the environment or in the URL replace the configured ones.
    private func applyCommandLineCHAP(to session: inout ISCSISessionConfiguration, urlUsername: String?,
                                      urlPassword: String?) throws {
        let resolved = try chap.resolve(urlUsername: urlUsername, urlPassword: urlPassword)
        if let resolved {
            session.chap = resolved.credentials
            session.authNote = nil
        }
    }
}

/// A TCP listen address, `HOST:PORT`, `HOST`, `:PORT` or `[V6]:PORT`.
struct ListenAddress: Equatable {
    var host: String
    var port: Int

    static let defaultPort = 10809

    static func parseTCP(_ text: String) throws -> ListenAddress {
        var host = "127.0.0.1"
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw ValidationError("--listen \(text): unterminated [") }
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if rest.hasPrefix(":") { portText = rest.dropFirst() } else if !rest.isEmpty {
                throw ValidationError("--listen \(text): expected :PORT after ]")
            }
        } else if let colon = text.lastIndex(of: ":") {
            if colon != text.startIndex { host = String(text[..<colon]) }
            portText = text[text.index(after: colon)...]
        } else if !text.isEmpty {
            host = text
        }
        var port = defaultPort
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p) else {
                throw ValidationError("--listen \(text): port must be 1 to 65535")
            }
            port = p
        }
        return ListenAddress(host: host, port: port)
    }
}
