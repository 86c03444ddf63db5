import Foundation

/// Path of the built `iscsi-nbd` executable (next to the test bundle in .build/<triple>/<config>/).
public func iscsiNBDBinary() throws -> String {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for _ in 0..<3 {
        let candidate = dir.appendingPathComponent("iscsi-nbd").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    let cwdCandidate = FileManager.default.currentDirectoryPath + "/.build/debug/iscsi-nbd"
    if FileManager.default.isExecutableFile(atPath: cwdCandidate) { return cwdCandidate }
    throw TestPeerError("iscsi-nbd binary not found next to \(CommandLine.arguments[0]); run swift build first")
}

/// A running `iscsi-nbd` process started by a test, with its output captured to files.
public final class ISCSINBDProcess: @unchecked Sendable {
    // SAFETY: owned by one test.
    public let process: Process
    public let outputPath: String
    public let directory: URL

    /// Starts `iscsi-nbd ARGS` (or `executable ARGS`, e.g. `ip netns exec NS iscsi-nbd ...`).
    /// `environment` is added to the test's own.
    public init(_ arguments: [String], environment: [String: String] = [:], executable: String? = nil) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("iscsi-nbd-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        outputPath = directory.appendingPathComponent("output.log").path
        FileManager.default.createFile(atPath: outputPath, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        process = Process()
        process.executableURL = URL(fileURLWithPath: try executable ?? iscsiNBDBinary())
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        process.environment = env
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    /// A unix socket path inside this process's private directory.
    public static func socketPath(in directory: URL, name: String = "nbd.sock") -> String {
        directory.appendingPathComponent(name).path
    }

    /// Waits until `path` is a listening unix socket, or the process exits (then throws with its output).
    public func waitForSocket(_ path: String, timeout: Double = 30) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if !process.isRunning {
                throw TestPeerError("iscsi-nbd exited \(process.terminationStatus) before listening: \(output)")
            }
            var st = stat()
            if stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK { return }
            usleep(20_000)
        }
        throw TestPeerError("iscsi-nbd did not create \(path) within \(timeout)s: \(output)")
    }

    public var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }

    /// Waits for the process to exit on its own (e.g. a failed login) and returns its status.
    public func waitForExit(timeout: Double = 60) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw TestPeerError("iscsi-nbd did not exit within \(timeout)s: \(output)")
        }
        return process.terminationStatus
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    @discardableResult
    public func terminate(timeout: Double = 30) throws -> Int32 {
        if process.isRunning { kill(process.processIdentifier, SIGTERM) }
        return try waitForExit(timeout: timeout)
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: directory)
    }
}

/// Random bytes from a seeded generator (reproducible test data without /dev/urandom per call).
public func pseudoRandomBytes(count: Int, seed: UInt64) -> [UInt8] {
    var state = seed &+ 0x9E37_79B9_7F4A_7C15
    var out = [UInt8](repeating: 0, count: count)
    var i = 0
    while i < count {
        // splitmix64
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        for b in 0..<8 where i < count {
            out[i] = UInt8(truncatingIfNeeded: z >> (UInt64(b) * 8))
            i += 1
        }
    }
    return out
}

/// Reads `length` bytes at `offset` of a file (the target's backing file).
public func readFile(_ path: String, offset: UInt64, length: Int) throws -> [UInt8] {
    guard let h = FileHandle(forReadingAtPath: path) else { throw TestPeerError("cannot open \(path)") }
    defer { try? h.close() }
    try h.seek(toOffset: offset)
    let data = try h.read(upToCount: length) ?? Data()
    return [UInt8](data)
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
/// For state that settles asynchronously (a recovery the client starts on its own), never for timing.
public func eventually(timeout: Duration = .seconds(10), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return true
}
