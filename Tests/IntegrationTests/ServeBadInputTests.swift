import Foundation
import ISCSITestSupport
import Testing

/// Bad NBD input through the real server and bridge: each bad request gets an error reply and the
/// connection stays up; bad magic or a truncated request closes that connection only; nothing is written.
@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm", "nbdinfo")))
struct ServeBadInputTests {
    static let iqn = "iqn.2026-11.org.iscsi-nbd.test:badinput"

    @Test func invalidRequestsGetErrorsAndNothingIsWritten() throws {
        let tgt = try TGTD.start()
        defer { tgt.stop() }
        let size: UInt64 = 64 << 20
        let backing = try tgt.makeBackingFile(name: "lun1.img", size: size)
        try tgt.addTarget(tid: 1, iqn: Self.iqn)
        try tgt.addLUN(tid: 1, lun: 1, backingFile: backing)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let sock = dir.appendingPathComponent("nbd.sock").path
        let server = try ISCSINBDProcess(["serve", "iscsi://\(tgt.portal)/\(Self.iqn)/1", "--socket", sock])
        try server.waitForSocket(sock)

        // libnbd with its client-side checks off, so the bad requests reach the server.
        let script = """
            import nbd, sys, socket, struct
            EINVAL, ENOSPC, EOVERFLOW = 'EINVAL', 'ENOSPC', 'EOVERFLOW'
            h = nbd.NBD(); h.connect_unix(sys.argv[1]); h.set_strict_mode(0)
            size = h.get_size()
            def expect_err(name, fn, errnos):
                try:
                    fn(); print("FAIL", name, "succeeded"); sys.exit(1)
                except nbd.Error as e:
                    if e.errno not in errnos: print("FAIL", name, "errno", e.errno); sys.exit(1)
                    print("ok", name, e.errno)
            expect_err("read past end", lambda: h.pread(4096, size), (EINVAL,))
            expect_err("read straddling end", lambda: h.pread(8192, size - 4096), (EINVAL,))
            expect_err("write past end", lambda: h.pwrite(b'\\xaa' * 4096, size), (EINVAL, ENOSPC))
            expect_err("unaligned write", lambda: h.pwrite(b'\\xaa' * 100, 7), (EINVAL,))
            expect_err("offset overflow", lambda: h.pread(4096, (1 << 64) - 512), (EINVAL,))
            expect_err("oversized read", lambda: h.pread(64 << 20, 0), (EINVAL, EOVERFLOW))
            expect_err("unknown flag", lambda: h.pread(512, 0, flags=0x80), (EINVAL,))
            # The connection is still usable after all of that.
            assert h.pread(4096, 0) == b'\\0' * 4096
            h.pwrite(b'\\x5a' * 4096, 8192); assert h.pread(4096, 8192) == b'\\x5a' * 4096

            # Raw connections: a bad request magic, then a truncated request, each closes only its own connection.
            def raw_connect():
                s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(10)
                hello = b''
                while len(hello) < 18: hello += s.recv(18 - len(hello))
                assert hello[:16] == b'NBDMAGICIHAVEOPT', hello
                s.sendall(struct.pack('>I', 3))                         # FIXED_NEWSTYLE | NO_ZEROES
                s.sendall(b'IHAVEOPT' + struct.pack('>II', 1, 0))      # NBD_OPT_EXPORT_NAME ""
                got = b''
                while len(got) < 10: got += s.recv(10 - len(got))
                assert struct.unpack('>Q', got[:8])[0] == size
                return s
            s = raw_connect()
            s.sendall(struct.pack('>IHHQQI', 0x12345678, 0, 1, 1, 0, 4096) + b'\\xbb' * 4096)  # bad magic, "write"
            closed = False
            try:
                closed = s.recv(1) == b''
            except ConnectionResetError:
                closed = True
            assert closed, "server did not close the connection after bad magic"
            s = raw_connect()
            s.sendall(struct.pack('>IHH', 0x25609513, 0, 1)); s.close()   # truncated write request
            # The first connection still works, and a new one too.
            assert h.pread(4096, 8192) == b'\\x5a' * 4096
            h2 = nbd.NBD(); h2.connect_unix(sys.argv[1]); assert h2.pread(4096, 8192) == b'\\x5a' * 4096
            h.shutdown(); h2.shutdown()
            print("done")
            """
        let result = try run("/usr/bin/python3", ["-c", script, sock], allowFailure: true)
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("done"))
        #expect(server.process.isRunning, "the server died: \(server.output)")
        // Only the one valid write (0x5a at 8192) reached the target.
        let disk = try readFile(backing, offset: 0, length: 1 << 20)
        #expect(disk[8192..<12288].allSatisfy { $0 == 0x5A })
        #expect(disk[0..<8192].allSatisfy { $0 == 0 } && disk[12288...].allSatisfy { $0 == 0 })
        let tail = try readFile(backing, offset: size - (1 << 20), length: 1 << 20)
        #expect(tail.allSatisfy { $0 == 0 }, "something was written near the end")
        #expect(try server.terminate() == 0)
    }
}
