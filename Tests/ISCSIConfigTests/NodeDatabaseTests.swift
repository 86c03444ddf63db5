import Foundation
import Testing

@testable import ISCSIConfig

@Suite struct NodeDatabaseTests {
    let target = "iqn.2026-11.test:disk1"
    let portal = Portal(host: "192.0.2.10", port: 3260)

    func mode(_ path: String) throws -> Int {
        let attrs = try FileManager.default.attributesOfItem(atPath: path)
        return (attrs[.posixPermissions] as? NSNumber)?.intValue ?? -1
    }

    @Test func newRecordUsesOpenISCSILayoutAndKeys() throws {
        let iscsid = try ISCSIDConf.parse("node.startup = automatic\nnode.session.queue_depth = 64\nnode.session.err_timeo.abort_timeout = 20\n")
        let id = NodeID(target: target, portal: portal, tpgt: 1)
        let record = NodeRecord.new(id: id, iscsid: iscsid, discovery: DiscoverySource(kind: .sendTargets, address: "192.0.2.10", port: 3260))
        let text = record.render()
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.first == "# BEGIN RECORD 2.1.8")
        #expect(lines.last == "# END RECORD")
        #expect(lines[1] == "node.name = iqn.2026-11.test:disk1")
        #expect(lines[2] == "node.tpgt = 1")
        #expect(lines[3] == "node.startup = automatic")
        #expect(lines.contains("iface.iscsi_ifacename = default"))
        #expect(lines.contains("node.discovery_address = 192.0.2.10"))
        #expect(lines.contains("node.discovery_port = 3260"))
        #expect(lines.contains("node.discovery_type = send_targets"))
        #expect(lines.contains("node.session.queue_depth = 64"))
        #expect(lines.contains("node.session.err_timeo.abort_timeout = 20"))
        #expect(lines.contains("node.conn[0].address = 192.0.2.10"))
        #expect(lines.contains("node.conn[0].port = 3260"))
        // Empty credentials are not written (as open-iscsi does).
        #expect(!text.contains("node.session.auth.username"))
        // The record parses back and validates.
        let parsed = try NodeRecord.parse(text, id: id)
        #expect(parsed.document["node.session.queue_depth"] == "64")
        #expect(parsed.discoverySource == DiscoverySource(kind: .sendTargets, address: "192.0.2.10", port: 3260))
    }

    @Test func createListFindUpdateShowDelete() throws {
        let dir = try TempDir()
        let db = NodeDatabase(configDirectory: dir.path)
        #expect(try db.list().isEmpty)
        let id = NodeID(target: target, portal: portal, tpgt: 1)
        let id2 = NodeID(target: "iqn.2026-11.test:disk2", portal: Portal(host: "fd00::1", port: 3261), tpgt: 2)
        try db.create(NodeRecord.new(id: id))
        try db.create(NodeRecord.new(id: id2))
        #expect { try db.create(NodeRecord.new(id: id)) } throws: { ($0 as? ISCSIConfigError)?.code == .alreadyExists }

        let path = dir.path + "/nodes/iqn.2026-11.test:disk1/192.0.2.10,3260,1/default"
        #expect(FileManager.default.fileExists(atPath: path))
        #expect(FileManager.default.fileExists(atPath: dir.path + "/nodes/iqn.2026-11.test:disk2/fd00::1,3261,2/default"))
        #expect(try mode(path) == 0o600)
        #expect(try db.list() == [id, id2])
        #expect(try db.find(target: target).map(\.id) == [id])
        #expect(try db.find(portal: Portal(host: "fd00::1", port: 3261)).map(\.id) == [id2])
        #expect(try db.find(target: target, portal: Portal(host: "fd00::1", port: 3261)).isEmpty)

        // Update with validation; the secret is stored, shown masked, and the file stays 0600.
        try db.update(id, key: ConfigKeys.authMethod, value: "CHAP")
        try db.update(id, key: ConfigKeys.username, value: "alice")
        try db.update(id, key: ConfigKeys.password, value: "supersecret12")
        #expect(try mode(path) == 0o600)
        let stored = try String(contentsOfFile: path, encoding: .utf8)
        #expect(stored.contains("node.session.auth.password = supersecret12"))
        let shown = try db.show(id)
        #expect(shown.contains("node.session.auth.password = ********"))
        #expect(shown.contains("node.session.auth.username = alice"))
        #expect(!shown.contains("supersecret12"))
        // New keys go before the END RECORD marker.
        #expect(stored.hasSuffix("# END RECORD\n"))

        #expect { try db.update(id, key: ConfigKeys.queueDepth, value: "0") } throws: { ($0 as? ISCSIConfigError)?.code == .invalidValue }
        #expect { try db.update(id, key: ConfigKeys.nodeName, value: "iqn.2026-11.test:other") } throws: { ($0 as? ISCSIConfigError)?.code == .invalidValue }
        #expect { try db.update(id, key: "node.sesion.typo", value: "1") } throws: { ($0 as? ISCSIConfigError)?.code == .invalidValue }
        // Unknown keys already in the record may be changed.
        try db.update(id, key: "node.session.err_timeo.abort_timeout", value: "25")
        #expect(try db.load(id)["node.session.err_timeo.abort_timeout"] == "25")
        // Empty value removes the key.
        try db.update(id, key: ConfigKeys.password, value: "")
        #expect(try db.load(id)[ConfigKeys.password] == nil)

        // Atomic writes leave no temporary files behind.
        let portalDir = dir.path + "/nodes/iqn.2026-11.test:disk1/192.0.2.10,3260,1"
        #expect(try FileManager.default.contentsOfDirectory(atPath: portalDir) == ["default"])

        try db.delete(id)
        #expect(try db.list() == [id2])
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/nodes/iqn.2026-11.test:disk1"))
        #expect { try db.delete(id) } throws: { ($0 as? ISCSIConfigError)?.code == .notFound }
        #expect { try db.load(id) } throws: { ($0 as? ISCSIConfigError)?.code == .notFound }
    }

    @Test func recordsWrittenByOpenISCSIAreReadAndKeptLossless() throws {
        let dir = try TempDir()
        let db = NodeDatabase(configDirectory: dir.path)
        let id = NodeID(target: target, portal: portal, tpgt: 1)
        // Shape of an iscsiadm-written record, including keys we do not interpret.
        let text = """
            # BEGIN RECORD 2.1.8
            node.name = iqn.2026-11.test:disk1
            node.tpgt = 1
            node.startup = automatic
            node.leading_login = No
            iface.iscsi_ifacename = default
            iface.transport_name = tcp
            iface.vlan_id = 0
            node.discovery_address = 192.0.2.10
            node.discovery_port = 3260
            node.discovery_type = send_targets
            node.session.auth.authmethod = None
            node.session.auth.chap_algs = MD5
            node.session.iscsi.FastAbort = Yes
            node.conn[0].address = 192.0.2.10
            node.conn[0].port = 3260
            node.conn[0].iscsi.IFMarker = No
            # END RECORD

            """
        let recordDir = dir.path + "/nodes/\(target)/192.0.2.10,3260,1"
        try FileManager.default.createDirectory(atPath: recordDir, withIntermediateDirectories: true)
        try text.write(toFile: recordDir + "/default", atomically: true, encoding: .utf8)
        #expect(try db.list() == [id])
        #expect(try db.load(id).render() == text)
        try db.update(id, key: ConfigKeys.queueDepth, value: "16")
        let after = try String(contentsOfFile: recordDir + "/default", encoding: .utf8)
        #expect(after == text.replacingOccurrences(of: "node.conn[0].iscsi.IFMarker = No\n# END RECORD",
                                                   with: "node.conn[0].iscsi.IFMarker = No\nnode.session.queue_depth = 16\n# END RECORD"))
    }

    @Test func strayEntriesInTheNodesDirectoryAreSkipped() throws {
        let dir = try TempDir()
        let db = NodeDatabase(configDirectory: dir.path)
        let id = NodeID(target: target, portal: portal, tpgt: 1)
        try db.create(NodeRecord.new(id: id))
        let targetDir = dir.path + "/nodes/\(target)"
        // open-iscsi's old-style record file, a junk directory, a bad port, a stray file.
        try "node.name = x\n".write(toFile: targetDir + "/192.0.2.10,3260", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: targetDir + "/notaportal", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: targetDir + "/192.0.2.10,99999,1", withIntermediateDirectories: true)
        try "x".write(toFile: dir.path + "/nodes/README", atomically: true, encoding: .utf8)
        #expect(try db.list() == [id])
    }

    @Test func recordContradictingItsPathIsRejected() throws {
        let id = NodeID(target: target, portal: portal, tpgt: 1)
        #expect {
            try NodeRecord.parse("node.name = iqn.2026-11.test:other\n", id: id, file: "f")
        } throws: { ($0 as? ISCSIConfigError)?.code == .invalidRecord && ($0 as? ISCSIConfigError)?.line == 1 }
        #expect {
            try NodeRecord.parse("node.tpgt = 1\nnode.session.cmds_max = 3\n", id: id, file: "f")
        } throws: { ($0 as? ISCSIConfigError)?.code == .invalidValue && ($0 as? ISCSIConfigError)?.line == 2 }
    }

    @Test(arguments: ["../../etc", "a/b", ".hidden", "", "x\u{0}y"])
    func hostileNamesCannotEscapeTheNodesDirectory(name: String) throws {
        let dir = try TempDir()
        let db = NodeDatabase(configDirectory: dir.path)
        let bad = NodeID(target: name, portal: portal, tpgt: 1)
        #expect { try db.create(NodeRecord.new(id: bad)) } throws: { ($0 as? ISCSIConfigError)?.code == .invalidName }
        let badHost = NodeID(target: target, portal: Portal(host: name, port: 3260), tpgt: 1)
        #expect { try db.create(NodeRecord.new(id: badHost)) } throws: { ($0 as? ISCSIConfigError)?.code == .invalidName }
        #expect(try db.list().isEmpty)
    }

    @Test(arguments: [
        ("192.0.2.1", "192.0.2.1", 3260),
        ("192.0.2.1:3261", "192.0.2.1", 3261),
        ("192.0.2.1:3261,1", "192.0.2.1", 3261),
        ("[fd00::1]:3262", "fd00::1", 3262),
        ("[fd00::1]", "fd00::1", 3260),
        ("fd00::1", "fd00::1", 3260),
        ("target.example", "target.example", 3260),
    ])
    func portalParsing(text: String, host: String, port: Int) throws {
        #expect(try Portal(parsing: text) == Portal(host: host, port: port))
    }

    @Test(arguments: ["", ":3260", "host:0", "host:99999", "host:x", "[fd00::1", "[fd00::1]x"])
    func badPortals(text: String) {
        #expect(throws: ISCSIConfigError.self) { try Portal(parsing: text) }
    }
}

@Suite struct RediscoveryTests {
    let source = DiscoverySource(kind: .sendTargets, address: "192.0.2.10", port: 3260)
    let p = Portal(host: "192.0.2.10", port: 3260)

    @Test func pureMergePlan() {
        let a = DiscoveredNode(target: "iqn.2026-11.test:a", portal: p, tpgt: 1)
        let b = DiscoveredNode(target: "iqn.2026-11.test:b", portal: p, tpgt: 1)
        let c = DiscoveredNode(target: "iqn.2026-11.test:c", portal: p, tpgt: 1)
        let other = DiscoverySource(kind: .sendTargets, address: "192.0.2.99", port: 3260)
        let z = NodeID(target: "iqn.2026-11.test:z", portal: Portal(host: "192.0.2.99"), tpgt: 1)
        let result = RediscoveryResult.plan(
            discovered: [b, c],
            existing: [(a.nodeID(), source), (b.nodeID(), source), (z, other)],
            source: source)
        #expect(result.added == [c.nodeID()])
        #expect(result.kept == [b.nodeID()])
        #expect(result.vanished == [a.nodeID()])  // z came from another source: not reported
    }

    @Test func rediscoveryPreservesUserEditsAndReportsVanished() throws {
        let dir = try TempDir()
        let db = NodeDatabase(configDirectory: dir.path)
        let iscsid = try ISCSIDConf.parse("node.session.queue_depth = 64\n")
        let a = DiscoveredNode(target: "iqn.2026-11.test:a", portal: p, tpgt: 1)
        let b = DiscoveredNode(target: "iqn.2026-11.test:b", portal: p, tpgt: 1)
        let first = try db.applyDiscovery([a, b], source: source, iscsid: iscsid)
        #expect(first.added == [a.nodeID(), b.nodeID()])
        #expect(first.vanished.isEmpty)
        #expect(try db.load(a.nodeID())[ConfigKeys.queueDepth] == "64")

        // The user edits a's record; a manually created record is not from this source.
        try db.update(a.nodeID(), key: ConfigKeys.queueDepth, value: "8")
        try db.update(a.nodeID(), key: ConfigKeys.startup, value: "automatic")
        let manual = NodeID(target: "iqn.2026-11.test:manual", portal: Portal(host: "192.0.2.50"), tpgt: 1)
        try db.create(NodeRecord.new(id: manual))
        let before = try db.load(a.nodeID()).render()

        // Target b disappears, c appears.
        let c = DiscoveredNode(target: "iqn.2026-11.test:c", portal: p, tpgt: 1)
        let second = try db.applyDiscovery([a, c], source: source, iscsid: iscsid)
        #expect(second.added == [c.nodeID()])
        #expect(second.kept == [a.nodeID()])
        #expect(second.vanished == [b.nodeID()])
        #expect(try db.load(a.nodeID()).render() == before)
        #expect(try db.list() == [a.nodeID(), b.nodeID(), c.nodeID(), manual])  // nothing deleted
    }

    @Test func hostileDiscoveredNamesAreRejectedBeforeWriting() throws {
        let dir = try TempDir()
        let db = NodeDatabase(configDirectory: dir.path)
        let evil = DiscoveredNode(target: "../../../tmp/evil", portal: p, tpgt: 1)
        #expect(throws: ISCSIConfigError.self) { try db.applyDiscovery([evil], source: source, iscsid: ConfigDocument()) }
        #expect(try db.list().isEmpty)
    }
}
