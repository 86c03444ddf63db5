/// CHAP credentials. The secret never appears in `description` or `debugDescription`.
public struct CHAPCredentials: Hashable, Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public var username: String
    public var secret: String

    public init(username: String, secret: String) {
        self.username = username
        self.secret = secret
    }

    public var description: String { "CHAP(user: \(username), secret: <redacted>)" }
    public var debugDescription: String { description }
    /// Keeps the secret out of `dump()` and reflection-based logging.
    public var customMirror: Mirror { Mirror(self, children: ["username": username, "secret": "<redacted>"]) }
}

/// Authentication settings for a session (normal or discovery).
///
/// `method` is the method in effect, decided as open-iscsi decides it (usr/initiator_common.c,
/// `iscsi_setup_authentication`; its iscsid.conf: authmethod "is checked for validity but then ignored"):
/// CHAP whenever a password (or an incoming password) is set, whatever `authmethod` says, and no CHAP
/// when none is set, even with `authmethod = CHAP`. `configuredMethod` keeps what the file said, and
/// `note` says why the two differ, for logs and status output.
public struct AuthSettings: Hashable, Sendable, CustomStringConvertible {
    public var method: AuthMethod
    /// What `*.auth.authmethod` said (nil: not set anywhere).
    public var configuredMethod: AuthMethod?
    /// Why `method` is not what `authmethod` said (open-iscsi's rule), or nil when they agree.
    public var note: String?
    /// Our credentials (`username`/`password`), required for CHAP.
    public var initiator: CHAPCredentials?
    /// The target's credentials for mutual CHAP (`username_in`/`password_in`), optional.
    public var target: CHAPCredentials?
    /// CHAP algorithms to offer, in preference order (RFC 7143 §12.1.3 CHAP_A list).
    public var algorithms: [CHAPAlgorithm]

    public init(method: AuthMethod = .none, initiator: CHAPCredentials? = nil, target: CHAPCredentials? = nil,
                algorithms: [CHAPAlgorithm] = AuthSettings.defaultAlgorithms) {
        self.method = method
        self.initiator = initiator
        self.target = target
        self.algorithms = algorithms
    }

    /// Built-in offer when nothing configures `chap_algs`: MD5 only, as open-iscsi (every target supports it).
    /// `node.session.auth.chap_algs = SHA3-256,SHA256,SHA1,MD5` offers the stronger ones first.
    public static let defaultAlgorithms: [CHAPAlgorithm] = [.md5]

    /// One line for status output: "None", "CHAP", or "CHAP (mutual)"; never a secret.
    public var summary: String {
        switch method {
        case .none: return "None"
        case .chap: return target == nil ? "CHAP" : "CHAP (mutual)"
        }
    }

    public var description: String {
        var parts = ["method: \(method.rawValue)"]
        if let configuredMethod, configuredMethod != method { parts.append("configured: \(configuredMethod.rawValue)") }
        if let initiator { parts.append("initiator: \(initiator)") }
        if let target { parts.append("target: \(target)") }
        parts.append("algorithms: \(algorithms.map(\.rawValue).joined(separator: ","))")
        return "Auth(\(parts.joined(separator: ", ")))"
    }
}

/// The iSNS server configured in iscsid.conf (`isns.address`, `isns.port`; RFC 4171 port 3205 by default).
public struct ISNSServerSettings: Hashable, Sendable {
    public var address: String
    public var port: Int

    public static let defaultPort = 3205

    public init(address: String, port: Int = ISNSServerSettings.defaultPort) {
        self.address = address
        self.port = port
    }

    /// nil when `isns.address` is not set. Values are validated (the port range) with file and line.
    public static func resolve(iscsid: ConfigDocument, file: String? = nil) throws(ISCSIConfigError) -> ISNSServerSettings? {
        for key in [ConfigKeys.isnsAddress, ConfigKeys.isnsPort] {
            if let entry = iscsid.entry(for: key) {
                do { try ConfigKeys.validate(key: key, value: entry.value) } catch { throw error.at(file: file, line: entry.lineNumber) }
            }
        }
        guard let address = iscsid[ConfigKeys.isnsAddress], !address.isEmpty else { return nil }
        return ISNSServerSettings(address: address, port: iscsid[ConfigKeys.isnsPort].flatMap { Int($0) } ?? defaultPort)
    }
}

/// All settings a login and session need, after applying, lowest to highest precedence:
/// built-in defaults < iscsid.conf < node record < command-line overrides.
public struct EffectiveNodeSettings: Hashable, Sendable, CustomStringConvertible {
    public var startup: NodeStartup = .manual
    public var auth = AuthSettings()
    /// How long to wait for a lost session to come back before failing I/O.
    public var replacementTimeout: Duration = .seconds(120)
    public var loginTimeout: Duration = .seconds(15)
    public var logoutTimeout: Duration = .seconds(15)
    /// NOP-Out ping interval; zero disables pings.
    public var noopOutInterval: Duration = .seconds(5)
    public var noopOutTimeout: Duration = .seconds(5)
    /// Login attempts after the first one before giving up.
    public var initialLoginRetryMax = 8
    public var cmdsMax = 128
    public var queueDepth = 32
    // Negotiation proposals (RFC 7143 §13).
    public var initialR2T = false
    public var immediateData = true
    public var firstBurstLength = 262_144
    public var maxBurstLength = 16_776_192
    public var maxRecvDataSegmentLength = 262_144
    public var headerDigest: [DigestType] = [.none]
    public var dataDigest: [DigestType] = [.none]

    public init() {}

    /// The built-in defaults (open-iscsi's shipped iscsid.conf values, with ``AuthSettings/defaultAlgorithms``).
    public static let defaults = EffectiveNodeSettings()

    /// One configuration layer: a document plus a name for error messages (a file path or "command line").
    public struct Layer: Sendable {
        public var name: String
        public var entries: [ConfigDocument.Entry]

        public init(name: String, document: ConfigDocument) {
            self.name = name
            self.entries = document.entries
        }

        /// Command-line overrides (`-o key=value` style), applied in order.
        public init(name: String = "command line", overrides: [(key: String, value: String)]) {
            self.name = name
            self.entries = overrides.map { ConfigDocument.Entry(key: $0.key, value: $0.value) }
        }
    }

    /// Resolves the effective settings. Later layers win; within a layer the last occurrence wins.
    /// - Throws: ``ISCSIConfigError`` naming the layer (file) and line of a bad value, or naming the
    ///   keys when the combination is inconsistent (CHAP without credentials, half-set mutual CHAP,
    ///   FirstBurstLength > MaxBurstLength).
    public static func resolve(iscsid: ConfigDocument? = nil, iscsidName: String = ISCSIDConf.fileName,
                               node: NodeRecord? = nil,
                               overrides: [(key: String, value: String)] = []) throws(ISCSIConfigError) -> EffectiveNodeSettings {
        var layers: [Layer] = []
        if let iscsid { layers.append(Layer(name: iscsidName, document: iscsid)) }
        if let node { layers.append(Layer(name: "node record \(node.id)", document: node.document)) }
        if !overrides.isEmpty { layers.append(Layer(overrides: overrides)) }
        return try resolve(layers: layers)
    }

    /// Resolves from explicit layers, lowest precedence first.
    public static func resolve(layers: [Layer]) throws(ISCSIConfigError) -> EffectiveNodeSettings {
        let values = try Resolved(layers: layers)
        var s = EffectiveNodeSettings()
        if let v = values[ConfigKeys.startup] { s.startup = NodeStartup.allCases.first { $0.rawValue.caseInsensitiveEquals(v) } ?? s.startup }
        s.auth = try values.auth(prefix: "node.session.auth")
        if let v = values.int(ConfigKeys.replacementTimeout) { s.replacementTimeout = .seconds(v) }
        if let v = values.int(ConfigKeys.loginTimeout) { s.loginTimeout = .seconds(v) }
        if let v = values.int(ConfigKeys.logoutTimeout) { s.logoutTimeout = .seconds(v) }
        if let v = values.int(ConfigKeys.noopOutInterval) { s.noopOutInterval = .seconds(v) }
        if let v = values.int(ConfigKeys.noopOutTimeout) { s.noopOutTimeout = .seconds(v) }
        if let v = values.int(ConfigKeys.initialLoginRetryMax) { s.initialLoginRetryMax = v }
        if let v = values.int(ConfigKeys.cmdsMax) { s.cmdsMax = v }
        if let v = values.int(ConfigKeys.queueDepth) { s.queueDepth = v }
        if let v = values[ConfigKeys.initialR2T].flatMap(ConfigKeys.parseYesNo) { s.initialR2T = v }
        if let v = values[ConfigKeys.immediateData].flatMap(ConfigKeys.parseYesNo) { s.immediateData = v }
        if let v = values.int(ConfigKeys.firstBurstLength) { s.firstBurstLength = v }
        if let v = values.int(ConfigKeys.maxBurstLength) { s.maxBurstLength = v }
        if let v = values.int(ConfigKeys.maxRecvDataSegmentLength) { s.maxRecvDataSegmentLength = v }
        if let v = values[ConfigKeys.headerDigest] { s.headerDigest = (try? ConfigKeys.parseList(v, as: DigestType.self)) ?? s.headerDigest }
        if let v = values[ConfigKeys.dataDigest] { s.dataDigest = (try? ConfigKeys.parseList(v, as: DigestType.self)) ?? s.dataDigest }
        // RFC 7143 §13.14: "FirstBurstLength MUST NOT exceed MaxBurstLength."
        if s.firstBurstLength > s.maxBurstLength {
            throw ISCSIConfigError(.invalidValue, "\(ConfigKeys.firstBurstLength) (\(s.firstBurstLength), from \(values.origin(ConfigKeys.firstBurstLength))) exceeds \(ConfigKeys.maxBurstLength) (\(s.maxBurstLength), from \(values.origin(ConfigKeys.maxBurstLength)))",
                                   key: ConfigKeys.firstBurstLength)
        }
        return s
    }

    /// Authentication for SendTargets discovery sessions (`discovery.sendtargets.auth.*`).
    public static func resolveDiscoveryAuth(iscsid: ConfigDocument? = nil, iscsidName: String = ISCSIDConf.fileName,
                                            overrides: [(key: String, value: String)] = []) throws(ISCSIConfigError) -> AuthSettings {
        var layers: [Layer] = []
        if let iscsid { layers.append(Layer(name: iscsidName, document: iscsid)) }
        if !overrides.isEmpty { layers.append(Layer(overrides: overrides)) }
        return try Resolved(layers: layers).auth(prefix: "discovery.sendtargets.auth")
    }

    public var description: String {
        "EffectiveNodeSettings(startup: \(startup.rawValue), \(auth), replacementTimeout: \(replacementTimeout), "
            + "loginTimeout: \(loginTimeout), logoutTimeout: \(logoutTimeout), noopOut: \(noopOutInterval)/\(noopOutTimeout), "
            + "initialLoginRetryMax: \(initialLoginRetryMax), cmdsMax: \(cmdsMax), queueDepth: \(queueDepth), "
            + "InitialR2T: \(initialR2T), ImmediateData: \(immediateData), FirstBurstLength: \(firstBurstLength), "
            + "MaxBurstLength: \(maxBurstLength), MaxRecvDataSegmentLength: \(maxRecvDataSegmentLength), "
            + "HeaderDigest: \(headerDigest.map(\.rawValue).joined(separator: ",")), "
            + "DataDigest: \(dataDigest.map(\.rawValue).joined(separator: ",")))"
    }
}

// MARK: - Layer merging

/// Winning value per key, validated, with where it came from.
private struct Resolved {
    var values: [String: (value: String, origin: String)] = [:]

    init(layers: [EffectiveNodeSettings.Layer]) throws(ISCSIConfigError) {
        for layer in layers {
            for entry in layer.entries {
                do { try ConfigKeys.validate(key: entry.key, value: entry.value) } catch {
                    throw error.at(file: layer.name, line: entry.lineNumber)
                }
                let origin = entry.lineNumber.map { "\(layer.name):\($0)" } ?? layer.name
                values[entry.key] = (entry.value, origin)
            }
        }
    }

    subscript(key: String) -> String? { values[key]?.value }
    func int(_ key: String) -> Int? { self[key].flatMap { Int($0) } }
    func origin(_ key: String) -> String { values[key]?.origin ?? "built-in default" }

    /// open-iscsi's rule (usr/initiator_common.c, `iscsi_setup_authentication`): CHAP is used when a
    /// password or an incoming password is set, whatever `authmethod` says; incoming credentials without
    /// outgoing ones are refused (open-iscsi fails that login with EINVAL).
    func auth(prefix: String) throws(ISCSIConfigError) -> AuthSettings {
        var auth = AuthSettings()
        let methodKey = "\(prefix).authmethod"
        if let m = self[methodKey] {
            auth.configuredMethod = AuthMethod.allCases.first { $0.rawValue.caseInsensitiveEquals(m) } ?? AuthMethod.none
        }
        if let algs = self["\(prefix).chap_algs"], let list = try? ConfigKeys.parseList(algs, as: CHAPAlgorithm.self) {
            auth.algorithms = list
        }
        let user = self["\(prefix).username"] ?? "", secret = self["\(prefix).password"] ?? ""
        let userIn = self["\(prefix).username_in"] ?? "", secretIn = self["\(prefix).password_in"] ?? ""
        guard !secret.isEmpty || !secretIn.isEmpty || !userIn.isEmpty else {
            auth.method = .none
            if auth.configuredMethod == .chap {
                auth.note = "\(methodKey) = CHAP (from \(origin(methodKey))) but \(prefix).password is not set: logging in without CHAP, as open-iscsi does"
            }
            return auth
        }
        guard !secret.isEmpty else {
            throw ISCSIConfigError(.invalidValue, "\(prefix).username_in/password_in are set but \(prefix).password is not: mutual CHAP needs our own credentials too (open-iscsi refuses this login as well)",
                                   key: "\(prefix).password")
        }
        guard !user.isEmpty else {
            throw ISCSIConfigError(.invalidValue, "\(prefix).password is set (from \(origin("\(prefix).password"))) but \(prefix).username is empty",
                                   key: "\(prefix).username")
        }
        auth.method = .chap
        auth.initiator = CHAPCredentials(username: user, secret: secret)
        switch (userIn.isEmpty, secretIn.isEmpty) {
        case (true, true): break
        case (false, false): auth.target = CHAPCredentials(username: userIn, secret: secretIn)
        default:
            throw ISCSIConfigError(.invalidValue, "mutual CHAP needs both \(prefix).username_in and \(prefix).password_in",
                                   key: "\(prefix).username_in")
        }
        if auth.configuredMethod == AuthMethod.none {
            auth.note = "CHAP is used because \(prefix).username/password are set; \(methodKey) = None (from \(origin(methodKey))) is ignored, as open-iscsi does"
        }
        return auth
    }
}
