import Foundation
import ISCSITestSupport
import Testing

@testable import ISCSIConfig

/// Node records written by open-iscsi's iscsiadm are read, edited and written back by us, and
/// iscsiadm reads what we write.
@Suite(.serialized, .enabled(if: ISCSIAdm.available), .timeLimit(.minutes(1)))
struct OpenISCSICompatibilityTests {
    func setUp() throws -> (TempDir, ISCSIAdm, NodeDatabase) {
        let dir = try TempDir()
        try "InitiatorName=iqn.2005-03.org.open-iscsi:0123456789ab\n"
            .write(toFile: dir.path + "/initiatorname.iscsi", atomically: true, encoding: .utf8)
        try (try Fixtures.debianISCSIDConf).write(toFile: dir.path + "/iscsid.conf", atomically: true, encoding: .utf8)
        return (dir, try ISCSIAdm(directory: dir.path), NodeDatabase(configDirectory: dir.path))
    }

    @Test func recordCreatedByISCSIAdmIsReadEditedAndReadBack() throws {
        let (dir, iscsiadm, db) = try setUp()
        _ = dir
        try iscsiadm(["-m", "node", "-o", "new", "-T", "iqn.2026-11.test:disk1", "-p", "127.0.0.1:3260,1"])
        let id = NodeID(target: "iqn.2026-11.test:disk1", portal: Portal(host: "127.0.0.1", port: 3260), tpgt: 1)
        #expect(try db.list() == [id])
        let record = try db.load(id)
        #expect(record[ConfigKeys.nodeName] == "iqn.2026-11.test:disk1")
        #expect(record.document.lines.first == .comment("# BEGIN RECORD 2.1.8"))
        let settings = try EffectiveNodeSettings.resolve(iscsid: try ISCSIDConf.load(configDirectory: dir.path), node: record)
        #expect(settings.cmdsMax == 128)

        try db.update(id, key: ConfigKeys.queueDepth, value: "16")
        try db.update(id, key: ConfigKeys.authMethod, value: "CHAP")
        try db.update(id, key: ConfigKeys.username, value: "alice")
        try db.update(id, key: ConfigKeys.password, value: "alicesecret12")
        // Everything else of iscsiadm's record is still there, in order.
        let before = try String(contentsOfFile: db.path(for: id), encoding: .utf8)
        #expect(before.contains("iface.tcp_timer_scale = 0\n"))

        let shown = try iscsiadm(["-m", "node", "-T", "iqn.2026-11.test:disk1", "-p", "127.0.0.1:3260,1", "-o", "show"])
        #expect(shown.contains("node.session.queue_depth = 16"))
        #expect(shown.contains("node.session.auth.authmethod = CHAP"))
        #expect(shown.contains("node.session.auth.username = alice"))
        #expect(shown.contains("node.session.auth.password = ********"))
        // iscsiadm can update what we wrote, and we read its update.
        try iscsiadm(["-m", "node", "-T", "iqn.2026-11.test:disk1", "-p", "127.0.0.1:3260,1", "-o", "update",
                      "-n", "node.session.cmds_max", "-v", "64"])
        let reread = try db.load(id)
        #expect(reread[ConfigKeys.cmdsMax] == "64")
        #expect(reread[ConfigKeys.password] == "alicesecret12")
    }

    @Test func recordCreatedByUsIsListedAndShownByISCSIAdm() throws {
        let (dir, iscsiadm, db) = try setUp()
        let iscsid = try ISCSIDConf.load(configDirectory: dir.path)
        let id = NodeID(target: "iqn.2026-11.test:disk2", portal: Portal(host: "127.0.0.1", port: 3261), tpgt: 2)
        var record = NodeRecord.new(id: id, iscsid: iscsid,
                                    discovery: DiscoverySource(kind: .sendTargets, address: "127.0.0.1", port: 3261))
        record.document.set(ConfigKeys.startup, to: "automatic")
        record.document.set(ConfigKeys.authMethod, to: "CHAP")
        record.document.set(ConfigKeys.username, to: "bob")
        record.document.set(ConfigKeys.password, to: "bobsecret1234")
        try db.create(record)

        let list = try iscsiadm(["-m", "node"])
        #expect(list.contains("127.0.0.1:3261,2 iqn.2026-11.test:disk2"))
        let shown = try iscsiadm(["-m", "node", "-T", "iqn.2026-11.test:disk2", "-p", "127.0.0.1:3261,2", "-o", "show"])
        for line in ["node.startup = automatic", "node.session.auth.username = bob", "node.session.auth.password = ********",
                     "node.discovery_address = 127.0.0.1", "node.discovery_type = send_targets", "node.conn[0].port = 3261",
                     "node.session.iscsi.MaxBurstLength = 16776192", "node.tpgt = 2"] {
            #expect(shown.contains(line + "\n"), "missing: \(line)")
        }
        #expect(!shown.contains("bobsecret1234"))
        // Our own show() masks the same way.
        #expect(try db.show(id).contains("node.session.auth.password = ********\n"))
        // iscsiadm deletes what we wrote.
        try iscsiadm(["-m", "node", "-T", "iqn.2026-11.test:disk2", "-p", "127.0.0.1:3261,2", "-o", "delete"])
        #expect(try db.list().isEmpty)
    }
}
