import Foundation
import ISCSITestSupport
import Testing

/// CHAP secrets never leave the process: not in logs at trace level, not in errors of a failed login, not in
/// argv (/proc/PID/cmdline) when they came from a file, the environment or the URL, not in `-m node -o show`.
/// (/proc/PID/environ may hold a secret passed through the environment: that is the caller's choice.)
@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm", "nbdinfo")))
struct SecuritySecretTests {
    static let iqn = "iqn.2026-11.org.iscsi-nbd.test:secrets"
    static let secret = "Sekr1t-initiator-4711"
    static let targetSecret = "Sekr1t-target-0815x"
    static let wrongSecret = "Wr0ng-secret-31337"

    static func cmdline(_ pid: Int32) -> String {
        let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data()
        return String(decoding: data.map { $0 == 0 ? UInt8(ascii: " ") : $0 }, as: UTF8.self)
    }

    func expectNoSecret(_ text: String, _ what: String, secrets: [String] = [secret, targetSecret, wrongSecret]) {
        for s in secrets {
            #expect(!text.contains(s), "\(what) contains a CHAP secret:\n\(text)")
        }
    }

    func secretFile(_ dir: URL, _ name: String, _ value: String) throws -> String {
        let path = dir.appendingPathComponent(name).path
        try "\(value)\n".write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o600)
        return path
    }

    @Test func secretsStayOutOfLogsArgvAndErrors() throws {
        let tgt = try TGTD.start()
        defer { tgt.stop() }
        let backing = try tgt.makeBackingFile(name: "lun1.img", size: 8 << 20)
        try tgt.addTarget(tid: 1, iqn: Self.iqn)
        try tgt.addLUN(tid: 1, lun: 1, backingFile: backing)
        try tgt.addAccount(tid: 1, user: "alice", password: Self.secret)
        try tgt.addAccount(tid: 1, user: "thetarget", password: Self.targetSecret, outgoing: true)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sec-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = "iscsi://\(tgt.portal)/\(Self.iqn)/1"
        let trace = ["--log-level", "trace"]

        // 1. Secrets from files, mutual CHAP, trace logging: the login works, and an NBD client reads the LUN.
        do {
            let sock = dir.appendingPathComponent("file.sock").path
            let server = try ISCSINBDProcess(
                ["serve", url, "--socket", sock, "--chap-username", "alice",
                 "--chap-secret-file", try secretFile(dir, "secret", Self.secret),
                 "--target-chap-username", "thetarget",
                 "--target-chap-secret-file", try secretFile(dir, "tsecret", Self.targetSecret)] + trace)
            try server.waitForSocket(sock)
            let info = try run("/usr/bin/nbdinfo", ["nbd+unix:///?socket=\(sock)"], allowFailure: true)
            #expect(info.status == 0, "\(info.stderr)")
            expectNoSecret(Self.cmdline(server.process.processIdentifier), "argv (secret files)")
            #expect(try server.terminate() == 0)
            // The log at trace level covers the login and the NBD session: all of it is searched below.
            #expect(server.output.contains("iSCSI login complete") && server.output.contains("NBD_CMD_DISC"), "\(server.output)")
            expectNoSecret(server.output, "trace log (secret files)")
            // Without --listen nothing listens on TCP.
            #expect(server.output.contains("nbd.address=unix:") && !server.output.contains("nbd.address=tcp:"), "\(server.output)")
        }

        // 2. Secrets from the environment: the login works; argv and logs are clean.
        do {
            let sock = dir.appendingPathComponent("env.sock").path
            let server = try ISCSINBDProcess(
                ["serve", url, "--socket", sock] + trace,
                environment: ["ISCSI_NBD_CHAP_USERNAME": "alice", "ISCSI_NBD_CHAP_SECRET": Self.secret,
                              "ISCSI_NBD_TARGET_CHAP_USERNAME": "thetarget", "ISCSI_NBD_TARGET_CHAP_SECRET": Self.targetSecret])
            try server.waitForSocket(sock)
            expectNoSecret(Self.cmdline(server.process.processIdentifier), "argv (environment)")
            #expect(try server.terminate() == 0)
            expectNoSecret(server.output, "trace log (environment)")
        }

        // 3. Secret in the URL (compatibility form): scrubbed from argv once running.
        do {
            let sock = dir.appendingPathComponent("url.sock").path
            let server = try ISCSINBDProcess(["serve", "iscsi://alice%\(Self.secret)@\(tgt.portal)/\(Self.iqn)/1", "--socket", sock] + trace)
            try server.waitForSocket(sock)
            expectNoSecret(Self.cmdline(server.process.processIdentifier), "argv (URL)")
            #expect(try server.terminate() == 0)
            expectNoSecret(server.output, "trace log (URL)")
        }

        // 4. A failed login (wrong secret; then a wrong target secret for mutual CHAP): a clear error, no secret.
        for (initiator, target) in [(Self.wrongSecret, Self.targetSecret), (Self.secret, Self.wrongSecret)] {
            let sock = dir.appendingPathComponent("bad.sock").path
            let server = try ISCSINBDProcess(
                ["serve", url, "--socket", sock, "--chap-username", "alice",
                 "--chap-secret-file", try secretFile(dir, "bad", initiator),
                 "--target-chap-username", "thetarget",
                 "--target-chap-secret-file", try secretFile(dir, "tbad", target)] + trace)
            #expect(try server.waitForExit() != 0, "login with a wrong secret succeeded")
            #expect(server.output.lowercased().contains("auth") || server.output.contains("CHAP"), "\(server.output)")
            expectNoSecret(server.output, "failed login output")
        }
    }

    @Test func nodeRecordShowMasksSecrets() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("secnode-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let binary = try iscsiNBDBinary()
        let base = ["admin", "--config-dir", dir.path, "-m", "node", "-T", Self.iqn, "-p", "127.0.0.1:3260"]
        _ = try run(binary, base + ["-o", "new"])
        _ = try run(binary, base + ["-o", "update", "-n", "node.session.auth.authmethod", "-v", "CHAP"])
        _ = try run(binary, base + ["-o", "update", "-n", "node.session.auth.username", "-v", "alice"])
        _ = try run(binary, base + ["-o", "update", "-n", "node.session.auth.password", "-v", Self.secret])
        _ = try run(binary, base + ["-o", "update", "-n", "node.session.auth.password_in", "-v", Self.targetSecret])
        let shown = try run(binary, base + ["-o", "show"], allowFailure: true)
        #expect(shown.status == 0, "\(shown.stderr)")
        #expect(shown.stdout.contains("node.session.auth.username = alice"), "\(shown.stdout)")
        expectNoSecret(shown.stdout + shown.stderr, "-m node -o show")
        let plain = try run(binary, base, allowFailure: true)
        expectNoSecret(plain.stdout + plain.stderr, "-m node -T")
        // The record on disk keeps the secret (open-iscsi layout) but is not readable by others.
        let records = FileManager.default.enumerator(atPath: dir.path)?.compactMap { $0 as? String } ?? []
        for r in records where r.hasPrefix("nodes/") {
            var st = stat()
            let path = dir.appendingPathComponent(r).path
            if stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG {
                #expect(st.st_mode & 0o077 == 0, "\(r) has mode \(String(st.st_mode & 0o777, radix: 8))")
            }
        }
    }
}
