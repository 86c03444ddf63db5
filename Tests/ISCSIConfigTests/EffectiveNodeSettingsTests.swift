import Testing

@testable import ISCSIConfig

@Suite struct EffectiveNodeSettingsTests {
    let id = NodeID(target: "iqn.2026-11.test:disk1", portal: Portal(host: "192.0.2.10"), tpgt: 1)

    @Test func builtInDefaults() throws {
        let s = try EffectiveNodeSettings.resolve()
        #expect(s == EffectiveNodeSettings.defaults)
        #expect(s.auth.method == .none)
        #expect(s.auth.algorithms == [.md5])
        #expect(s.headerDigest == [.none] && s.dataDigest == [.none])
        #expect(s.replacementTimeout == .seconds(120))
    }

    @Test func precedenceDefaultsThenISCSIDThenNodeThenCommandLine() throws {
        let iscsid = try ISCSIDConf.parse("""
            node.session.queue_depth = 64
            node.session.cmds_max = 256
            node.conn[0].timeo.login_timeout = 30
            node.conn[0].iscsi.HeaderDigest = CRC32C,None
            """)
        var record = NodeRecord.new(id: id, iscsid: iscsid)
        // NodeRecord.new seeded these from iscsid.conf; now the user edits the record.
        record.document.set(ConfigKeys.cmdsMax, to: "512")
        record.document.set(ConfigKeys.loginTimeout, to: "45")
        let s = try EffectiveNodeSettings.resolve(iscsid: iscsid, node: record,
                                                  overrides: [(ConfigKeys.loginTimeout, "5"), (ConfigKeys.dataDigest, "CRC32C")])
        #expect(s.queueDepth == 64)                  // iscsid.conf (copied into the record)
        #expect(s.cmdsMax == 512)                    // node record beats iscsid.conf
        #expect(s.loginTimeout == .seconds(5))       // command line beats node record
        #expect(s.headerDigest == [.crc32c, .none])  // iscsid.conf
        #expect(s.dataDigest == [.crc32c])           // command line
        #expect(s.noopOutInterval == .seconds(5))    // built-in default
    }

    @Test func nodeRecordWithoutISCSIDLayer() throws {
        var record = NodeRecord(id: id, document: ConfigDocument())
        record.document.set(ConfigKeys.startup, to: "onboot")
        record.document.set(ConfigKeys.immediateData, to: "No")
        record.document.set(ConfigKeys.initialR2T, to: "Yes")
        let s = try EffectiveNodeSettings.resolve(node: record)
        #expect(s.startup == .onboot)
        #expect(s.immediateData == false && s.initialR2T == true)
    }

    @Test func chapCredentialsAndMutualCHAP() throws {
        let iscsid = try ISCSIDConf.parse("""
            node.session.auth.authmethod = CHAP
            node.session.auth.username = alice
            node.session.auth.password = alicesecret1
            node.session.auth.username_in = target
            node.session.auth.password_in = targetsecret2
            node.session.auth.chap_algs = SHA256,MD5
            """)
        let s = try EffectiveNodeSettings.resolve(iscsid: iscsid)
        #expect(s.auth.method == .chap)
        #expect(s.auth.initiator == CHAPCredentials(username: "alice", secret: "alicesecret1"))
        #expect(s.auth.target == CHAPCredentials(username: "target", secret: "targetsecret2"))
        #expect(s.auth.algorithms == [.sha256, .md5])
        // Secrets never show up in descriptions.
        for text in [s.description, s.auth.description, String(describing: s.auth.initiator), String(reflecting: s.auth.target)] {
            #expect(!text.contains("alicesecret1") && !text.contains("targetsecret2"))
        }
        #expect(s.description.contains("alice"))
    }

    /// open-iscsi's rule (usr/initiator_common.c iscsi_setup_authentication; iscsid.conf: authmethod "is
    /// checked for validity but then ignored"): no password, no CHAP, even with authmethod = CHAP.
    @Test func chapWithoutPasswordLogsInWithoutCHAPAsOpenISCSIDoes() throws {
        let iscsid = try ISCSIDConf.parse("node.session.auth.authmethod = CHAP\nnode.session.auth.username = u\n")
        let s = try EffectiveNodeSettings.resolve(iscsid: iscsid)
        #expect(s.auth.method == .none && s.auth.initiator == nil)
        #expect(s.auth.configuredMethod == .chap)
        #expect(s.auth.note?.contains("password is not set") == true)
        #expect(s.auth.note?.contains("iscsid.conf:1") == true, "the note says where authmethod came from")
    }

    @Test func halfSetOrIncomingOnlyCredentialsAreErrors() throws {
        let half = try ISCSIDConf.parse("""
            node.session.auth.authmethod = CHAP
            node.session.auth.username = u
            node.session.auth.password = p
            node.session.auth.username_in = t
            """)
        #expect { try EffectiveNodeSettings.resolve(iscsid: half) } throws: { ($0 as? ISCSIConfigError)?.key == "node.session.auth.username_in" }
        // Incoming credentials without outgoing ones: open-iscsi fails the login (EINVAL); we say why up front.
        let incomingOnly = try ISCSIDConf.parse("node.session.auth.username_in = t\nnode.session.auth.password_in = targetsecret9\n")
        #expect { try EffectiveNodeSettings.resolve(iscsid: incomingOnly) } throws: { error in
            let e = error as? ISCSIConfigError
            return e?.key == "node.session.auth.password" && e?.message.contains("targetsecret9") == false
        }
        let noUser = try ISCSIDConf.parse("node.session.auth.password = secret123456\n")
        #expect { try EffectiveNodeSettings.resolve(iscsid: noUser) } throws: { error in
            let e = error as? ISCSIConfigError
            return e?.key == "node.session.auth.username" && e?.message.contains("secret123456") == false
        }
    }

    /// The Container Linux guide's step, verbatim: credentials and no authmethod line.
    @Test func guideCredentialsWithoutAuthmethodUseCHAP() throws {
        let iscsid = try ISCSIDConf.parse("""
            node.session.auth.username = alice
            node.session.auth.password = alicesecret1
            """)
        let s = try EffectiveNodeSettings.resolve(iscsid: iscsid)
        #expect(s.auth.method == .chap && s.auth.configuredMethod == nil && s.auth.note == nil)
        #expect(s.auth.initiator == CHAPCredentials(username: "alice", secret: "alicesecret1"))
        #expect(s.auth.summary == "CHAP")
        let mutual = try ISCSIDConf.parse("""
            node.session.auth.username = alice
            node.session.auth.password = alicesecret1
            node.session.auth.username_in = tgt
            node.session.auth.password_in = targetsecret2
            """)
        let m = try EffectiveNodeSettings.resolve(iscsid: mutual)
        #expect(m.auth.method == .chap && m.auth.target == CHAPCredentials(username: "tgt", secret: "targetsecret2"))
        #expect(m.auth.summary == "CHAP (mutual)")
    }

    /// Discovery seeds records with `authmethod = None` (as open-iscsi does); credentials set later, or
    /// copied from iscsid.conf, still mean CHAP, and the note says the None was ignored.
    @Test func authmethodNoneWithCredentialsStillUsesCHAP() throws {
        let iscsid = try ISCSIDConf.parse("node.session.auth.username = alice\nnode.session.auth.password = alicesecret1\n")
        var record = NodeRecord(id: NodeID(target: "iqn.2026-11.test:a", portal: Portal(host: "192.0.2.1"), tpgt: 1),
                                document: ConfigDocument())
        record.document.set(ConfigKeys.authMethod, to: "None")
        let s = try EffectiveNodeSettings.resolve(iscsid: iscsid, node: record)
        #expect(s.auth.method == .chap && s.auth.configuredMethod == AuthMethod.none)
        #expect(s.auth.note?.contains("is ignored") == true)
        #expect(s.auth.note?.contains("node record") == true)
        #expect(s.auth.note?.contains("alicesecret1") == false)
        #expect(!s.description.contains("alicesecret1"))
    }

    @Test func commandLineCanTurnCHAPOff() throws {
        let iscsid = try ISCSIDConf.parse("node.session.auth.authmethod = CHAP\n")
        let s = try EffectiveNodeSettings.resolve(iscsid: iscsid, overrides: [(ConfigKeys.authMethod, "None")])
        #expect(s.auth.method == .none && s.auth.initiator == nil)
    }

    @Test func firstBurstMustNotExceedMaxBurst() throws {
        let iscsid = try ISCSIDConf.parse("node.session.iscsi.FirstBurstLength = 1048576\n")
        #expect {
            try EffectiveNodeSettings.resolve(iscsid: iscsid, overrides: [(ConfigKeys.maxBurstLength, "65536")])
        } throws: { error in
            let e = error as? ISCSIConfigError
            return e?.key == ConfigKeys.firstBurstLength && e?.message.contains("iscsid.conf:1") == true
                && e?.message.contains("command line") == true
        }
    }

    @Test func invalidOverrideNamesTheCommandLine() {
        #expect {
            try EffectiveNodeSettings.resolve(overrides: [(ConfigKeys.queueDepth, "many")])
        } throws: { ($0 as? ISCSIConfigError)?.file == "command line" && ($0 as? ISCSIConfigError)?.code == .invalidValue }
    }

    @Test func discoveryAuth() throws {
        let iscsid = try ISCSIDConf.parse("""
            node.session.auth.authmethod = None
            discovery.sendtargets.auth.authmethod = CHAP
            discovery.sendtargets.auth.username = disc
            discovery.sendtargets.auth.password = discsecret12
            """)
        let auth = try EffectiveNodeSettings.resolveDiscoveryAuth(iscsid: iscsid)
        #expect(auth.method == .chap)
        #expect(auth.initiator?.username == "disc")
        #expect(auth.target == nil)
        #expect(try EffectiveNodeSettings.resolve(iscsid: iscsid).auth.method == .none)
        // The same rule as node sessions: discovery credentials without an authmethod line mean CHAP.
        let guide = try ISCSIDConf.parse("""
            discovery.sendtargets.auth.username = disc
            discovery.sendtargets.auth.password = discsecret12
            discovery.sendtargets.auth.username_in = tgt
            discovery.sendtargets.auth.password_in = tgtsecret345
            """)
        let g = try EffectiveNodeSettings.resolveDiscoveryAuth(iscsid: guide)
        #expect(g.method == .chap && g.target?.username == "tgt" && g.note == nil)
        let none = try ISCSIDConf.parse("discovery.sendtargets.auth.authmethod = None\n" + "discovery.sendtargets.auth.username = disc\ndiscovery.sendtargets.auth.password = discsecret12\n")
        let n = try EffectiveNodeSettings.resolveDiscoveryAuth(iscsid: none)
        #expect(n.method == .chap && n.note?.contains("discovery.sendtargets.auth.authmethod") == true)
    }
}

@Suite struct RedactionAndISNSSettingsTests {
    @Test func secretsNeverAppearInDescriptionsOrDumps() throws {
        let doc = try ISCSIDConf.parse("node.session.auth.password = hunter2hunter2\nnode.session.auth.username = bob\n")
        let record = NodeRecord(id: NodeID(target: "iqn.2026-11.test:a", portal: Portal(host: "192.0.2.1"), tpgt: 1), document: doc)
        let creds = CHAPCredentials(username: "bob", secret: "hunter2hunter2")
        var dumped = ""
        dump(record, to: &dumped)
        dump(creds, to: &dumped)
        dump(doc, to: &dumped)
        let texts = [doc.description, String(reflecting: doc), record.description, String(reflecting: record),
                     "\(doc.entries)", creds.description, String(reflecting: creds), dumped]
        for text in texts {
            #expect(!text.contains("hunter2"), "leaked in: \(text)")
        }
        #expect(doc.description.contains("node.session.auth.password = ********"))
        #expect(doc.description.contains("bob"))
        // The file itself does keep the secret.
        #expect(record.render().contains("hunter2hunter2"))
    }

    @Test func isnsServerFromISCSIDConf() throws {
        #expect(try ISNSServerSettings.resolve(iscsid: ConfigDocument()) == nil)
        let doc = try ISCSIDConf.parse("isns.address = 192.0.2.5\n")
        #expect(try ISNSServerSettings.resolve(iscsid: doc) == ISNSServerSettings(address: "192.0.2.5", port: 3205))
        let withPort = try ISCSIDConf.parse("isns.address = isns.example\nisns.port = 3206\n")
        #expect(try ISNSServerSettings.resolve(iscsid: withPort) == ISNSServerSettings(address: "isns.example", port: 3206))
        let bad = try ConfigDocument.parse("isns.address = x\nisns.port = 99999\n")
        #expect { try ISNSServerSettings.resolve(iscsid: bad, file: "c") } throws: { ($0 as? ISCSIConfigError)?.line == 2 }
    }
}
