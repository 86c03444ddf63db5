import ISCSIClient
import ISCSIConfig
import ISCSIProtocol
import NIOCore

/// What the command line adds on top of the configuration files (the highest precedence layer).
struct SessionOverrides: Sendable {
    /// `--initiator-name`.
    var initiatorName: String?
    /// `--chap-*`, the environment or a URL's `user%secret@`: replaces the configured credentials.
    var chap: ResolvedCHAP?
    /// `--queue-depth`.
    var queueDepth: Int?
    /// `--replacement-timeout` (serve) or `--dead-connection-timeout` (attach).
    var replacementTimeout: Duration?
    /// `--poll-us`.
    var busyPollMicroseconds = 0
}

/// One session, planned: where to log in, as whom, with which settings.
struct SessionPlan: Sendable {
    var node: NodeID
    /// The LUN a URL names (nil: every LUN, or the first disk, as the command decides).
    var lun: UInt16?
    /// The resolved open-iscsi settings (timeouts the command itself needs, e.g. the kernel's).
    var settings: EffectiveNodeSettings
    var configuration: ISCSISessionConfiguration
}

/// The one way every command turns configuration into an iSCSI session: built-in defaults <
/// iscsid.conf < node record < command line. `serve`, `attach`, the daemon and the admin logins and
/// discovery all plan through it, so a key honoured by one is honoured by all.
struct SessionPlanner: Sendable {
    let configDirectory: String
    let iscsid: ConfigDocument
    let initiatorName: String
    let initiatorAlias: String?

    /// How a planner finds the initiator name when the command line gives none.
    enum InitiatorNameSource: Sendable {
        /// `initiatorname.iscsi`, written in iscsi-iname's form when missing, as iscsiadm and iscsid do
        /// (the admin modes and the daemon).
        case fileCreatingIfMissing
        /// `initiatorname.iscsi` if present, else a stable name from /etc/machine-id; nothing is written
        /// (`serve` and `attach`, which may run unprivileged on a read-only /etc).
        case fileOrMachineID
    }

    /// A planner over documents already read (tests).
    init(configDirectory: String, iscsid: ConfigDocument, initiatorName: String, initiatorAlias: String? = nil) {
        self.configDirectory = configDirectory
        self.iscsid = iscsid
        self.initiatorName = initiatorName
        self.initiatorAlias = initiatorAlias
    }

    /// Reads `configDirectory`'s iscsid.conf (none: built-in defaults) and the initiator name.
    init(configDirectory: String, initiatorName override: String? = nil,
         initiatorNameSource: InitiatorNameSource) throws {
        self.configDirectory = configDirectory
        iscsid = try ISCSIDConf.load(configDirectory: configDirectory)
        if let override {
            initiatorName = override
            initiatorAlias = nil
        } else {
            switch initiatorNameSource {
            case .fileCreatingIfMissing:
                let file = try InitiatorNameFile.loadOrCreate(configDirectory: configDirectory)
                initiatorName = file.name.rawValue
                initiatorAlias = file.alias
            case .fileOrMachineID:
                initiatorName = try InitiatorIdentity.defaultName(configDir: configDirectory)
                initiatorAlias = nil
            }
        }
    }

    /// A normal session to `node`, with its record's settings when there is one.
    func plan(node: NodeID, record: NodeRecord?, lun: UInt16? = nil, overrides: SessionOverrides) throws -> SessionPlan {
        var settings = try EffectiveNodeSettings.resolve(iscsid: iscsid, node: record)
        // --queue-depth wins; without a node record the bridge's own default is 128 (open-iscsi's is 32,
        // sized for the kernel's SCSI layer, not for one NBD export).
        if let depth = overrides.queueDepth ?? (record == nil ? 128 : nil) {
            settings.queueDepth = depth
            settings.cmdsMax = max(settings.cmdsMax, depth)
        }
        if let timeout = overrides.replacementTimeout { settings.replacementTimeout = timeout }
        var configuration = ISCSISessionConfiguration(node: node, settings: settings, initiatorName: initiatorName,
                                                      initiatorAlias: initiatorAlias)
        configuration.busyPollMicroseconds = overrides.busyPollMicroseconds
        if let chap = overrides.chap {
            configuration.chap = chap.credentials
            configuration.authNote = nil
        }
        return SessionPlan(node: node, lun: lun, settings: settings, configuration: configuration)
    }

    /// The session a URL names (no node record: iscsid.conf's defaults, then the URL and the flags).
    func plan(url: ISCSIURL, overrides: SessionOverrides) throws -> SessionPlan {
        try plan(node: NodeID(target: url.targetName, portal: url.portal, tpgt: 1), record: nil, lun: url.lun,
                 overrides: overrides)
    }

    /// The one record `-T TARGET [-p PORTAL]` names; an error that says what to do when there is none or
    /// several.
    func record(target: String?, portal: Portal?) throws -> NodeRecord {
        let records = try NodeDatabase(configDirectory: configDirectory).find(target: target, portal: portal)
        guard let record = records.first else {
            throw CommandFailure("no node record for \(target ?? "")\(portal.map { " at \($0)" } ?? "") in \(configDirectory)/nodes (run -m discovery first, or --op new)")
        }
        if records.count > 1 {
            throw CommandFailure("\(target ?? "") has \(records.count) portals: \(records.map { "\($0.id.portal)" }.joined(separator: ", ")); choose one with -p")
        }
        return record
    }

    /// A discovery session (SendTargets): `discovery.sendtargets.auth.*`, never the node credentials.
    func discovery(portal: Portal) throws -> ISCSISessionConfiguration {
        var configuration = ISCSISessionConfiguration(host: portal.host, port: portal.port, targetName: nil,
                                                      initiatorName: initiatorName)
        configuration.apply(auth: try EffectiveNodeSettings.resolveDiscoveryAuth(iscsid: iscsid))
        return configuration
    }
}
