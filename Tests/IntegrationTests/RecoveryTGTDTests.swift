import Foundation
import ISCSITestSupport
import Testing

/// Session recovery against a real tgtd that is killed with SIGKILL and started again under a running
/// `iscsi-nbd serve`, while NBD clients (fio verify, libnbd from Python) keep working through the socket.
@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm", "nbdinfo", "fio")))
struct RecoveryTGTDTests {
    static let iqn = "iqn.2026-11.org.iscsi-nbd.test:recovery"

    func serve(_ tgt: KillableTGTD, replacementTimeout: Int) throws -> (ISCSINBDProcess, String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rsock-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let sock = dir.appendingPathComponent("nbd.sock").path
        let p = try ISCSINBDProcess([
            "serve", "iscsi://\(tgt.portal)/\(Self.iqn)/1", "--socket", sock,
            "--replacement-timeout", String(replacementTimeout), "--log-level", "info",
        ])
        try p.waitForSocket(sock)
        return (p, sock)
    }

    func uri(_ sock: String) -> String { "nbd+unix:///?socket=\(sock)" }

    /// Runs Python `code` with `h` connected to the socket (libnbd's Python binding, the system python).
    @discardableResult
    func nbd(_ sock: String, _ code: String, allowFailure: Bool = false) throws -> (status: Int32, stdout: String, stderr: String) {
        let script = "import nbd, sys\nh = nbd.NBD()\nh.connect_unix(sys.argv[1])\n" + code + "\n"
        return try run("/usr/bin/python3", ["-c", script, sock], allowFailure: allowFailure)
    }

    func occurrences(_ needle: String, in text: String) -> Int { text.components(separatedBy: needle).count - 1 }

    /// fio random writes with crc32c verify at a bounded rate; tgtd is killed -9 and restarted three times
    /// during the write and the verify phase. Zero I/O errors, zero verify errors, three recoveries.
    @Test(.timeLimit(.minutes(3))) func killAndRestartTGTDDuringFioVerify() throws {
        let tgt = try KillableTGTD()
        defer { tgt.stop() }
        let backing = try tgt.makeBackingFile(name: "lun1.img", size: 128 << 20)
        try tgt.configure(iqn: Self.iqn, backingFile: backing, serial: "RECOV0001")
        let (server, sock) = try serve(tgt, replacementTimeout: 60)

        let fio = Process()
        fio.executableURL = URL(fileURLWithPath: findExecutable("fio") ?? "fio")
        fio.arguments = [
            "--name=verify", "--ioengine=nbd", "--uri=\(uri(sock))", "--rw=randwrite", "--bs=4k", "--iodepth=16",
            "--size=32m", "--rate_iops=1000", "--verify=crc32c", "--verify_state_save=0", "--do_verify=1", "--verify_fatal=1",
            "--output-format=json",
        ]
        let out = Pipe()
        fio.standardOutput = out
        let errPath = server.directory.appendingPathComponent("fio.err").path
        FileManager.default.createFile(atPath: errPath, contents: nil)
        fio.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        let started = Date()
        try fio.run()
        let reader = LockedBox<Data>(Data())
        let thread = Thread { reader.set(out.fileHandleForReading.readDataToEndOfFile()) }
        thread.start()

        var kills = 0
        while fio.isRunning && kills < 3 {
            usleep(2_000_000)
            guard fio.isRunning else { break }
            tgt.kill9()
            kills += 1
            usleep(500_000)
            try tgt.launch()
            try tgt.configure(iqn: Self.iqn, backingFile: backing, serial: "RECOV0001")
        }
        fio.waitUntilExit()
        while !reader.isSet { usleep(10_000) }
        let stdout = String(decoding: reader.value, as: UTF8.self)
        let stderr = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        #expect(kills >= 2, "fio finished before tgtd could be killed twice")
        #expect(fio.terminationStatus == 0, "fio: \(stderr)\n\(server.output)")
        let json = stdout.firstIndex(of: "{").map { String(stdout[$0...]) } ?? stdout
        let obj = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let job = (obj?["jobs"] as? [[String: Any]])?.first
        #expect(job?["error"] as? Int == 0)
        #expect((job?["write"] as? [String: Any])?["io_bytes"] as? Int == 32 << 20)
        #expect((job?["read"] as? [String: Any])?["io_bytes"] as? Int == 32 << 20, "verify read everything back")
        let log = server.output
        let recovered = occurrences("iSCSI session recovered", in: log)
        print("tgtd kill -9 + restart: \(kills) kills, \(recovered) recoveries, fio write+verify \(32 << 20) bytes, exit \(fio.terminationStatus), elapsed \(Date().timeIntervalSince(started)) s")
        for line in log.split(separator: "\n") where line.contains("recovered") { print(line) }
        #expect(recovered >= kills, "\(log)")
        #expect(!log.contains("replacement timeout:"), "\(log)")
        #expect(server.process.isRunning)
        #expect(try server.terminate() == 0)
    }

    /// With the target gone for longer than the replacement timeout, a read fails with EIO after about the
    /// timeout (no hang) and one clear log line; once the target is back, the session resumes by itself.
    @Test(.timeLimit(.minutes(2))) func replacementTimeoutFailsThenResumes() throws {
        let tgt = try KillableTGTD()
        defer { tgt.stop() }
        let backing = try tgt.makeBackingFile(name: "lun1.img", size: 16 << 20)
        try tgt.configure(iqn: Self.iqn, backingFile: backing, serial: "RECOV0002")
        let (server, sock) = try serve(tgt, replacementTimeout: 3)
        try nbd(sock, "h.pwrite(b'\\x5a' * 4096, 0)")

        tgt.kill9()
        let start = Date()
        let failed = try nbd(sock, "h.pread(4096, 8192)", allowFailure: true)
        let elapsed = Date().timeIntervalSince(start)
        #expect(failed.status != 0)
        #expect(failed.stderr.contains("Input/output error") || failed.stderr.contains("EIO"), "\(failed.stderr)")
        #expect(elapsed >= 2 && elapsed < 15, "failed after \(elapsed) s")
        #expect(occurrences("not recovered within the replacement timeout", in: server.output) == 1, "\(server.output)")
        // New requests fail at once while the target stays away.
        let quick = Date()
        let again = try nbd(sock, "h.pread(4096, 0)", allowFailure: true)
        #expect(again.status != 0)
        #expect(Date().timeIntervalSince(quick) < 2)

        try tgt.launch()
        try tgt.configure(iqn: Self.iqn, backingFile: backing, serial: "RECOV0002")
        var resumed = false
        for _ in 0..<100 where !resumed {
            let r = try nbd(sock, "assert h.pread(4096, 0) == b'\\x5a' * 4096", allowFailure: true)
            resumed = r.status == 0
            if !resumed { usleep(200_000) }
        }
        #expect(resumed, "\(server.output)")
        #expect(try server.terminate() == 0)
    }

    /// A different LUN behind the same target and LUN number after the restart: serve stops with a
    /// clear reason and writes nothing to the new LUN.
    @Test(.timeLimit(.minutes(2))) func differentLUNAfterRestartFailStops() throws {
        let tgt = try KillableTGTD()
        defer { tgt.stop() }
        let first = try tgt.makeBackingFile(name: "lun1.img", size: 16 << 20)
        let other = try tgt.makeBackingFile(name: "other.img", size: 16 << 20)
        try tgt.configure(iqn: Self.iqn, backingFile: first, serial: "RECOV0003")
        let (server, sock) = try serve(tgt, replacementTimeout: 30)
        try nbd(sock, "h.pwrite(b'\\x11' * 65536, 0)")

        tgt.kill9()
        try tgt.launch()
        try tgt.configure(iqn: Self.iqn, backingFile: other, serial: "OTHER0003")
        // A write queued while the session recovers must not reach the other LUN.
        let write = try nbd(sock, "h.pwrite(b'\\x22' * 65536, 0)", allowFailure: true)
        #expect(write.status != 0)
        let status = try server.waitForExit(timeout: 30)
        #expect(status != 0)
        #expect(server.output.contains("LUN identity changed"), "\(server.output)")
        #expect(try readFile(other, offset: 0, length: 65536).allSatisfy { $0 == 0 })
        #expect(try readFile(first, offset: 0, length: 65536).allSatisfy { $0 == 0x11 })
    }

    /// The LUN grew while the session was down: new NBD connections see the new size.
    @Test(.timeLimit(.minutes(2))) func grownLUNAfterRestartIsServedWithTheNewSize() throws {
        let tgt = try KillableTGTD()
        defer { tgt.stop() }
        let backing = try tgt.makeBackingFile(name: "lun1.img", size: 16 << 20)
        try tgt.configure(iqn: Self.iqn, backingFile: backing, serial: "RECOV0004")
        let (server, sock) = try serve(tgt, replacementTimeout: 30)
        #expect(try run("nbdinfo", ["--size", uri(sock)]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(16 << 20)")

        tgt.kill9()
        #expect(truncate(backing, off_t(32 << 20)) == 0)
        try tgt.launch()
        try tgt.configure(iqn: Self.iqn, backingFile: backing, serial: "RECOV0004")
        // The first request waits for the recovery; then the size is the new one.
        try nbd(sock, "h.pread(512, 0)")
        #expect(try run("nbdinfo", ["--size", uri(sock)]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(32 << 20)")
        #expect(server.output.contains("LUN grew"), "\(server.output)")
        #expect(try server.terminate() == 0)
    }
}

/// A value set once from another thread.
final class LockedBox<T>: @unchecked Sendable {
    // SAFETY: every access holds `lock`.
    private let lock = NSLock()
    private var _value: T
    private var _set = false
    init(_ value: T) { _value = value }
    func set(_ v: T) { lock.lock(); _value = v; _set = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return _set }
    var value: T { lock.lock(); defer { lock.unlock() }; return _value }
}
