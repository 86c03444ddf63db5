import Foundation

/// Errors from starting or driving test peers.
public struct TestPeerError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// True when running under CI (`CI=true`): real-peer tests must run there, never skip.
public var isCI: Bool { ProcessInfo.processInfo.environment["CI"].map { $0 == "true" || $0 == "1" } ?? false }

/// Finds an executable on PATH (and in /usr/sbin, where tgtd lives).
public func findExecutable(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for dir in path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin", "/usr/bin"] {
        let candidate = dir + "/" + name
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
}

/// Whether real-peer tests that need `tools` can run. Outside CI a missing tool skips the test;
/// in CI it is a failure (the test command installs everything).
public func peersAvailable(_ tools: String...) -> Bool {
    let missing = tools.filter { findExecutable($0) == nil }
    if missing.isEmpty { return true }
    if isCI { fatalError("CI=true but these test peers are missing: \(missing.joined(separator: ", "))") }
    return false
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough for tests).
public func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestPeerError("socket() failed") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = 0
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
    }
    guard bound == 0 else { throw TestPeerError("bind() failed") }
    let named = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    guard named == 0 else { throw TestPeerError("getsockname() failed") }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// Whether a TCP connection to 127.0.0.1:`port` is accepted now (a peer that has started listens).
public func loopbackPortAccepts(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = UInt16(port).bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    return withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
        }
    }
}

/// Runs a program to completion and returns its output; throws on a non-zero exit.
@discardableResult
public func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                allowFailure: Bool = false) throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: findExecutable(executable) ?? executable)
    process.arguments = arguments
    if let environment { process.environment = environment }
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    try process.run()
    // Read both pipes concurrently with the process so a chatty child cannot block on a full pipe.
    let errData = LockedData()
    let errThread = Thread { errData.set(err.fileHandleForReading.readDataToEndOfFile()) }
    errThread.start()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    while !errData.done { usleep(1000) }
    let result = (process.terminationStatus, String(decoding: outData, as: UTF8.self),
                  String(decoding: errData.data, as: UTF8.self))
    if result.0 != 0 && !allowFailure {
        throw TestPeerError("\(executable) \(arguments.joined(separator: " ")) exited \(result.0): \(result.2)\(result.1)")
    }
    return result
}

final class LockedData: @unchecked Sendable {
    // SAFETY: every access holds `lock`.
    private let lock = NSLock()
    private var _data = Data()
    private var _done = false
    func set(_ d: Data) { lock.lock(); _data = d; _done = true; lock.unlock() }
    var done: Bool { lock.lock(); defer { lock.unlock() }; return _done }
    var data: Data { lock.lock(); defer { lock.unlock() }; return _data }
}

/// A private tgtd (Debian `tgt`) on loopback, started for one test suite and stopped by PID.
///
///     let tgt = try TGTD.start()
///     try tgt.addTarget(tid: 1, iqn: "iqn.2026-11.test:disk")
///     try tgt.addLUN(tid: 1, lun: 1, backingFile: path)      // LUN 0 is tgt's controller
///     defer { tgt.stop() }
public final class TGTD: @unchecked Sendable {
    // SAFETY: mutable state is only touched from the test that owns the instance.
    public let port: Int
    public let controlPort: Int
    public let directory: URL
    private let process: Process
    public var portal: String { "127.0.0.1:\(port)" }

    private init(port: Int, controlPort: Int, directory: URL, process: Process) {
        self.port = port
        self.controlPort = controlPort
        self.directory = directory
        self.process = process
    }

    /// Starts tgtd in the foreground on 127.0.0.1 with a fresh port and control port.
    public static func start() throws -> TGTD {
        guard let tgtd = findExecutable("tgtd") else { throw TestPeerError("tgtd not found (apt-get install tgt)") }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tgtd-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var lastError: Error = TestPeerError("tgtd did not start")
        for _ in 0..<5 {
            let port = try freeLoopbackPort()
            // tgtd rejects -C values of 32768 and above ("out of range"); distinct from the iSCSI port.
            let control = Int.random(in: 20000..<32768)
            // A failed attempt's stop() removed the directory.
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: tgtd)
            process.arguments = ["-f", "-C", String(control), "--iscsi", "portal=127.0.0.1:\(port)"]
            let log = dir.appendingPathComponent("tgtd.log")
            FileManager.default.createFile(atPath: log.path, contents: nil)
            let handle = try FileHandle(forWritingTo: log)
            process.standardOutput = handle
            process.standardError = handle
            process.standardInput = FileHandle.nullDevice
            try process.run()
            let t = TGTD(port: port, controlPort: control, directory: dir, process: process)
            // Wait until the management channel answers and the portal accepts connections.
            for _ in 0..<100 {
                if !process.isRunning { break }
                if (try? t.tgtadm(["--op", "show", "--mode", "system"])) != nil, t.portalAccepts() { return t }
                usleep(50_000)
            }
            lastError = TestPeerError("tgtd did not start: \((try? String(contentsOf: log, encoding: .utf8)) ?? "")")
            t.stop()
        }
        throw lastError
    }

    private func portalAccepts() -> Bool {
        loopbackPortAccepts(port)
    }

    @discardableResult
    public func tgtadm(_ args: [String]) throws -> String {
        try run("tgtadm", ["-C", String(controlPort), "--lld", "iscsi"] + args).stdout
    }

    /// Creates a target bound to all initiators.
    public func addTarget(tid: Int, iqn: String) throws {
        try tgtadm(["--op", "new", "--mode", "target", "--tid", String(tid), "-T", iqn])
        try tgtadm(["--op", "bind", "--mode", "target", "--tid", String(tid), "-I", "ALL"])
    }

    /// Adds a LUN (1 and up; 0 is the controller) backed by a file, or `--bstype null` with `backingFile` nil.
    public func addLUN(tid: Int, lun: Int, backingFile: String?, blockSize: Int? = nil, extra: [String] = []) throws {
        var args = ["--op", "new", "--mode", "logicalunit", "--tid", String(tid), "--lun", String(lun)]
        if let backingFile { args += ["-b", backingFile] } else { args += ["--bstype", "null", "-b", "/dev/null"] }
        if let blockSize { args += ["--blocksize", String(blockSize)] }
        try tgtadm(args + extra)
    }

    /// Makes a sparse backing file of `size` bytes in this tgtd's directory and returns its path.
    public func makeBackingFile(name: String, size: UInt64) throws -> String {
        let path = directory.appendingPathComponent(name).path
        guard FileManager.default.createFile(atPath: path, contents: nil) else { throw TestPeerError("cannot create \(path)") }
        guard truncate(path, off_t(size)) == 0 else { throw TestPeerError("truncate \(path) failed") }
        return path
    }

    /// Adds a CHAP account and binds it to a target; `outgoing` makes it the target's own
    /// credentials for mutual CHAP.
    public func addAccount(tid: Int, user: String, password: String, outgoing: Bool = false) throws {
        try tgtadm(["--op", "new", "--mode", "account", "--user", user, "--password", password])
        var bind = ["--op", "bind", "--mode", "account", "--tid", String(tid), "--user", user]
        if outgoing { bind.append("--outgoing") }
        try tgtadm(bind)
    }

    /// Stops tgtd: targets are deleted with --force first (tgtd ignores SIGTERM while it has targets),
    /// then the system is shut down; the process is killed by PID if it lingers.
    public func stop() {
        if process.isRunning {
            if let out = try? tgtadm(["--op", "show", "--mode", "target"]) {
                for line in out.split(separator: "\n") where line.hasPrefix("Target ") {
                    // "Target 1: iqn..."
                    let tid = line.dropFirst(7).prefix { $0.isNumber }
                    _ = try? tgtadm(["--op", "delete", "--force", "--mode", "target", "--tid", String(tid)])
                }
            }
            _ = try? run("tgtadm", ["-C", String(controlPort), "--op", "delete", "--mode", "system"], allowFailure: true)
            for _ in 0..<40 where process.isRunning { usleep(50_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: directory)
    }

    deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
}
