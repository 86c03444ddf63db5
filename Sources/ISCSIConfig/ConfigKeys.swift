// MARK: - Typed values

/// `node.startup` / `node.conn[0].startup`.
public enum NodeStartup: String, Hashable, Sendable, CaseIterable {
    case manual
    case automatic
    case onboot
}

/// `*.auth.authmethod`.
public enum AuthMethod: String, Hashable, Sendable, CaseIterable {
    case none = "None"
    case chap = "CHAP"
}

/// `HeaderDigest` / `DataDigest` values (RFC 7143 §13.1).
public enum DigestType: String, Hashable, Sendable, CaseIterable {
    case none = "None"
    case crc32c = "CRC32C"
}

/// CHAP hash algorithms as named in `node.session.auth.chap_algs`.
public enum CHAPAlgorithm: String, Hashable, Sendable, CaseIterable {
    case sha3_256 = "SHA3-256"
    case sha256 = "SHA256"
    case sha1 = "SHA1"
    case md5 = "MD5"

    /// The CHAP_A value (RFC 7143 §12.1.3 and the IANA "PPP Authentication Algorithms" registry:
    /// 5 = MD5, 6 = SHA-1, 7 = SHA-256, 8 = SHA3-256).
    public var chapA: UInt8 {
        switch self {
        case .md5: 5
        case .sha1: 6
        case .sha256: 7
        case .sha3_256: 8
        }
    }
}

/// The type of a known key's value.
public enum ConfigValueKind: Hashable, Sendable {
    /// Free text up to `maxBytes` UTF-8 bytes (may be empty).
    case text(maxBytes: Int)
    /// A CHAP secret up to 256 bytes; never echoed in errors or `show` output.
    case secret
    /// A decimal integer in the range.
    case integer(ClosedRange<Int>)
    /// An integer in the range that is also a power of two.
    case powerOfTwo(ClosedRange<Int>)
    /// `Yes` or `No`.
    case yesNo
    /// One of the listed words (compared case-insensitively, rendered as listed).
    case choice([String])
    /// A comma separated, non-empty list of `None`/`CRC32C` without repeats.
    case digestList
    /// A comma separated, non-empty list of CHAP algorithms without repeats.
    case chapAlgorithmList
}

/// The keys this project interprets, with their value types. Every other key is kept verbatim and
/// ignored (open-iscsi has many more; see ``ConfigKeys/isKnown(_:)``).
public enum ConfigKeys {
    // Node session authentication.
    public static let authMethod = "node.session.auth.authmethod"
    public static let username = "node.session.auth.username"
    public static let password = "node.session.auth.password"
    public static let usernameIn = "node.session.auth.username_in"
    public static let passwordIn = "node.session.auth.password_in"
    public static let chapAlgorithms = "node.session.auth.chap_algs"
    // SendTargets discovery authentication.
    public static let discoveryAuthMethod = "discovery.sendtargets.auth.authmethod"
    public static let discoveryUsername = "discovery.sendtargets.auth.username"
    public static let discoveryPassword = "discovery.sendtargets.auth.password"
    public static let discoveryUsernameIn = "discovery.sendtargets.auth.username_in"
    public static let discoveryPasswordIn = "discovery.sendtargets.auth.password_in"
    // iSNS.
    public static let isnsAddress = "isns.address"
    public static let isnsPort = "isns.port"
    // Node.
    public static let nodeName = "node.name"
    public static let nodeTPGT = "node.tpgt"
    public static let startup = "node.startup"
    public static let connAddress = "node.conn[0].address"
    public static let connPort = "node.conn[0].port"
    public static let connStartup = "node.conn[0].startup"
    public static let discoveryAddress = "node.discovery_address"
    public static let discoveryPort = "node.discovery_port"
    public static let discoveryType = "node.discovery_type"
    public static let ifaceName = "iface.iscsi_ifacename"
    public static let transportName = "iface.transport_name"
    // Timeouts and retries.
    public static let replacementTimeout = "node.session.timeo.replacement_timeout"
    public static let loginTimeout = "node.conn[0].timeo.login_timeout"
    public static let logoutTimeout = "node.conn[0].timeo.logout_timeout"
    public static let noopOutInterval = "node.conn[0].timeo.noop_out_interval"
    public static let noopOutTimeout = "node.conn[0].timeo.noop_out_timeout"
    public static let initialLoginRetryMax = "node.session.initial_login_retry_max"
    public static let cmdsMax = "node.session.cmds_max"
    public static let queueDepth = "node.session.queue_depth"
    // Negotiation proposals (RFC 7143 §13).
    public static let initialR2T = "node.session.iscsi.InitialR2T"
    public static let immediateData = "node.session.iscsi.ImmediateData"
    public static let firstBurstLength = "node.session.iscsi.FirstBurstLength"
    public static let maxBurstLength = "node.session.iscsi.MaxBurstLength"
    public static let maxRecvDataSegmentLength = "node.conn[0].iscsi.MaxRecvDataSegmentLength"
    public static let headerDigest = "node.conn[0].iscsi.HeaderDigest"
    public static let dataDigest = "node.conn[0].iscsi.DataDigest"

    /// RFC 7143 §13.12, §13.13, §13.14: data segment and burst lengths are 512 to 2^24 - 1.
    static let dataLengthRange = 512...16_777_215
    static let secretKeys: Set<String> = [password, passwordIn, discoveryPassword, discoveryPasswordIn]

    /// Known keys and their types.
    public static let kinds: [String: ConfigValueKind] = [
        authMethod: .choice(AuthMethod.allCases.map(\.rawValue)),
        username: .text(maxBytes: 256),
        password: .secret,
        usernameIn: .text(maxBytes: 256),
        passwordIn: .secret,
        chapAlgorithms: .chapAlgorithmList,
        discoveryAuthMethod: .choice(AuthMethod.allCases.map(\.rawValue)),
        discoveryUsername: .text(maxBytes: 256),
        discoveryPassword: .secret,
        discoveryUsernameIn: .text(maxBytes: 256),
        discoveryPasswordIn: .secret,
        isnsAddress: .text(maxBytes: 255),
        isnsPort: .integer(1...65535),
        nodeName: .text(maxBytes: ISCSIName.maximumLength),
        nodeTPGT: .integer(-1...65535),
        startup: .choice(NodeStartup.allCases.map(\.rawValue)),
        connStartup: .choice(NodeStartup.allCases.map(\.rawValue)),
        connAddress: .text(maxBytes: 255),
        connPort: .integer(1...65535),
        discoveryAddress: .text(maxBytes: 255),
        discoveryPort: .integer(0...65535),
        discoveryType: .choice(["send_targets", "isns", "offload_send_targets", "static", "fw"]),
        replacementTimeout: .integer(0...86_400),
        loginTimeout: .integer(1...3_600),
        logoutTimeout: .integer(1...3_600),
        noopOutInterval: .integer(0...3_600),
        noopOutTimeout: .integer(0...3_600),
        initialLoginRetryMax: .integer(0...10_000),
        // iscsid.conf: "an integer between 2 and 2048 that is also a power of 2".
        cmdsMax: .powerOfTwo(2...2_048),
        // iscsid.conf: "a value between 1 and 1024".
        queueDepth: .integer(1...1_024),
        initialR2T: .yesNo,
        immediateData: .yesNo,
        firstBurstLength: .integer(dataLengthRange),
        maxBurstLength: .integer(dataLengthRange),
        maxRecvDataSegmentLength: .integer(dataLengthRange),
        headerDigest: .digestList,
        dataDigest: .digestList,
    ]

    /// Whether this project interprets `key`.
    public static func isKnown(_ key: String) -> Bool { kinds[key] != nil }

    /// Whether `key` holds a secret (masked by `show`, never logged).
    public static func isSecret(_ key: String) -> Bool { secretKeys.contains(key) }

    /// Validates `value` for `key`. Unknown keys are always accepted.
    /// - Throws: ``ISCSIConfigError/Code/invalidValue`` naming the key (and, for non-secrets, the value).
    public static func validate(key: String, value: String) throws(ISCSIConfigError) {
        guard let kind = kinds[key] else { return }
        func fail(_ why: String) -> ISCSIConfigError {
            let shown = isSecret(key) ? "" : " '\(value.prefix(64))'"
            return ISCSIConfigError(.invalidValue, "invalid value\(shown) for \(key): \(why)", key: key)
        }
        switch kind {
        case .text(let maxBytes):
            guard value.utf8.count <= maxBytes else { throw fail("longer than \(maxBytes) bytes") }
        case .secret:
            guard value.utf8.count <= 256 else { throw fail("longer than 256 bytes") }
        case .integer(let range):
            guard let n = Int(value) else { throw fail("not an integer") }
            guard range.contains(n) else { throw fail("out of range \(range.lowerBound)...\(range.upperBound)") }
        case .powerOfTwo(let range):
            guard let n = Int(value) else { throw fail("not an integer") }
            guard range.contains(n), n & (n - 1) == 0 else {
                throw fail("must be a power of two in \(range.lowerBound)...\(range.upperBound)")
            }
        case .yesNo:
            guard parseYesNo(value) != nil else { throw fail("expected Yes or No") }
        case .choice(let words):
            guard words.contains(where: { $0.caseInsensitiveEquals(value) }) else {
                throw fail("expected one of \(words.joined(separator: ", "))")
            }
        case .digestList:
            do { _ = try parseList(value, as: DigestType.self) } catch { throw fail(error.message) }
        case .chapAlgorithmList:
            do { _ = try parseList(value, as: CHAPAlgorithm.self) } catch { throw fail(error.message) }
        }
    }

    /// Validates every entry of `document` whose key is known; the error names `file` and the line.
    public static func validate(_ document: ConfigDocument, file: String? = nil) throws(ISCSIConfigError) {
        for entry in document.entries {
            do { try validate(key: entry.key, value: entry.value) } catch { throw error.at(file: file, line: entry.lineNumber) }
        }
    }

    /// The keys of `document` this project does not interpret (for debug logging by the caller).
    public static func unknownKeys(in document: ConfigDocument) -> [String] {
        document.entries.map(\.key).filter { !isKnown($0) }
    }

    static func parseYesNo(_ value: String) -> Bool? {
        if value.caseInsensitiveEquals("Yes") { return true }
        if value.caseInsensitiveEquals("No") { return false }
        return nil
    }

    struct ListError: Error { var message: String }

    static func parseList<T: RawRepresentable & CaseIterable>(_ value: String, as: T.Type) throws(ListError) -> [T]
    where T.RawValue == String {
        var result: [T] = []
        for raw in value.split(separator: ",", omittingEmptySubsequences: false) {
            let word = String(raw).trimmingConfigWhitespace()
            guard let item = T.allCases.first(where: { $0.rawValue.caseInsensitiveEquals(word) }) else {
                throw ListError(message: "unknown item '\(word.prefix(32))' (expected \(T.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            guard !result.contains(where: { $0.rawValue == item.rawValue }) else {
                throw ListError(message: "'\(item.rawValue)' listed twice")
            }
            result.append(item)
        }
        return result
    }
}

extension String {
    func caseInsensitiveEquals(_ other: String) -> Bool {
        self.utf8.count == other.utf8.count && self.lowercased() == other.lowercased()
    }
}
