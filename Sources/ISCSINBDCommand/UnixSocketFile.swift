import Foundation
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// A listening unix socket at a path, root's only: the directory is made 0700 when missing, a stale socket
/// file nobody accepts on is replaced (a live one is an error), and the socket is bound under umask 077 and
/// set to 0600, so it is never reachable with looser permissions. The control socket and the metrics socket.
enum UnixSocketFile {
    static func bind(
        path: String, logger: Logger, bind: (String) async throws -> any Channel
    ) async throws -> any Channel {
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw CommandFailure("\(path) exists and is not a socket") }
            // Stale only when nobody accepts connections on it: a busy owner that is slow to answer still owns it.
            if ControlClient.someoneListens(path: path) {
                throw CommandFailure("another process listens on \(path)")
            }
            logger.info("removing a stale socket file", metadata: ["path": "\(path)"])
            unlink(path)
        }
        let old = umask(0o077)
        defer { umask(old) }
        let channel = try await bind(path)
        chmod(path, 0o600)
        return channel
    }

    static func remove(_ path: String) { unlink(path) }
}
