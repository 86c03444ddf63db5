import ArgumentParser
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// `iscsi-nbd udev-id nbdN`: udev's IMPORT{program} helper (dist/udev/60-iscsi-nbd.rules). Prints the
/// device's identity as udev properties (ID_PATH, ID_SERIAL, ID_WWN...), from which udev makes
/// /dev/disk/by-path/ip-HOST:PORT-iscsi-IQN-lun-N and the by-id links, and systemd their `.device` units.
/// Prints nothing for a device that is not one of ours. Reads only sysfs and /run: it never waits on the
/// daemon or on the device, so it cannot stall udev.
struct UdevIDCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "udev-id",
        abstract: "Print a /dev/nbdN device's udev properties (for 60-iscsi-nbd.rules).",
        shouldDisplay: false
    )

    @Argument(help: "The kernel's name for the device: nbdN (or /dev/nbdN).")
    var device: String

    @Option(name: .long, help: ArgumentHelp("sysfs block directory (tests).", visibility: .hidden))
    var sysBlock = DeviceRegistry.sysBlock

    @Option(name: .long, help: ArgumentHelp("Runtime directory (tests).", visibility: .hidden))
    var runtimeDir = DeviceRegistry.defaultDirectory

    @Option(name: .long, help: ArgumentHelp("/proc (tests).", visibility: .hidden))
    var proc = "/proc"

    func run() throws {
        let name = device.hasPrefix("/dev/") ? String(device.dropFirst(5)) : device
        let registry = DeviceRegistry(directory: runtimeDir, sysBlock: sysBlock, proc: proc)
        guard let identity = registry.identity(of: name) else { return }
        for (key, value) in identity.udevProperties { print("\(key)=\(value)") }
    }
}

/// Where a kernel device's identity is kept for udev. A netlink device carries it in the kernel
/// (/sys/block/nbdN/backend). An ioctl device has no backend attribute, so the process serving it leaves
/// `DIR/devices/nbdN` ("PID BACKEND") before NBD_DO_IT; it counts only while that process's thread is the
/// one the kernel runs the device for (/sys/block/nbdN/pid), so a stale file names nothing.
struct DeviceRegistry: Sendable {
    static let defaultDirectory = "/run/iscsi-nbd"
    static let sysBlock = "/sys/block"

    var directory: String = Self.defaultDirectory
    var sysBlock: String = Self.sysBlock
    var proc: String = "/proc"

    /// "nbd0" ... only: the name goes into paths.
    static func isDeviceName(_ name: String) -> Bool {
        name.hasPrefix("nbd") && name.count > 3 && name.count <= 12 && name.dropFirst(3).allSatisfy { $0.isASCII && $0.isNumber }
    }

    func identity(of name: String) -> DeviceIdentity? {
        guard Self.isDeviceName(name) else { return nil }
        if let backend = read("\(sysBlock)/\(name)/backend"), !backend.isEmpty {
            return DeviceIdentity(backendIdentifier: backend)
        }
        guard let entry = read("\(directory)/devices/\(name)"), let space = entry.firstIndex(of: " "),
              let owner = Int32(entry[..<space]), owner > 0,
              let runner = read("\(sysBlock)/\(name)/pid").flatMap({ Int32($0) }),
              access("\(proc)/\(owner)/task/\(runner)", F_OK) == 0
        else { return nil }
        return DeviceIdentity(backendIdentifier: String(entry[entry.index(after: space)...]))
    }

    /// Records an ioctl device before NBD_DO_IT (best effort: without it udev makes no links for it).
    func register(index: Int, identity: DeviceIdentity, pid: Int32 = getpid()) throws {
        let dir = "\(directory)/devices"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        let path = "\(dir)/nbd\(index)"
        try Data("\(pid) \(identity.backendIdentifier)\n".utf8).write(to: URL(fileURLWithPath: path + ".new"))
        guard rename(path + ".new", path) == 0 else { throw CommandFailure("rename \(path): \(String(cString: strerror(errno)))") }
    }

    /// Removes our record of nbd`index` (another process's is left alone).
    func unregister(index: Int, pid: Int32 = getpid()) {
        let path = "\(directory)/devices/nbd\(index)"
        if let entry = read(path), entry.split(separator: " ").first == Substring("\(pid)") { unlink(path) }
    }

    private func read(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return String(decoding: data.prefix(4096), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
