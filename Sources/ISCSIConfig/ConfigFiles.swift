#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// The configuration directory (open-iscsi's `/etc/iscsi` layout).
public enum ConfigDirectory {
    public static let defaultPath = "/etc/iscsi"
    /// Environment variable that overrides the default (a CLI flag overrides both).
    public static let environmentVariable = "ISCSI_NBD_CONFIG_DIR"

    /// `explicit` (the CLI flag) if given, else `$ISCSI_NBD_CONFIG_DIR` if non-empty, else `/etc/iscsi`.
    public static func resolve(explicit: String? = nil,
                               environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let explicit, !explicit.isEmpty { return explicit }
        if let env = environment[environmentVariable], !env.isEmpty { return env }
        return defaultPath
    }
}

/// `<configdir>/iscsid.conf`: the daemon-wide defaults, validated for the keys we know.
public enum ISCSIDConf {
    public static let fileName = "iscsid.conf"

    /// Parses and validates iscsid.conf text. Unknown keys are kept and ignored.
    public static func parse(_ text: String, file: String? = nil) throws(ISCSIConfigError) -> ConfigDocument {
        let document = try ConfigDocument.parse(text, file: file)
        try ConfigKeys.validate(document, file: file)
        return document
    }

    /// Loads `<configDirectory>/iscsid.conf`; a missing file is an empty document (built-in defaults).
    public static func load(configDirectory: String) throws(ISCSIConfigError) -> ConfigDocument {
        let path = configDirectory + "/" + fileName
        guard let text = try ConfigFiles.readIfPresent(path) else { return ConfigDocument() }
        return try parse(text, file: path)
    }
}

extension InitiatorNameFile {
    /// Reads `<configDirectory>/initiatorname.iscsi`, generating it (mode 0644, atomically) with a
    /// fresh ``ISCSIName/generate(prefix:)`` name when it does not exist.
    public static func loadOrCreate(configDirectory: String,
                                    prefix: String = ISCSIName.defaultGeneratedPrefix) throws(ISCSIConfigError) -> InitiatorNameFile {
        let path = configDirectory + "/" + fileName
        if let text = try ConfigFiles.readIfPresent(path) { return try parse(text, file: path) }
        let file = InitiatorNameFile(name: try ISCSIName.generate(prefix: prefix))
        try ConfigFiles.createDirectory(configDirectory)
        try ConfigFiles.writeAtomically(path, contents: file.render(), mode: 0o644)
        return file
    }
}

/// Small POSIX helpers: bounded reads, atomic 0600 writes.
enum ConfigFiles {
    static func ioError(_ what: String, _ path: String, errno code: Int32 = errno) -> ISCSIConfigError {
        ISCSIConfigError(.io, "\(what) failed: \(String(cString: strerror(code)))", file: path)
    }

    /// Reads a text file of at most ``ConfigDocument/maximumSize`` bytes; nil if it does not exist.
    static func readIfPresent(_ path: String) throws(ISCSIConfigError) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw ioError("open", path)
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ioError("read", path)
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
            if bytes.count > ConfigDocument.maximumSize {
                throw ISCSIConfigError(.io, "file larger than \(ConfigDocument.maximumSize) bytes", file: path)
            }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ISCSIConfigError(.malformedLine, "file is not valid UTF-8", file: path)
        }
        return text
    }

    /// Writes `contents` to a temporary file in the same directory created with `mode`, fsyncs it,
    /// and renames it over `path`, so readers see the old or the new file, never a partial one, and
    /// a secret-bearing file is never readable by others, not even briefly.
    static func writeAtomically(_ path: String, contents: String, mode: mode_t) throws(ISCSIConfigError) {
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { String(path[..<$0]) } ?? "."
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        var generator = SystemRandomNumberGenerator()
        let temp = "\(dir)/.\(base).tmp-\(String(generator.next() & 0xFFFF_FFFF, radix: 16))"
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw ioError("create", temp) }
        var ok = false
        defer {
            if !ok { unlink(temp) }
        }
        // The umask may have cleared bits of `mode`; set it exactly.
        guard fchmod(fd, mode) == 0 else { let e = errno; close(fd); throw ioError("chmod", temp, errno: e) }
        let bytes = Array(contents.utf8)
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                let e = errno
                close(fd)
                throw ioError("write", temp, errno: e)
            }
            written += n
        }
        guard fsync(fd) == 0 else { let e = errno; close(fd); throw ioError("fsync", temp, errno: e) }
        guard close(fd) == 0 else { throw ioError("close", temp) }
        guard rename(temp, path) == 0 else { throw ioError("rename", path) }
        ok = true
    }

    /// `mkdir -p` with mode 0755.
    static func createDirectory(_ path: String) throws(ISCSIConfigError) {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, 0o755) != 0 && errno != EEXIST { throw ioError("mkdir", current) }
        }
    }

    /// Entries of a directory (without `.`/`..`); empty if it does not exist.
    static func list(_ path: String) throws(ISCSIConfigError) -> [String] {
        guard let dir = opendir(path) else {
            if errno == ENOENT || errno == ENOTDIR { return [] }
            throw ioError("opendir", path)
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." && !name.hasPrefix(".") { names.append(name) }
        }
        return names.sorted()
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    static func remove(_ path: String) throws(ISCSIConfigError) {
        guard unlink(path) == 0 || errno == ENOENT else { throw ioError("unlink", path) }
    }

    /// Removes `path` if it is an empty directory (ignores "not empty").
    static func removeIfEmpty(_ path: String) {
        _ = rmdir(path)
    }
}
