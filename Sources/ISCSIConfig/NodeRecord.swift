/// A target portal: host (IPv4/IPv6 literal or DNS name) and TCP port.
public struct Portal: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var host: String
    public var port: Int

    /// RFC 7143 §13.8 / IANA: the well-known iSCSI port.
    public static let defaultPort = 3260

    public init(host: String, port: Int = Portal.defaultPort) {
        self.host = host
        self.port = port
    }

    /// Parses `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 literal (no port), with an optional
    /// `,tpgt` suffix (iscsiadm prints portals as `host:port,tpgt`) that is dropped.
    public init(parsing text: String, defaultPort: Int = Portal.defaultPort) throws(ISCSIConfigError) {
        let (host, port) = try Self.split(text)
        guard !host.isEmpty else { throw Self.invalid(text, "empty host") }
        try NodeID.checkPathComponent(host, what: "portal host")
        self.init(host: host, port: port ?? defaultPort)
    }

    /// The one `host[:port]` grammar of the project (portals, iscsi:// URL authorities, TCP listen
    /// addresses): `host`, `host:port`, `[v6]`, `[v6]:port`, a bare IPv6 literal (no port), an optional
    /// `,tpgt` suffix dropped; the host may be empty (`:port`). The port, when given, is 1 to 65535.
    public static func split(_ text: String) throws(ISCSIConfigError) -> (host: String, port: Int?) {
        var spec = Substring(text)
        if let comma = spec.lastIndex(of: ","), !spec[comma...].contains("]") { spec = spec[..<comma] }
        var host = spec
        var portText: Substring?
        if spec.hasPrefix("[") {
            guard let close = spec.firstIndex(of: "]") else { throw invalid(text, "missing ']'") }
            host = spec[spec.index(after: spec.startIndex)..<close]
            let rest = spec[spec.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":") else { throw invalid(text, "expected :PORT after ]") }
                portText = rest.dropFirst()
            }
        } else if let colon = spec.lastIndex(of: ":"), spec.firstIndex(of: ":") == colon {
            host = spec[..<colon]
            portText = spec[spec.index(after: colon)...]
        }
        guard let portText else { return (String(host), nil) }
        guard let port = Int(portText), (1...65535).contains(port) else { throw invalid(text, "port must be 1 to 65535") }
        return (String(host), port)
    }

    private static func invalid(_ text: String, _ why: String) -> ISCSIConfigError {
        ISCSIConfigError(.invalidValue, "invalid portal '\(text.prefix(64))': \(why)")
    }

    /// `host:port`, with IPv6 literals in brackets.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public static func < (a: Portal, b: Portal) -> Bool { (a.host, a.port) < (b.host, b.port) }
}

/// Identifies a node record: `<configdir>/nodes/<target>/<host>,<port>,<tpgt>/<iface>`.
public struct NodeID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var target: String
    public var portal: Portal
    public var tpgt: Int
    public var iface: String

    public init(target: String, portal: Portal, tpgt: Int, iface: String = "default") {
        self.target = target
        self.portal = portal
        self.tpgt = tpgt
        self.iface = iface
    }

    /// `host:port,tpgt target`, as `iscsiadm -m node` lists records.
    public var description: String { "\(portal),\(tpgt) \(target)" }

    /// The portal directory name open-iscsi uses: `<host>,<port>,<tpgt>` (IPv6 without brackets).
    public var portalDirectoryName: String { "\(portal.host),\(portal.port),\(tpgt)" }

    /// Parses a portal directory name `<host>,<port>,<tpgt>` (split from the right, so IPv6 works).
    static func parsePortalDirectory(_ name: String) -> (Portal, Int)? {
        let parts = name.split(separator: ",", omittingEmptySubsequences: false)
        guard parts.count >= 3, let tpgt = Int(parts[parts.count - 1]), let port = Int(parts[parts.count - 2]),
              (1...65535).contains(port) else { return nil }
        let host = parts[0..<(parts.count - 2)].joined(separator: ",")
        guard !host.isEmpty else { return nil }
        return (Portal(host: host, port: port), tpgt)
    }

    /// Checks that the target name, host and iface can be used as path components.
    public func validateForPath() throws(ISCSIConfigError) {
        try Self.checkPathComponent(target, what: "target name")
        try Self.checkPathComponent(portal.host, what: "portal host")
        try Self.checkPathComponent(iface, what: "iface name")
        guard (-1...65535).contains(tpgt) else { throw ISCSIConfigError(.invalidName, "tpgt \(tpgt) out of range") }
        guard (1...65535).contains(portal.port) else { throw ISCSIConfigError(.invalidName, "port \(portal.port) out of range") }
    }

    /// Names from the network (discovery) are used as directory names, so they must not be able to
    /// escape the nodes directory or hide in it: no `/`, NUL or control characters, no leading `.`,
    /// at most 255 bytes.
    static func checkPathComponent(_ s: String, what: String) throws(ISCSIConfigError) {
        guard !s.isEmpty, !s.hasPrefix("."), s.utf8.count <= 255,
              !s.unicodeScalars.contains(where: { $0 == "/" || $0.value < 0x20 || $0.value == 0x7F }) else {
            throw ISCSIConfigError(.invalidName, "\(what) '\(s.prefix(64).unicodeScalars.map { $0.escaped(asASCII: true) }.joined())' cannot be used in a record path")
        }
    }

    public static func < (a: NodeID, b: NodeID) -> Bool {
        (a.target, a.portal, a.tpgt, a.iface) < (b.target, b.portal, b.tpgt, b.iface)
    }
}

/// Where a node record came from (`node.discovery_*`).
public struct DiscoverySource: Hashable, Sendable {
    public enum Kind: String, Hashable, Sendable {
        case sendTargets = "send_targets"
        case isns
        case `static`
    }
    public var kind: Kind
    public var address: String
    public var port: Int

    public init(kind: Kind, address: String, port: Int) {
        self.kind = kind
        self.address = address
        self.port = port
    }
}

/// A node record: an ordered, lossless `key = value` document in open-iscsi's layout, framed by
/// `# BEGIN RECORD <version>` / `# END RECORD`, so records move between this tool and iscsiadm.
public struct NodeRecord: Hashable, Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public static let fileMode: UInt32 = 0o600
    /// The open-iscsi record format version written in `# BEGIN RECORD` (any version is read).
    public static let recordVersion = "2.1.8"
    public static let beginMarkerPrefix = "# BEGIN RECORD"
    public static let endMarker = "# END RECORD"
    /// Keys that define the record's identity (and its path); `update` refuses to change them.
    public static let identityKeys: Set<String> = [
        ConfigKeys.nodeName, ConfigKeys.nodeTPGT, ConfigKeys.connAddress, ConfigKeys.connPort, ConfigKeys.ifaceName,
    ]
    static let masked = "********"

    public var id: NodeID
    public var document: ConfigDocument

    public init(id: NodeID, document: ConfigDocument) {
        self.id = id
        self.document = document
    }

    /// Parses a record file found at `id`'s path. Known keys are validated; `node.name`, `node.tpgt`,
    /// `node.conn[0].address`/`port` must agree with the path when present.
    public static func parse(_ text: String, id: NodeID, file: String? = nil) throws(ISCSIConfigError) -> NodeRecord {
        let document = try ConfigDocument.parse(text, file: file)
        try ConfigKeys.validate(document, file: file)
        let checks: [(String, String)] = [
            (ConfigKeys.nodeName, id.target), (ConfigKeys.nodeTPGT, String(id.tpgt)),
            (ConfigKeys.connAddress, id.portal.host), (ConfigKeys.connPort, String(id.portal.port)),
        ]
        for (key, expected) in checks {
            if let entry = document.entry(for: key), entry.value != expected {
                throw ISCSIConfigError(.invalidRecord, "\(key) '\(entry.value.prefix(64))' does not match the record path ('\(expected)')",
                                       file: file, line: entry.lineNumber, key: key)
            }
        }
        return NodeRecord(id: id, document: document)
    }

    /// The file contents (secrets included: this is what is written to the 0600 file).
    public func render() -> String { document.render() }

    public var description: String { "NodeRecord(\(id): \(document))" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["id": id, "document": document.description]) }

    /// The record as `iscsiadm -m node -o show` prints it: secrets that are set become `********`.
    public func show() -> String {
        var shown = document
        shown.lines = shown.lines.map { line in
            if case .entry(let e) = line, ConfigKeys.isSecret(e.key), !e.value.isEmpty {
                return .entry(ConfigDocument.Entry(key: e.key, value: Self.masked))
            }
            return line
        }
        return shown.render()
    }

    /// The value of `key` in this record.
    public subscript(key: String) -> String? { document[key] }

    /// The discovery source recorded in `node.discovery_*`, if complete.
    public var discoverySource: DiscoverySource? {
        guard let type = document[ConfigKeys.discoveryType], let kind = DiscoverySource.Kind(rawValue: type),
              let address = document[ConfigKeys.discoveryAddress],
              let port = document[ConfigKeys.discoveryPort].flatMap({ Int($0) }) else { return nil }
        return DiscoverySource(kind: kind, address: address, port: port)
    }

    /// A new record for `id`, seeded like open-iscsi's: built-in defaults, overridden by every
    /// `node.*` setting of `iscsid` (iscsid.conf), with the identity and discovery keys filled in.
    /// Keys appear in open-iscsi's record order; other `node.*` keys from iscsid.conf follow.
    public static func new(id: NodeID, iscsid: ConfigDocument = ConfigDocument(), discovery: DiscoverySource? = nil) -> NodeRecord {
        var doc = ConfigDocument(lines: [.comment("\(beginMarkerPrefix) \(recordVersion)")])
        var written: Set<String> = []
        func put(_ key: String, _ value: String) {
            written.insert(key)
            guard !value.isEmpty else { return }  // open-iscsi does not write empty values
            doc.lines.append(.entry(ConfigDocument.Entry(key: key, value: value)))
        }
        func seeded(_ key: String, _ builtin: String) {
            put(key, iscsid[key] ?? builtin)
        }
        put(ConfigKeys.nodeName, id.target)
        put(ConfigKeys.nodeTPGT, String(id.tpgt))
        seeded(ConfigKeys.startup, NodeStartup.manual.rawValue)
        seeded("node.leading_login", "No")
        put(ConfigKeys.ifaceName, id.iface)
        put(ConfigKeys.transportName, "tcp")
        if let discovery {
            put(ConfigKeys.discoveryAddress, discovery.address)
            put(ConfigKeys.discoveryPort, String(discovery.port))
            put(ConfigKeys.discoveryType, discovery.kind.rawValue)
        } else {
            put(ConfigKeys.discoveryAddress, "")
            put(ConfigKeys.discoveryPort, "0")
            put(ConfigKeys.discoveryType, DiscoverySource.Kind.static.rawValue)
        }
        for (key, builtin) in sessionTemplate { seeded(key, builtin) }
        put(ConfigKeys.connAddress, id.portal.host)
        put(ConfigKeys.connPort, String(id.portal.port))
        for (key, builtin) in connectionTemplate { seeded(key, builtin) }
        // Every other node.* setting of iscsid.conf (open-iscsi copies them all into the record).
        for entry in iscsid.entries where entry.key.hasPrefix("node.") && !written.contains(entry.key) {
            put(entry.key, iscsid[entry.key] ?? entry.value)
        }
        doc.lines.append(.comment(endMarker))
        return NodeRecord(id: id, document: doc)
    }

    /// Session keys in open-iscsi's order with the defaults its iscsid.conf ships (empty = not written).
    static let sessionTemplate: [(String, String)] = [
        ("node.session.initial_cmdsn", "0"),
        (ConfigKeys.initialLoginRetryMax, "8"),
        ("node.session.xmit_thread_priority", "-20"),
        (ConfigKeys.cmdsMax, "128"),
        (ConfigKeys.queueDepth, "32"),
        ("node.session.nr_sessions", "1"),
        (ConfigKeys.authMethod, AuthMethod.none.rawValue),
        (ConfigKeys.username, ""),
        (ConfigKeys.password, ""),
        (ConfigKeys.usernameIn, ""),
        (ConfigKeys.passwordIn, ""),
        (ConfigKeys.chapAlgorithms, "MD5"),
        (ConfigKeys.replacementTimeout, "120"),
        ("node.session.err_timeo.abort_timeout", "15"),
        ("node.session.err_timeo.lu_reset_timeout", "30"),
        ("node.session.err_timeo.tgt_reset_timeout", "30"),
        ("node.session.err_timeo.host_reset_timeout", "60"),
        ("node.session.iscsi.FastAbort", "Yes"),
        (ConfigKeys.initialR2T, "No"),
        (ConfigKeys.immediateData, "Yes"),
        (ConfigKeys.firstBurstLength, "262144"),
        (ConfigKeys.maxBurstLength, "16776192"),
        ("node.session.iscsi.DefaultTime2Retain", "0"),
        ("node.session.iscsi.DefaultTime2Wait", "2"),
        ("node.session.iscsi.MaxConnections", "1"),
        ("node.session.iscsi.MaxOutstandingR2T", "1"),
        ("node.session.iscsi.ERL", "0"),
        ("node.session.scan", "auto"),
        ("node.session.reopen_max", "0"),
    ]

    static let connectionTemplate: [(String, String)] = [
        (ConfigKeys.connStartup, NodeStartup.manual.rawValue),
        ("node.conn[0].tcp.window_size", "524288"),
        ("node.conn[0].tcp.type_of_service", "0"),
        (ConfigKeys.logoutTimeout, "15"),
        (ConfigKeys.loginTimeout, "15"),
        ("node.conn[0].timeo.auth_timeout", "45"),
        (ConfigKeys.noopOutInterval, "5"),
        (ConfigKeys.noopOutTimeout, "5"),
        ("node.conn[0].iscsi.MaxXmitDataSegmentLength", "0"),
        (ConfigKeys.maxRecvDataSegmentLength, "262144"),
        (ConfigKeys.headerDigest, DigestType.none.rawValue),
        (ConfigKeys.dataDigest, DigestType.none.rawValue),
        ("node.conn[0].iscsi.IFMarker", "No"),
        ("node.conn[0].iscsi.OFMarker", "No"),
    ]
}
