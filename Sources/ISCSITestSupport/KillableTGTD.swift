import Foundation

/// A tgtd on a fixed loopback port that a test can kill -9 and start again on the same port (the
/// target's configuration is lost with the process: call `configure` again after `restart`).
///
/// Separate from `TGTD` (whose port is fixed per process) so recovery tests can take the target away
/// under a running session and bring it back at the same portal.
public final class KillableTGTD: @unchecked Sendable {
    // SAFETY: owned and driven by one test.
    public let port: Int
    public let controlPort: Int
    public let directory: URL
    private var process: Process?
    /// The portal address tgtd listens on.
    public let host: String
    /// Runs tgtd under this command (e.g. `["ip", "netns", "exec", NS]`); empty: directly.
    public let prefix: [String]
    public var portal: String { "\(host):\(port)" }
    public private(set) var starts = 0

    /// `host` 127.0.0.1 picks a free port; another host (inside a network namespace given by `prefix`)
    /// uses `port`.
    public init(host: String = "127.0.0.1", port: Int? = nil, prefix: [String] = []) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ktgtd-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        self.host = host
        self.prefix = prefix
        self.port = try port ?? freeLoopbackPort()
        controlPort = Int.random(in: 20000..<32768)
        try launch()
    }

    public var pid: Int32? { process.flatMap { $0.isRunning ? $0.processIdentifier : nil } }

    /// Starts tgtd (again) on `port`; waits until the control channel and the portal answer.
    public func launch() throws {
        guard let tgtd = findExecutable("tgtd") else { throw TestPeerError("tgtd not found (apt-get install tgt)") }
        let log = directory.appendingPathComponent("tgtd.log")
        if !FileManager.default.fileExists(atPath: log.path) { FileManager.default.createFile(atPath: log.path, contents: nil) }
        let handle = try FileHandle(forWritingTo: log)
        handle.seekToEndOfFile()
        // The previous instance's portal may linger in TIME_WAIT for a moment: retry the start.
        for _ in 0..<40 {
            let p = Process()
            let arguments = ["-f", "-C", String(controlPort), "--iscsi", "portal=\(host):\(port)"]
            if let first = prefix.first {
                p.executableURL = URL(fileURLWithPath: findExecutable(first) ?? first)
                p.arguments = Array(prefix.dropFirst()) + [tgtd] + arguments
            } else {
                p.executableURL = URL(fileURLWithPath: tgtd)
                p.arguments = arguments
            }
            p.standardOutput = handle
            p.standardError = handle
            p.standardInput = FileHandle.nullDevice
            try p.run()
            for _ in 0..<100 {
                if !p.isRunning { break }
                if (try? tgtadm(["--op", "show", "--mode", "system"])) != nil, portalAccepts() {
                    process = p
                    starts += 1
                    return
                }
                usleep(20_000)
            }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
            usleep(100_000)
        }
        throw TestPeerError("tgtd did not start on \(port): \((try? String(contentsOf: log, encoding: .utf8)) ?? "")")
    }

    /// kill -9, then wait for the process to be gone.
    public func kill9() {
        guard let p = process else { return }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        process = nil
    }

    /// kill -9 and start again (unconfigured).
    public func restart() throws {
        kill9()
        try launch()
    }

    private func portalAccepts() -> Bool {
        // Inside another network namespace the portal is not reachable from here; tgtd listens once
        // its control channel answers.
        if !prefix.isEmpty { return true }
        return loopbackPortAccepts(port)
    }

    @discardableResult
    public func tgtadm(_ args: [String]) throws -> String {
        try run("tgtadm", ["-C", String(controlPort), "--lld", "iscsi"] + args).stdout
    }

    /// Target `tid` = `iqn` open to all initiators, LUN `lun` backed by `backingFile`, with a fixed SCSI
    /// serial and identifier so the LUN's VPD 80h/83h come out the same after every restart.
    /// With `account`, that CHAP account is bound before initiators are allowed in.
    public func configure(
        tid: Int = 1, iqn: String, lun: Int = 1, backingFile: String, serial: String, account: (user: String, password: String)? = nil
    ) throws {
        try tgtadm(["--op", "new", "--mode", "target", "--tid", String(tid), "-T", iqn])
        try tgtadm(["--op", "new", "--mode", "logicalunit", "--tid", String(tid), "--lun", String(lun), "-b", backingFile])
        try tgtadm([
            "--op", "update", "--mode", "logicalunit", "--tid", String(tid), "--lun", String(lun),
            "--params", "scsi_sn=\(serial),scsi_id=\(serial)",
        ])
        if let account { try addAccount(tid: tid, user: account.user, password: account.password) }
        try tgtadm(["--op", "bind", "--mode", "target", "--tid", String(tid), "-I", "ALL"])
    }

    /// Adds a CHAP account bound to target `tid` (call after `configure`, again after every restart).
    public func addAccount(tid: Int = 1, user: String, password: String) throws {
        try tgtadm(["--op", "new", "--mode", "account", "--user", user, "--password", password])
        try tgtadm(["--op", "bind", "--mode", "account", "--tid", String(tid), "--user", user])
    }

    /// A sparse file of `size` bytes in this instance's directory (kept across restarts).
    public func makeBackingFile(name: String, size: UInt64) throws -> String {
        let path = directory.appendingPathComponent(name).path
        guard FileManager.default.createFile(atPath: path, contents: nil) else { throw TestPeerError("cannot create \(path)") }
        guard truncate(path, off_t(size)) == 0 else { throw TestPeerError("truncate \(path) failed") }
        return path
    }

    /// Stops tgtd for good (kill -9: its state does not matter) and removes the directory.
    public func stop() {
        kill9()
        try? FileManager.default.removeItem(at: directory)
    }

    deinit { if let p = process, p.isRunning { kill(p.processIdentifier, SIGKILL) } }
}
