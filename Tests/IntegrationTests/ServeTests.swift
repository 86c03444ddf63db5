import Foundation
import ISCSITestSupport
import Testing

/// `iscsi-nbd serve` end to end: a private tgtd, the real binary, and real NBD clients (nbdcopy, nbdsh's
/// Python libnbd, fio's nbd engine). Data is checked byte for byte against the target's backing file.
@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm", "nbdcopy", "nbdinfo", "fio")))
struct ServeTests {
    static let iqn = "iqn.2026-11.org.iscsi-nbd.test:serve"

    /// tgtd with target 1 = `iqn`, LUN 1 = a sparse file of `size` bytes.
    func startTarget(size: UInt64) throws -> (TGTD, String) {
        let tgt = try TGTD.start()
        let file = try tgt.makeBackingFile(name: "lun1.img", size: size)
        try tgt.addTarget(tid: 1, iqn: Self.iqn)
        try tgt.addLUN(tid: 1, lun: 1, backingFile: file)
        return (tgt, file)
    }

    func serve(_ tgt: TGTD, lun: Int = 1, user: String? = nil, extra: [String] = [],
               environment: [String: String] = [:]) throws -> (ISCSINBDProcess, String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sock-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let sock = dir.appendingPathComponent("nbd.sock").path
        let auth = user.map { "\($0)@" } ?? ""
        let p = try ISCSINBDProcess(["serve", "iscsi://\(auth)\(tgt.portal)/\(Self.iqn)/\(lun)", "--socket", sock] + extra,
                                    environment: environment)
        try p.waitForSocket(sock)
        return (p, sock)
    }

    func uri(_ sock: String) -> String { "nbd+unix:///?socket=\(sock)" }

    @Test func copy64MiBInAndOutByteExact() throws {
        let (tgt, backing) = try startTarget(size: 128 << 20)
        defer { tgt.stop() }
        let (server, sock) = try serve(tgt)
        let data = pseudoRandomBytes(count: 64 << 20, seed: 1)
        let input = server.directory.appendingPathComponent("in.bin").path
        let output = server.directory.appendingPathComponent("out.bin").path
        FileManager.default.createFile(atPath: input, contents: Data(data))
        // nbdcopy writes the file to the start of the export, then copies the export back out.
        try run("nbdcopy", ["--flush", input, uri(sock)])
        try run("nbdcopy", [uri(sock), output])
        let out = try readFile(output, offset: 0, length: 64 << 20)
        #expect(out == data, "data read back through NBD differs")
        let onTarget = try readFile(backing, offset: 0, length: 64 << 20)
        #expect(onTarget == data, "the target's backing file differs from what was written")
        let rest = try readFile(backing, offset: 64 << 20, length: 64 << 20)
        #expect(rest.allSatisfy { $0 == 0 }, "bytes beyond the copy changed")
        #expect(try server.terminate() == 0)
        #expect(!FileManager.default.fileExists(atPath: sock), "socket not removed on SIGTERM")
    }

    @Test func nbdinfoShowsTheLUN() throws {
        let (tgt, _) = try startTarget(size: 256 << 20)
        defer { tgt.stop() }
        let (server, sock) = try serve(tgt)
        let json = try run("nbdinfo", ["--json", uri(sock)]).stdout
        let obj = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let export = (obj?["exports"] as? [[String: Any]])?.first
        #expect(export?["export-size"] as? Int == 256 << 20)
        #expect(export?["is_read_only"] as? Bool == false)
        #expect(export?["can_flush"] as? Bool == true)
        #expect(export?["can_fua"] as? Bool == true)
        #expect(export?["can_multi_conn"] as? Bool == true)
        #expect(export?["block_size_minimum"] as? Int == 512)
        let list = try run("nbdinfo", ["--list", uri(sock)]).stdout
        #expect(list.contains("\(Self.iqn)/lun-1"), "NBD_OPT_LIST does not show the descriptive name: \(list)")
        #expect(try server.terminate() == 0)
    }

    /// A 3 TiB LUN: LBAs above 2^32 blocks need READ/WRITE(16); data must land at the right offsets.
    @Test func writesAbove2TiBLandInPlace() throws {
        let size: UInt64 = 3 << 40
        let (tgt, backing) = try startTarget(size: size)
        defer { tgt.stop() }
        let (server, sock) = try serve(tgt)
        // (offset, length); the regions do not overlap, so each can be checked in the backing file afterwards.
        let regions: [(UInt64, Int)] = [
            ((2 << 40) - 4096, 8192),          // straddles 2 TiB: LBA 2^32-8 ..< 2^32+8 with 512-byte blocks
            ((2 << 40) - (1 << 20), 4096),     // just below: fits READ/WRITE(10)'s 32-bit LBA
            ((2 << 40) + (1 << 20), 65536),    // just above: needs (16)
            ((5 << 39) + 12345 * 512, 8192),   // 2.5 TiB
            (size - (1 << 20), 1 << 20),       // the last MiB
        ]
        let list = "[" + regions.map { "(\($0.0),\($0.1))" }.joined(separator: ",") + "]"
        let script = """
            import nbd, sys, random
            h = nbd.NBD(); h.connect_unix(sys.argv[1])
            assert h.get_size() == \(size), h.get_size()
            for i, (off, n) in enumerate(\(list)):
                data = random.Random(i).randbytes(n)
                h.pwrite(data, off)
                assert h.pread(n, off) == data, "read back at %d" % off
            h.flush(); h.shutdown()
            """
        try run("/usr/bin/python3", ["-c", script, sock])
        // Check the backing file at each place independently of NBD.
        let check = """
            import random, sys
            f = open(sys.argv[1], 'rb')
            for i, (off, n) in enumerate(\(list)):
                f.seek(off); assert f.read(n) == random.Random(i).randbytes(n), "backing file differs at %d" % off
            """
        try run("/usr/bin/python3", ["-c", check, backing])
        #expect(try server.terminate() == 0)
    }

    @Test func fioRandomWriteVerifyQD32() throws {
        let (tgt, _) = try startTarget(size: 256 << 20)
        defer { tgt.stop() }
        let (server, sock) = try serve(tgt)
        let r = try run("fio", [
            "--name=verify", "--ioengine=nbd", "--uri=\(uri(sock))", "--rw=randwrite", "--bs=4k",
            "--iodepth=32", "--size=64m", "--verify=crc32c", "--verify_state_save=0", "--do_verify=1", "--verify_fatal=1",
            "--output-format=json",
        ])
        // fio may print notes before the JSON document.
        let json = r.stdout.firstIndex(of: "{").map { String(r.stdout[$0...]) } ?? r.stdout
        let obj = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let job = (obj?["jobs"] as? [[String: Any]])?.first
        #expect(job?["error"] as? Int == 0)
        let written = (job?["write"] as? [String: Any])?["io_bytes"] as? Int
        #expect(written == 64 << 20)
        #expect(try server.terminate() == 0)
    }

    /// `--poll-us`: the poller finds the loop's epoll descriptor, catches events while polling at QD1, and
    /// data stays right (fio verify at QD1 and QD32, then the backing file against what fio read back).
    @Test func busyPollingServesQD1AndQD32Correctly() throws {
        let (tgt, backing) = try startTarget(size: 64 << 20)
        defer { tgt.stop() }
        let (server, sock) = try serve(tgt, extra: ["--poll-us", "200", "--log-level", "debug"])
        for depth in [1, 32] {
            let r = try run("fio", [
                "--name=poll", "--ioengine=nbd", "--uri=\(uri(sock))", "--rw=randwrite", "--bs=4k",
                "--iodepth=\(depth)", "--size=8m", "--offset=\(depth == 1 ? 0 : 16 << 20)", "--verify=crc32c",
                "--verify_state_save=0", "--do_verify=1", "--verify_fatal=1", "--randseed=\(depth)",
            ])
            #expect(r.status == 0, "fio QD\(depth): \(r.stdout.suffix(600))")
        }
        let readBack = server.directory.appendingPathComponent("readback.bin").path
        _ = try run("nbdcopy", [uri(sock), readBack])
        #expect(try Data(contentsOf: URL(fileURLWithPath: readBack)) == Data(contentsOf: URL(fileURLWithPath: backing)))
        #expect(try server.terminate() == 0)
        #expect(server.output.contains("busy polling"), "no poller: \(server.output.suffix(800))")
        #expect(server.output.contains("busy polling caught its first event"), "polling never caught an event")
        #expect(!server.output.contains("busy polling unavailable"))
    }

    @Test func pollUsIsValidated() throws {
        let p = try ISCSINBDProcess(["serve", "iscsi://127.0.0.1/iqn.2026-01.x:y/1", "--socket", "/tmp/unused.sock", "--poll-us", "20000"])
        #expect(try p.waitForExit() != 0)
        #expect(p.output.contains("--poll-us must be 0 to 10000"))
    }

    @Test func oneWayCHAP() throws {
        let (tgt, _) = try startTarget(size: 64 << 20)
        defer { tgt.stop() }
        try tgt.addAccount(tid: 1, user: "alice", password: "alicesecret1")
        // Right credentials, secret from the environment.
        let (good, sock) = try serve(tgt, user: "alice", environment: ["ISCSI_NBD_CHAP_SECRET": "alicesecret1"])
        _ = try run("nbdinfo", [uri(sock)])
        #expect(try good.terminate() == 0)
        #expect(!good.output.contains("alicesecret1"))
        // Wrong secret: exits non-zero and says authentication failed, without the secret.
        let bad = try ISCSINBDProcess(
            ["serve", "iscsi://alice@\(tgt.portal)/\(Self.iqn)/1", "--socket", "/tmp/unused-\(UUID()).sock"],
            environment: ["ISCSI_NBD_CHAP_SECRET": "wrongsecret99"])
        #expect(try bad.waitForExit() != 0)
        #expect(bad.output.lowercased().contains("authentication failed"), "output: \(bad.output)")
        #expect(!bad.output.contains("wrongsecret99"))
        // No credentials at all against a CHAP target: also refused with a clear message.
        let none = try ISCSINBDProcess(["serve", "iscsi://\(tgt.portal)/\(Self.iqn)/1", "--socket", "/tmp/unused-\(UUID()).sock"])
        #expect(try none.waitForExit() != 0)
        #expect(none.output.lowercased().contains("auth"), "output: \(none.output)")
    }

    @Test func passwordInURLIsScrubbedFromArgv() throws {
        let (tgt, _) = try startTarget(size: 64 << 20)
        defer { tgt.stop() }
        try tgt.addAccount(tid: 1, user: "bob", password: "bobsecret123")
        let (server, _) = try serve(tgt, user: "bob%bobsecret123")
        let cmdline = try String(contentsOfFile: "/proc/\(server.process.processIdentifier)/cmdline", encoding: .utf8)
        #expect(!cmdline.contains("bobsecret123"), "the secret is still visible in /proc/PID/cmdline")
        #expect(try server.terminate() == 0)
        #expect(!server.output.contains("bobsecret123"))
    }

    @Test func readOnlyServeRefusesWrites() throws {
        let (tgt, backing) = try startTarget(size: 64 << 20)
        defer { tgt.stop() }
        let (server, sock) = try serve(tgt, extra: ["--read-only"])
        let script = """
            import nbd, sys
            h = nbd.NBD(); h.connect_unix(sys.argv[1])
            assert h.is_read_only()
            h.set_strict_mode(0)
            try:
                h.pwrite(b'x' * 512, 0); print("WROTE")
            except nbd.Error as e:
                print("errno", e.errno)
            assert len(h.pread(512, 0)) == 512
            """
        let out = try run("/usr/bin/python3", ["-c", script, sock]).stdout
        #expect(out.contains("errno EPERM"), "expected EPERM, got \(out)")
        #expect(try readFile(backing, offset: 0, length: 512).allSatisfy { $0 == 0 })
        #expect(try server.terminate() == 0)
    }

    @Test func unreachablePortalSaysWhere() throws {
        let port = try freeLoopbackPort()
        let p = try ISCSINBDProcess(["serve", "iscsi://127.0.0.1:\(port)/\(Self.iqn)/1", "--socket", "/tmp/unused-\(UUID()).sock"])
        #expect(try p.waitForExit() != 0)
        #expect(p.output.contains("127.0.0.1:\(port)"), "output: \(p.output)")
    }

    @Test func unknownTargetSaysNotFound() throws {
        let (tgt, _) = try startTarget(size: 64 << 20)
        defer { tgt.stop() }
        let p = try ISCSINBDProcess(["serve", "iscsi://\(tgt.portal)/iqn.2026-11.org.nope:x/1", "--socket", "/tmp/unused-\(UUID()).sock"])
        #expect(try p.waitForExit() != 0)
        #expect(p.output.lowercased().contains("not found"), "output: \(p.output)")
    }
}
