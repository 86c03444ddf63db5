import ISCSIClient
import ISCSIConfig
import ISCSIProtocol
import Testing

@testable import ISCSINBDCommand

/// Resolved open-iscsi settings reach the session configuration intact (no IO).
@Suite struct NodeSessionMappingTests {
    let iscsid = try! ISCSIDConf.parse("""
        node.session.auth.authmethod = CHAP
        node.session.auth.username = nodeuser
        node.session.auth.password = nodesecret
        node.session.auth.username_in = tgtuser
        node.session.auth.password_in = tgtsecret
        node.session.auth.chap_algs = SHA256,MD5
        discovery.sendtargets.auth.authmethod = CHAP
        discovery.sendtargets.auth.username = discouser
        discovery.sendtargets.auth.password = discosecret
        node.session.iscsi.InitialR2T = Yes
        node.session.iscsi.FirstBurstLength = 65536
        node.conn[0].iscsi.HeaderDigest = CRC32C,None
        node.session.queue_depth = 64
        node.session.cmds_max = 32
        node.conn[0].timeo.noop_out_interval = 0
        """)

    @Test func discoveryUsesDiscoveryCredentialsOnly() throws {
        let c = try SessionPlanner(configDirectory: "/nonexistent", iscsid: iscsid, initiatorName: "iqn.2026-11.x:i")
            .discovery(portal: Portal(host: "10.0.0.1", port: 3260))
        #expect(c.targetName == nil)
        #expect(c.chap?.username == "discouser")
        #expect(c.chap?.secret == "discosecret")
        #expect(c.chap?.mutual == nil)
    }

    @Test func nodeSettingsMapToTheSession() throws {
        let id = NodeID(target: "iqn.2026-11.x:t", portal: Portal(host: "10.0.0.1", port: 3261), tpgt: 1)
        let s = try EffectiveNodeSettings.resolve(iscsid: iscsid)
        let c = ISCSISessionConfiguration(node: id, settings: s, initiatorName: "iqn.2026-11.x:i", initiatorAlias: nil)
        #expect(c.host == "10.0.0.1" && c.port == 3261 && c.targetName == "iqn.2026-11.x:t")
        #expect(c.chap?.username == "nodeuser" && c.chap?.secret == "nodesecret")
        #expect(c.chap?.mutual?.username == "tgtuser" && c.chap?.mutual?.secret == "tgtsecret")
        #expect(c.chapAlgorithms == [.sha256, .md5])
        #expect(c.proposal.initialR2T == true)
        #expect(c.proposal.firstBurstLength == 65536)
        #expect(c.proposal.headerDigests == [.crc32c, .none])
        #expect(c.queueDepth == 32, "cmds_max caps the queue depth")
        #expect(c.noopOutInterval == nil, "noop_out_interval = 0 turns pings off")
    }

    /// open-iscsi ignores authmethod: credentials set means CHAP, even with authmethod = None.
    @Test func authMethodNoneWithCredentialsStillUsesCHAP() throws {
        let doc = try ISCSIDConf.parse("node.session.auth.authmethod = None\nnode.session.auth.username = u\nnode.session.auth.password = p\n")
        let id = NodeID(target: "iqn.2026-11.x:t", portal: Portal(host: "h"), tpgt: 1)
        let c = ISCSISessionConfiguration(node: id, settings: try EffectiveNodeSettings.resolve(iscsid: doc),
                                          initiatorName: "iqn.2026-11.x:i", initiatorAlias: nil)
        #expect(c.chap?.username == "u" && c.chap?.secret == "p")
        #expect(c.authSummary == "CHAP")
        #expect(c.authNote?.contains("authmethod = None") == true)
        let plain = try ISCSIDConf.parse("node.session.auth.username = u\n")
        let p = ISCSISessionConfiguration(node: id, settings: try EffectiveNodeSettings.resolve(iscsid: plain),
                                          initiatorName: "iqn.2026-11.x:i", initiatorAlias: nil)
        #expect(p.chap == nil && p.authSummary == "None" && p.authNote == nil)
    }
}

/// Every command plans its session through SessionPlanner: built-in defaults < iscsid.conf < node record <
/// command line (no IO: documents in memory).
@Suite struct SessionPlannerTests {
    let planner = SessionPlanner(
        configDirectory: "/nonexistent",
        iscsid: try! ISCSIDConf.parse("""
            node.session.timeo.replacement_timeout = 30
            node.session.queue_depth = 16
            node.session.auth.username = confuser
            node.session.auth.password = confsecret1
            """),
        initiatorName: "iqn.2026-12.x:init")
    let url = try! ISCSIURL(parsing: "iscsi://10.0.0.9:3261/iqn.2026-12.x:t/2")

    @Test func urlPlansHonourISCSIDConf() throws {
        let plan = try planner.plan(url: url, overrides: SessionOverrides())
        #expect(plan.node == NodeID(target: "iqn.2026-12.x:t", portal: Portal(host: "10.0.0.9", port: 3261), tpgt: 1))
        #expect(plan.lun == 2)
        #expect(plan.settings.replacementTimeout == .seconds(30), "attach and serve take iscsid.conf's timeouts")
        #expect(plan.configuration.replacementTimeout == .seconds(30))
        #expect(plan.configuration.chap?.username == "confuser")
        #expect(plan.configuration.queueDepth == 128, "without a record the bridge's default depth, not iscsid.conf's 16")
        #expect(plan.configuration.initiatorName == "iqn.2026-12.x:init")
    }

    @Test func commandLineWins() throws {
        let chap = ResolvedCHAP(username: "cli", secret: "clisecret99", targetUsername: nil, targetSecret: nil)
        let plan = try planner.plan(url: url, overrides: SessionOverrides(
            chap: chap, queueDepth: 8, replacementTimeout: .seconds(5), busyPollMicroseconds: 50))
        #expect(plan.configuration.chap?.username == "cli" && plan.configuration.authNote == nil)
        #expect(plan.configuration.queueDepth == 8 && plan.configuration.replacementTimeout == .seconds(5))
        #expect(plan.settings.replacementTimeout == .seconds(5))
        #expect(plan.configuration.busyPollMicroseconds == 50)
    }

    @Test func recordsSitBetweenISCSIDConfAndTheCommandLine() throws {
        let id = NodeID(target: "iqn.2026-12.x:t", portal: Portal(host: "10.0.0.9"), tpgt: 1)
        var record = NodeRecord(id: id, document: ConfigDocument())
        record.document.set(ConfigKeys.replacementTimeout, to: "45")
        let plan = try planner.plan(node: id, record: record, overrides: SessionOverrides())
        #expect(plan.settings.replacementTimeout == .seconds(45))
        #expect(plan.configuration.queueDepth == 16, "a record keeps open-iscsi's queue depth")
        #expect(try planner.plan(node: id, record: record, overrides: SessionOverrides(queueDepth: 64)).configuration.queueDepth == 64)
    }
}
