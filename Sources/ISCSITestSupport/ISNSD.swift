import Foundation

/// A private isnsd (Debian `open-isns-server`) on loopback with its own database directory,
/// started for one test and stopped by PID. `isnsadm` (Debian `open-isns-utils`) drives it.
///
///     let isns = try ISNSD.start()
///     defer { isns.stop() }
///     try isns.register(entity: "E1", portal: "127.0.0.1:3260", targets: ["iqn.2026-11.test:a"])
///     let text = try isns.isnsadm(["--query", "iscsi-node-type=Initiator"])
public final class ISNSD: @unchecked Sendable {
    // SAFETY: mutable state is only touched from the test that owns the instance.
    public let port: Int
    public let directory: URL
    private let process: Process
    public var address: String { "127.0.0.1:\(port)" }
    private var adminConfig: String { directory.appendingPathComponent("isnsadm.conf").path }

    private init(port: Int, directory: URL, process: Process) {
        self.port = port
        self.directory = directory
        self.process = process
    }

    /// Starts isnsd in the foreground on 127.0.0.1 with a fresh port, a private database, pid file
    /// and control socket, security off and the default discovery domain on (without it a new
    /// initiator sees no targets).
    public static func start() throws -> ISNSD {
        guard let isnsd = findExecutable("isnsd") else { throw TestPeerError("isnsd not found (apt-get install open-isns-server)") }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("isnsd-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("db"), withIntermediateDirectories: true)
        var lastError: Error = TestPeerError("isnsd did not start")
        for _ in 0..<5 {
            let port = try freeLoopbackPort()
            let conf = dir.appendingPathComponent("isnsd.conf")
            try """
                Database = \(dir.appendingPathComponent("db").path)
                BindAddress = 127.0.0.1:\(port)
                Security = 0
                DefaultDiscoveryDomain = 1
                SLPRegister = 0
                PIDFile = \(dir.appendingPathComponent("isnsd.pid").path)
                ControlSocket = \(dir.appendingPathComponent("control").path)
                """.write(to: conf, atomically: true, encoding: .utf8)
            try """
                ServerAddress = 127.0.0.1:\(port)
                Security = 0
                SourceName = iqn.2026-11.test.isnsadm:control
                """.write(to: dir.appendingPathComponent("isnsadm.conf"), atomically: true, encoding: .utf8)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: isnsd)
            process.arguments = ["-c", conf.path, "-f"]
            let log = dir.appendingPathComponent("isnsd.log")
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            let handle = try FileHandle(forWritingTo: log)
            process.standardOutput = handle
            process.standardError = handle
            process.standardInput = FileHandle.nullDevice
            try process.run()
            let server = ISNSD(port: port, directory: dir, process: process)
            for _ in 0..<100 {
                if !process.isRunning { break }
                if server.accepts() { return server }
                usleep(50_000)
            }
            lastError = TestPeerError("isnsd did not start: \((try? String(contentsOf: log, encoding: .utf8)) ?? "")")
            server.stop(removeDirectory: false)
        }
        try? FileManager.default.removeItem(at: dir)
        throw lastError
    }

    private func accepts() -> Bool {
        loopbackPortAccepts(port)
    }

    /// Runs isnsadm against this server and returns its standard output.
    @discardableResult
    public func isnsadm(_ args: [String]) throws -> String {
        try run("isnsadm", ["-c", adminConfig] + args).stdout
    }

    /// Registers an entity with one portal and the given target nodes.
    public func register(entity: String, portal: String, targets: [String]) throws {
        try isnsadm(["--register", "entity=\(entity)", "portal=\(portal)"] + targets.map { "target=\($0)" })
    }

    /// The iSCSI names of registered nodes of `type` ("Initiator" or "Target"), from `isnsadm --query`.
    public func nodeNames(type: String) throws -> [String] {
        let out = try isnsadm(["--query", "iscsi-node-type=\(type)"])
        return out.split(separator: "\n").compactMap { line -> String? in
            guard line.contains("iSCSI name"), let start = line.firstIndex(of: "\""), let end = line.lastIndex(of: "\""),
                  start < end else { return nil }
            return String(line[line.index(after: start)..<end])
        }
    }

    /// Stops isnsd by PID (SIGTERM, then SIGKILL) and removes its directory.
    public func stop() { stop(removeDirectory: true) }

    private func stop(removeDirectory: Bool) {
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            for _ in 0..<40 where process.isRunning { usleep(50_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        if removeDirectory { try? FileManager.default.removeItem(at: directory) }
    }

    deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
}
