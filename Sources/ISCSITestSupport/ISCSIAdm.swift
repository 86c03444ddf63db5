import Foundation

/// Runs open-iscsi's `iscsiadm` against a private configuration directory, to check that node
/// records move between the two tools. iscsiadm's paths are compiled in (`/etc/iscsi`), so each
/// call runs in a private mount namespace (`unshare -m`, needs root) with `directory` bind-mounted
/// over `/etc/iscsi`; the host's `/etc/iscsi` is never touched.
///
/// The binary is `$ISCSI_NBD_TEST_ISCSIADM` if set (e.g. one extracted from the Debian package,
/// with `LD_LIBRARY_PATH` in `$ISCSI_NBD_TEST_ISCSIADM_LIBS`), else `iscsiadm` on PATH (Debian
/// `open-iscsi`). `/etc/iscsi` must exist as a mount point (installing open-iscsi creates it).
public struct ISCSIAdm: Sendable {
    public let executable: String
    public let directory: String
    private let libraryPath: String?

    /// Whether iscsiadm can be used here. Outside CI a missing piece skips; in CI it is fatal.
    public static var available: Bool {
        let env = ProcessInfo.processInfo.environment
        let binary = env["ISCSI_NBD_TEST_ISCSIADM"] ?? findExecutable("iscsiadm")
        let ok = binary.map { FileManager.default.isExecutableFile(atPath: $0) } == true
            && findExecutable("unshare") != nil && FileManager.default.fileExists(atPath: "/etc/iscsi") && getuid() == 0
        if !ok && isCI { fatalError("CI=true but iscsiadm (Debian open-iscsi), unshare or /etc/iscsi is missing, or not root") }
        return ok
    }

    /// Uses `directory` as iscsiadm's /etc/iscsi.
    public init(directory: String) throws {
        let env = ProcessInfo.processInfo.environment
        guard let binary = env["ISCSI_NBD_TEST_ISCSIADM"] ?? findExecutable("iscsiadm") else {
            throw TestPeerError("iscsiadm not found (apt-get install open-iscsi)")
        }
        self.executable = binary
        self.directory = directory
        self.libraryPath = env["ISCSI_NBD_TEST_ISCSIADM_LIBS"]
    }

    /// Runs `iscsiadm args...` and returns its standard output (throws on a non-zero exit).
    @discardableResult
    public func callAsFunction(_ args: [String]) throws -> String {
        var environment = ProcessInfo.processInfo.environment
        if let libraryPath { environment["LD_LIBRARY_PATH"] = libraryPath }
        let script = "mount --bind \"$0\" /etc/iscsi && exec \"$@\""
        return try run("unshare", ["-m", "--propagation", "private", "sh", "-c", script, directory, executable] + args,
                       environment: environment).stdout
    }
}
