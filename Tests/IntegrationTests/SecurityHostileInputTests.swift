import Foundation
import ISCSITestSupport
import Testing

/// Random request shapes through the real server and the iSCSI bridge to tgtd: commands, flags, offsets and
/// lengths drawn from edge values, garbage before and after the handshake, on many connections. Every
/// connection gets replies or is closed; the server stays up and serves a well-behaved client afterwards.
@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm", "nbdinfo")))
struct SecurityHostileInputTests {
    static let iqn = "iqn.2026-11.org.iscsi-nbd.test:hostile"

    static let script = """
        import random, socket, struct, sys, nbd
        path, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        rng = random.Random(seed)
        lengths = [0, 1, 511, 512, 4096, 65536, 1 << 20, 1 << 25, (1 << 32) - 1]
        offsets = [0, 1, 512, size - 512, size - 1, size, size + 512, 1 << 63, (1 << 64) - 512, rng.randrange(1 << 64)]
        def recvn(s, k):
            b = b''
            while len(b) < k:
                c = s.recv(k - len(b))
                if not c: raise EOFError
                b += c
            return b
        def drain(s):
            s.settimeout(10)
            try:
                while s.recv(65536): pass
            except (ConnectionResetError, socket.timeout):
                pass
        stats = {"closed_early": 0, "served": 0}
        for conn in range(120):
            s = socket.socket(socket.AF_UNIX); s.connect(path); s.settimeout(10)
            kind = conn % 4
            try:
                if kind == 0:   # garbage instead of client flags / options
                    s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
                    drain(s); stats["closed_early"] += 1; continue
                recvn(s, 18)
                flags = 3 if kind != 3 else rng.randrange(1 << 32)
                s.sendall(struct.pack('>I', flags))
                if kind == 3:   # random flags then random option frames
                    for _ in range(5):
                        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
                        s.sendall(b'IHAVEOPT' + struct.pack('>II', rng.randrange(16), len(data)) + data)
                    s.sendall(b'IHAVEOPT' + struct.pack('>II', 2, 0))  # ABORT
                    drain(s); continue
                s.sendall(b'IHAVEOPT' + struct.pack('>II', 1, 0))  # EXPORT_NAME ""
                recvn(s, 10)
                for i in range(40):
                    cmd = rng.choice([0, 1, 3, 4, 5, 6, 7, 8, 9, rng.randrange(10, 1 << 16)])
                    length = rng.choice(lengths)
                    if cmd == 1 and length > (1 << 20): length = 4096
                    hdr = struct.pack('>IHHQQI', 0x25609513, rng.choice([0, 1, 2, 4, 8, 16, 32, rng.randrange(1 << 16)]),
                                      cmd, i, rng.choice(offsets), length)
                    s.sendall(hdr + (bytes([i & 0xff]) * length if cmd == 1 else b''))
                if kind == 2:   # a bad magic at the end
                    s.sendall(struct.pack('>IHHQQI', 0xdeadbeef, 0, 0, 99, 0, 512))
                else:
                    s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 2, 99, 0, 0))  # DISC
                drain(s); stats["served"] += 1
            except (EOFError, BrokenPipeError, ConnectionResetError):
                stats["closed_early"] += 1
            finally:
                s.close()
        h = nbd.NBD(); h.connect_unix(path)
        h.pwrite(b'\\x42' * 65536, 0); assert h.pread(65536, 0) == b'\\x42' * 65536
        h.shutdown()
        print("done", stats)
        """

    @Test func randomRequestShapesNeverTakeTheServerDown() throws {
        let tgt = try TGTD.start()
        defer { tgt.stop() }
        let size: UInt64 = 32 << 20
        let backing = try tgt.makeBackingFile(name: "lun1.img", size: size)
        try tgt.addTarget(tid: 1, iqn: Self.iqn)
        try tgt.addLUN(tid: 1, lun: 1, backingFile: backing)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hostile-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let sock = ISCSINBDProcess.socketPath(in: dir)
        let server = try ISCSINBDProcess(["serve", "iscsi://\(tgt.portal)/\(Self.iqn)/1", "--socket", sock])
        try server.waitForSocket(sock)
        for seed in [1, 2] {
            let r = try run("/usr/bin/python3", ["-c", Self.script, sock, "\(size)", "\(seed)"], allowFailure: true)
            #expect(r.status == 0 && r.stdout.contains("done"), "seed \(seed): \(r.stdout)\(r.stderr)\n\(server.output.suffix(4000))")
            print("SecurityHostileInputTests seed \(seed): \(r.stdout)")
            // Every connection that completed the handshake got through its 40 requests (none was dropped).
            #expect(r.stdout.contains("'served': 60"), "\(r.stdout)")
            #expect(server.process.isRunning, "server died with seed \(seed): \(server.output.suffix(4000))")
        }
        #expect(try server.terminate() == 0)
    }
}
