import Foundation
import ISCSITestSupport
import Testing

/// The open-iscsi workflow with the binary's name swapped in: discovery (SendTargets and iSNS), node records
/// on disk, masked show, update, merge on rediscovery, logins with right and wrong credentials in each
/// direction, CHAP algorithm lists against tgt, config errors with line numbers, `serve -T`.
@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm", "isnsd", "isnsadm", "nbdinfo")))
struct AdminTests {
    static let disk = "iqn.2026-11.org.iscsi-nbd.test:admin-disk"
    static let other = "iqn.2026-11.org.iscsi-nbd.test:admin-other"

    let configDir: String

    init() throws {
        configDir = FileManager.default.temporaryDirectory.appendingPathComponent("etc-iscsi-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: configDir, withIntermediateDirectories: true)
    }

    /// Runs `iscsi-nbd ARGS --config-dir DIR`; returns status and combined output.
    @discardableResult
    func cli(_ args: [String], expectStatus: Int32? = 0) throws -> (status: Int32, out: String, err: String) {
        let r = try run(try iscsiNBDBinary(), args + ["--config-dir", configDir], allowFailure: true)
        if let expectStatus, r.status != expectStatus {
            throw TestPeerError("iscsi-nbd \(args.joined(separator: " ")) exited \(r.status), expected \(expectStatus): \(r.stderr)\(r.stdout)")
        }
        return (r.status, r.stdout, r.stderr)
    }

    func startTargets() throws -> TGTD {
        let tgt = try TGTD.start()
        try tgt.addTarget(tid: 1, iqn: Self.disk)
        try tgt.addLUN(tid: 1, lun: 1, backingFile: try tgt.makeBackingFile(name: "disk.img", size: 32 << 20))
        try tgt.addTarget(tid: 2, iqn: Self.other)
        try tgt.addLUN(tid: 2, lun: 1, backingFile: try tgt.makeBackingFile(name: "other.img", size: 16 << 20))
        return tgt
    }

    func recordPath(_ target: String, _ tgt: TGTD) -> String {
        "\(configDir)/nodes/\(target)/127.0.0.1,\(tgt.port),1/default"
    }

    @Test func sendTargetsDiscoveryRecordsNodesAndMergesOnRediscovery() throws {
        let tgt = try startTargets()
        defer { tgt.stop() }
        let out = try cli(["-m", "discovery", "-t", "sendtargets", "-p", tgt.portal]).out
        #expect(out == "127.0.0.1:\(tgt.port),1 \(Self.disk)\n127.0.0.1:\(tgt.port),1 \(Self.other)\n")
        // Records in open-iscsi's layout, mode 0600; the initiator name was generated once.
        for target in [Self.disk, Self.other] {
            let attrs = try FileManager.default.attributesOfItem(atPath: recordPath(target, tgt))
            #expect((attrs[.posixPermissions] as? NSNumber)?.intValue == 0o600)
            let text = try String(contentsOfFile: recordPath(target, tgt), encoding: .utf8)
            #expect(text.contains("node.name = \(target)"))
            #expect(text.contains("node.conn[0].address = 127.0.0.1"))
        }
        let initiator = try String(contentsOfFile: configDir + "/initiatorname.iscsi", encoding: .utf8)
        #expect(initiator.contains("InitiatorName=iqn."))
        #expect(try cli(["-m", "node"]).out == out)

        // The user changes a setting; the target set changes; rediscovery keeps the edit and reports the
        // vanished target without deleting its record.
        try cli(["-m", "node", "--targetname=\(Self.disk)", "--op", "update", "--name=node.session.queue_depth", "--value=16"])
        try tgt.tgtadm(["--op", "delete", "--force", "--mode", "target", "--tid", "2"])
        let again = try cli(["-m", "discovery", "-t", "st", "-p", tgt.portal])
        #expect(again.out == "127.0.0.1:\(tgt.port),1 \(Self.disk)\n")
        #expect(again.err.contains(Self.other) && again.err.contains("not found again"))
        #expect(FileManager.default.fileExists(atPath: recordPath(Self.other, tgt)))
        #expect(try String(contentsOfFile: recordPath(Self.disk, tgt), encoding: .utf8).contains("node.session.queue_depth = 16"))
        // Delete, and the listing says so as iscsiadm does (exit 21 when nothing is left).
        try cli(["-m", "node", "-T", Self.other, "--op", "delete"])
        try cli(["-m", "node", "-T", Self.disk, "--op", "delete"])
        let none = try cli(["-m", "node"], expectStatus: 21)
        #expect(none.err.contains("No records found"))
    }

    @Test func showMasksSecretsAndLoginUsesRecordCredentials() throws {
        let tgt = try startTargets()
        defer { tgt.stop() }
        try tgt.addAccount(tid: 1, user: "alice", password: "alice-secret-1")
        try tgt.addAccount(tid: 1, user: "target1", password: "target-secret-1", outgoing: true)
        try cli(["-m", "discovery", "-t", "st", "-p", tgt.portal])
        let set: [(String, String)] = [
            ("node.session.auth.authmethod", "CHAP"), ("node.session.auth.username", "alice"),
            ("node.session.auth.password", "alice-secret-1"),
        ]
        for (k, v) in set { try cli(["-m", "node", "-T", Self.disk, "--op", "update", "-n", k, "-v", v]) }
        let show = try cli(["-m", "node", "-T", Self.disk]).out
        #expect(show.contains("node.session.auth.password = ********"))
        #expect(!show.contains("alice-secret-1"))

        // One-way CHAP from the record: logs in, reports negotiated values and LUNs.
        let ok = try cli(["-m", "node", "-T", Self.disk, "--login"])
        #expect(ok.out.contains("Login to [iface: default, target: \(Self.disk), portal: 127.0.0.1,\(tgt.port)] successful."))
        #expect(ok.out.contains("MaxBurstLength") && ok.out.contains("LUNs: 0, 1"))
        #expect(!(ok.out + ok.err).contains("alice-secret-1"))

        // Wrong initiator secret: non-zero, says authentication failed, no secret in the output.
        try cli(["-m", "node", "-T", Self.disk, "-o", "update", "-n", "node.session.auth.password", "-v", "wrong-secret-9"])
        let bad = try cli(["-m", "node", "-T", Self.disk, "--login"], expectStatus: nil)
        #expect(bad.status != 0)
        #expect(bad.err.lowercased().contains("authentication failed"), "\(bad.err)")
        #expect(!(bad.out + bad.err).contains("wrong-secret-9"))

        // Mutual CHAP: the target must prove the incoming secret; a wrong one is the target's failure.
        try cli(["-m", "node", "-T", Self.disk, "-o", "update", "-n", "node.session.auth.password", "-v", "alice-secret-1"])
        try cli(["-m", "node", "-T", Self.disk, "-o", "update", "-n", "node.session.auth.username_in", "-v", "target1"])
        try cli(["-m", "node", "-T", Self.disk, "-o", "update", "-n", "node.session.auth.password_in", "-v", "target-secret-1"])
        #expect(try cli(["-m", "node", "-T", Self.disk, "--login"]).out.contains("successful"))
        try cli(["-m", "node", "-T", Self.disk, "-o", "update", "-n", "node.session.auth.password_in", "-v", "not-the-target"])
        let mutualBad = try cli(["-m", "node", "-T", Self.disk, "--login"], expectStatus: nil)
        #expect(mutualBad.status != 0)
        #expect(mutualBad.err.lowercased().contains("target"), "\(mutualBad.err)")
        #expect(!(mutualBad.out + mutualBad.err).contains("not-the-target"))
    }

    /// The Container Linux guide, literally: credentials in iscsid.conf and no authmethod line. Discovery
    /// seeds the records with `authmethod = None` (as open-iscsi does), and open-iscsi's rule still logs in
    /// with CHAP because credentials are set; one-way, then mutual; `-d 1` says the None was ignored, the
    /// verified login says which method was used, and `serve -T` serves the LUN the same way.
    @Test func guideCredentialsWithoutAuthmethodLogInWithCHAP() throws {
        let tgt = try startTargets()
        defer { tgt.stop() }
        try tgt.addAccount(tid: 1, user: "alice", password: "alice-secret-1")
        try """
            node.session.auth.username = alice
            node.session.auth.password = alice-secret-1

            """.write(toFile: configDir + "/iscsid.conf", atomically: true, encoding: .utf8)
        try cli(["-m", "discovery", "-t", "sendtargets", "-p", tgt.portal])
        #expect(try String(contentsOfFile: recordPath(Self.disk, tgt), encoding: .utf8).contains("node.session.auth.authmethod = None"))
        let oneWay = try cli(["-m", "node", "-T", Self.disk, "--login", "-d", "1"])
        #expect(oneWay.out.contains("successful") && oneWay.out.contains("\tAuthMethod: CHAP\n"), "\(oneWay.out)")
        #expect(oneWay.err.contains("authmethod = None") && oneWay.err.contains("is ignored"), "\(oneWay.err)")
        #expect(!(oneWay.out + oneWay.err).contains("alice-secret-1"))

        // Mutual CHAP, the guide's way: username_in/password_in in iscsid.conf before discovery.
        try tgt.addAccount(tid: 1, user: "target1", password: "target-secret-1", outgoing: true)
        try cli(["-m", "node", "-T", Self.disk, "--op", "delete"])
        try """
            node.session.auth.username = alice
            node.session.auth.password = alice-secret-1
            node.session.auth.username_in = target1
            node.session.auth.password_in = target-secret-1

            """.write(toFile: configDir + "/iscsid.conf", atomically: true, encoding: .utf8)
        try cli(["-m", "discovery", "-t", "sendtargets", "-p", tgt.portal])
        let mutual = try cli(["-m", "node", "-T", Self.disk, "--login"])
        #expect(mutual.out.contains("successful") && mutual.out.contains("\tAuthMethod: CHAP (mutual)\n"), "\(mutual.out)")
        // The per-target update of the guide, then a wrong incoming secret: the target fails to prove itself.
        try cli(["-m", "node", "--targetname=\(Self.disk)", "--op", "update", "--name=node.session.auth.password_in", "--value=not-it-at-all"])
        let bad = try cli(["-m", "node", "-T", Self.disk, "--login"], expectStatus: nil)
        #expect(bad.status != 0 && !(bad.out + bad.err).contains("not-it-at-all"))
        try cli(["-m", "node", "--targetname=\(Self.disk)", "--op", "update", "--name=node.session.auth.password_in", "--value=target-secret-1"])

        // serve -T uses the record the same way: the LUN is served (nbdinfo reads its size).
        let sock = FileManager.default.temporaryDirectory.appendingPathComponent("guide-\(UUID().uuidString.prefix(8)).sock").path
        let server = try ISCSINBDProcess(["serve", "-T", Self.disk, "--socket", sock, "--config-dir", configDir])
        try server.waitForSocket(sock)
        let info = try run("nbdinfo", ["--size", "nbd+unix:///?socket=\(sock)"]).stdout
        #expect(info.trimmingCharacters(in: .whitespacesAndNewlines) == String(32 << 20))
        #expect(try server.terminate() == 0)
        #expect(!server.output.contains("alice-secret-1") && !server.output.contains("target-secret-1"))
    }

    /// tgt knows CHAP_A 5 and 7 (and treats 7 as SHA-1): a strongest-first list must still log in.
    @Test func chapAlgorithmListsAgainstTgt() throws {
        let tgt = try startTargets()
        defer { tgt.stop() }
        try tgt.addAccount(tid: 1, user: "bob", password: "bob-secret-12")
        try cli(["-m", "node", "-T", Self.disk, "-p", tgt.portal, "--op", "new"])
        for (k, v) in [("node.session.auth.authmethod", "CHAP"), ("node.session.auth.username", "bob"),
                       ("node.session.auth.password", "bob-secret-12")] {
            try cli(["-m", "node", "-T", Self.disk, "--op", "update", "-n", k, "-v", v])
        }
        for algs in ["SHA3-256,SHA256,SHA1,MD5", "SHA256", "MD5"] {
            try cli(["-m", "node", "-T", Self.disk, "--op", "update", "-n", "node.session.auth.chap_algs", "-v", algs])
            for _ in 0..<3 {
                #expect(try cli(["-m", "node", "-T", Self.disk, "--login"]).out.contains("successful"), "chap_algs \(algs)")
            }
        }
    }

    @Test func configErrorsNameFileAndLine() throws {
        try "# comment\nnode.startup = manual\nthis line has no equals sign\n".write(
            toFile: configDir + "/iscsid.conf", atomically: true, encoding: .utf8)
        let r = try cli(["-m", "discovery", "-t", "st", "-p", "127.0.0.1:1"], expectStatus: nil)
        #expect(r.status != 0)
        #expect(r.err.contains("iscsid.conf:3"), "\(r.err)")
        try "node.session.queue_depth = lots\n".write(toFile: configDir + "/iscsid.conf", atomically: true, encoding: .utf8)
        let r2 = try cli(["-m", "discovery", "-t", "st", "-p", "127.0.0.1:1"], expectStatus: nil)
        #expect(r2.err.contains("iscsid.conf:1") && r2.err.contains("node.session.queue_depth"), "\(r2.err)")
    }

    @Test func unreachablePortalNamesAddress() throws {
        let port = try freeLoopbackPort()
        let r = try cli(["-m", "discovery", "-t", "st", "-p", "127.0.0.1:\(port)"], expectStatus: nil)
        #expect(r.status != 0)
        #expect(r.err.contains("127.0.0.1:\(port)"), "\(r.err)")
    }

    @Test func isnsDiscoveryWithPortalAndFromIscsidConf() throws {
        let tgt = try startTargets()
        defer { tgt.stop() }
        let isns = try ISNSD.start()
        defer { isns.stop() }
        try isns.register(entity: "tgt-entity", portal: tgt.portal, targets: [Self.disk, Self.other])
        let out = try cli(["-m", "discovery", "-t", "isns", "-p", isns.address]).out
        #expect(out.contains("127.0.0.1:\(tgt.port),"), "\(out)")
        #expect(out.contains(Self.disk) && out.contains(Self.other))
        // The same through isns.address / isns.port in iscsid.conf, as the open-iscsi guide configures it.
        try "isns.address = 127.0.0.1\nisns.port = \(isns.port)\n".write(
            toFile: configDir + "/iscsid.conf", atomically: true, encoding: .utf8)
        let again = try cli(["-m", "discovery", "-t", "isns"]).out
        #expect(again == out)
        #expect(try cli(["-m", "node"]).out.contains(Self.disk))
        // And a recorded node can be served: serve -T uses the record (the first direct-access LUN).
        let sock = FileManager.default.temporaryDirectory.appendingPathComponent("admin-\(UUID().uuidString.prefix(8)).sock").path
        let server = try ISCSINBDProcess(["serve", "-T", Self.disk, "--socket", sock, "--config-dir", configDir])
        try server.waitForSocket(sock)
        let info = try run("nbdinfo", ["--size", "nbd+unix:///?socket=\(sock)"]).stdout
        #expect(info.trimmingCharacters(in: .whitespacesAndNewlines) == String(32 << 20))
        #expect(try server.terminate() == 0)
    }

    @Test func sessionAndLogoutWithoutDaemonSayNoSessions() throws {
        let r = try cli(["-m", "session"], expectStatus: 21)
        #expect(r.err.contains("No active sessions"))
    }
}
