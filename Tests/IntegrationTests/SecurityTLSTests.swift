import Foundation
import ISCSITestSupport
import Testing

/// Makes a throwaway CA, a server certificate for 127.0.0.1 and a client certificate with openssl. Returns the
/// directory; libnbd's layout is used for the client side (ca-cert.pem, client-cert.pem, client-key.pem),
/// plus server-cert.pem / server-key.pem, and `noclient/` holding only ca-cert.pem.
func makeTestPKI() throws -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pki-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: dir.appendingPathComponent("noclient"), withIntermediateDirectories: true)
    let p = { (name: String) in dir.appendingPathComponent(name).path }
    func openssl(_ args: [String]) throws { _ = try run("/usr/bin/openssl", args) }
    try openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=iscsi-nbd test CA",
                 "-keyout", p("ca-key.pem"), "-out", p("ca-cert.pem")])
    try "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n".write(toFile: p("server.ext"), atomically: true, encoding: .utf8)
    try "extendedKeyUsage=clientAuth\n".write(toFile: p("client.ext"), atomically: true, encoding: .utf8)
    for who in ["server", "client"] {
        try openssl(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=\(who == "server" ? "127.0.0.1" : "test client")",
                     "-keyout", p("\(who)-key.pem"), "-out", p("\(who).csr")])
        try openssl(["x509", "-req", "-in", p("\(who).csr"), "-CA", p("ca-cert.pem"), "-CAkey", p("ca-key.pem"),
                     "-CAcreateserial", "-days", "2", "-extfile", p("\(who).ext"), "-out", p("\(who)-cert.pem")])
    }
    try FileManager.default.copyItem(atPath: p("ca-cert.pem"), toPath: p("noclient/ca-cert.pem"))
    return dir
}

/// Waits until something accepts TCP connections on 127.0.0.1:port.
func waitForTCP(port: Int, process: ISCSINBDProcess, timeout: Double = 30) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        guard process.process.isRunning else { throw TestPeerError("iscsi-nbd exited: \(process.output)") }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        close(fd)
        if ok { return }
        usleep(50_000)
    }
    throw TestPeerError("nothing listens on 127.0.0.1:\(port): \(process.output)")
}

/// TLS on the NBD TCP listener (nbd-proto.md "TLS support", FORCEDTLS) against a real tgtd, with libnbd as the
/// client: TLS with a client certificate works end to end; plain text and certificate-less clients are refused.
@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm", "nbdinfo", "openssl")))
struct SecurityTLSTests {
    static let iqn = "iqn.2026-11.org.iscsi-nbd.test:tls"

    @Test func forcedTLSWithClientCertificates() throws {
        let tgt = try TGTD.start()
        defer { tgt.stop() }
        let backing = try tgt.makeBackingFile(name: "lun1.img", size: 16 << 20)
        try tgt.addTarget(tid: 1, iqn: Self.iqn)
        try tgt.addLUN(tid: 1, lun: 1, backingFile: backing)
        let pki = try makeTestPKI()
        defer { try? FileManager.default.removeItem(at: pki) }
        let port = try freeLoopbackPort()
        let sock = ISCSINBDProcess.socketPath(in: pki)
        let server = try ISCSINBDProcess([
            "serve", "iscsi://\(tgt.portal)/\(Self.iqn)/1", "--socket", sock, "--listen", "127.0.0.1:\(port)",
            "--tls-certificate", pki.appendingPathComponent("server-cert.pem").path,
            "--tls-key", pki.appendingPathComponent("server-key.pem").path,
            "--tls-verify-peer", "--tls-ca", pki.appendingPathComponent("ca-cert.pem").path,
        ])
        try server.waitForSocket(sock)
        try waitForTCP(port: port, process: server)
        var st = stat()
        #expect(stat(sock, &st) == 0 && st.st_mode & 0o777 == 0o600, "socket mode \(String(st.st_mode & 0o777, radix: 8))")

        // 1. TLS with a client certificate: nbdinfo sees the export.
        let good = try run("/usr/bin/nbdinfo", ["--size", "nbds://127.0.0.1:\(port)/?tls-certificates=\(pki.path)"], allowFailure: true)
        #expect(good.status == 0, "\(good.stdout)\(good.stderr)\n\(server.output)")
        #expect(good.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(16 << 20)")

        // 2. Data round trip over TLS with libnbd (TLS required on the client side too).
        let script = """
            import nbd, sys
            h = nbd.NBD(); h.set_tls(nbd.TLS_REQUIRE); h.set_tls_certificates(sys.argv[2])
            h.connect_tcp("127.0.0.1", sys.argv[1])
            assert h.get_tls_negotiated()
            h.pwrite(b'\\xc3' * 65536, 1 << 20); assert h.pread(65536, 1 << 20) == b'\\xc3' * 65536
            h.flush(); h.shutdown(); print("done")
            """
        let io = try run("/usr/bin/python3", ["-c", script, "\(port)", pki.path], allowFailure: true)
        #expect(io.status == 0 && io.stdout.contains("done"), "\(io.stdout)\(io.stderr)")
        #expect(try readFile(backing, offset: 1 << 20, length: 65536) == [UInt8](repeating: 0xc3, count: 65536))

        // 3. A plain-text client is refused (libnbd without TLS).
        let plain = try run("/usr/bin/nbdinfo", ["--size", "nbd://127.0.0.1:\(port)/"], allowFailure: true)
        #expect(plain.status != 0, "plain-text client got in: \(plain.stdout)")
        #expect(plain.stderr.contains("requires TLS"), "plain-text client refused for another reason: \(plain.stderr)")

        // 4. A TLS client without a certificate is refused when peer verification is on.
        let anonymous = try run(
            "/usr/bin/nbdinfo", ["--size", "nbds://127.0.0.1:\(port)/?tls-certificates=\(pki.appendingPathComponent("noclient").path)"],
            allowFailure: true)
        #expect(anonymous.status != 0, "client without a certificate got in: \(anonymous.stdout)")
        #expect(anonymous.stderr.contains("TLS") || anonymous.stderr.contains("tls"), "refused for another reason: \(anonymous.stderr)")

        // 5. Raw plain-text protocol: GO → NBD_REP_ERR_TLS_REQD; EXPORT_NAME → connection closed.
        let raw = """
            import socket, struct, sys
            def connect():
                s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
                hello = b''
                while len(hello) < 18: hello += s.recv(18 - len(hello))
                s.sendall(struct.pack('>I', 3))
                return s
            def recvn(s, n):
                b = b''
                while len(b) < n:
                    c = s.recv(n - len(b))
                    if not c: raise EOFError
                    b += c
                return b
            s = connect()
            s.sendall(b'IHAVEOPT' + struct.pack('>IIIH', 7, 6, 0, 0))       # NBD_OPT_GO "" no infos
            magic, opt, typ, ln = struct.unpack('>QIII', recvn(s, 20)); recvn(s, ln)
            assert typ == 0x80000005, hex(typ)                               # NBD_REP_ERR_TLS_REQD
            s.sendall(b'IHAVEOPT' + struct.pack('>II', 1, 0))                # NBD_OPT_EXPORT_NAME ""
            try:
                assert s.recv(1) == b'', "EXPORT_NAME before STARTTLS was answered"
            except ConnectionResetError:
                pass
            print("done")
            """
        let r = try run("/usr/bin/python3", ["-c", raw, "\(port)"], allowFailure: true)
        #expect(r.status == 0 && r.stdout.contains("done"), "\(r.stdout)\(r.stderr)")

        // The unix socket stays plain (mode 0600 protects it) and the server survived all of the above.
        let unix = try run("/usr/bin/nbdinfo", ["--size", "nbd+unix:///?socket=\(sock)"], allowFailure: true)
        #expect(unix.status == 0, "\(unix.stderr)")
        #expect(server.process.isRunning, "server died: \(server.output)")
        #expect(try server.terminate() == 0)
    }

    @Test func badTLSFilesFailBeforeLogin() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tlsbad-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let bogus = dir.appendingPathComponent("bogus.pem").path
        try "not a certificate\n".write(toFile: bogus, atomically: true, encoding: .utf8)
        // The portal is never contacted: the TLS files are checked first.
        let server = try ISCSINBDProcess([
            "serve", "iscsi://127.0.0.1:1/\(Self.iqn)/1", "--listen", "127.0.0.1:\(try freeLoopbackPort())",
            "--tls-certificate", bogus, "--tls-key", bogus,
        ])
        #expect(try server.waitForExit() != 0)
        #expect(server.output.contains(bogus), "\(server.output)")
    }
}
