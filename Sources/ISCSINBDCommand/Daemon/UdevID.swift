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

/// Which process serves which kernel device, and who the device is. Every process that attaches a device
/// (the daemon, `attach`) leaves `DIR/devices/nbdN` ("PID BACKEND"); it is how a restarted daemon tells
/// its predecessor's orphans (re-adopted) from devices a live `attach` serves (left alone). A netlink
/// device also carries its identity in the kernel (/sys/block/nbdN/backend), which udev reads; an ioctl
/// device has no backend attribute, so for udev its record counts only while that process's thread is
/// the one the kernel runs the device for (/sys/block/nbdN/pid), and a stale file names nothing.
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

    /// The process that recorded nbd`index`, when that process still runs iscsi-nbd (a reused pid does
    /// not count).
    func liveOwner(of index: Int) -> Int32? {
        guard let entry = read("\(directory)/devices/nbd\(index)"),
              let owner = entry.split(separator: " ").first.flatMap({ Int32($0) }), owner > 0,
              let comm = read("\(proc)/\(owner)/comm"), comm.hasPrefix("iscsi-nbd") else { return nil }
        return owner
    }

    /// Netlink devices of ours that nothing serves: a backend identifier of ours, still configured (the
    /// kernel keeps `pid` until the device is disconnected), and no live iscsi-nbd process that recorded it.
    /// What a restarted daemon, or `attach` run again, takes back (NBD_CMD_RECONFIGURE).
    func orphans() -> [Orphan] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: sysBlock) else { return [] }
        return names.compactMap { name -> Orphan? in
            guard Self.isDeviceName(name), let index = Int(name.dropFirst(3)),
                  let backend = read("\(sysBlock)/\(name)/backend"), let identity = DeviceIdentity(backendIdentifier: backend),
                  read("\(sysBlock)/\(name)/pid") != nil, liveOwner(of: index) == nil else { return nil }
            return Orphan(index: index, backend: backend, identity: identity)
        }.sorted { $0.index < $1.index }
    }

    /// The orphans a process setting devices up with `interface` takes back: none for ioctl. An orphan is a
    /// netlink device (an ioctl device dies with its process) and only netlink's NBD_CMD_RECONFIGURE gives it
    /// new sockets; `attach` and the daemon both follow this.
    func orphans(adoptableWith interface: KernelInterface) -> [Orphan] {
        interface == .ioctl ? [] : orphans()
    }

    struct Orphan: Hashable, Sendable {
        var index: Int
        /// The identifier exactly as the kernel holds it: NBD_CMD_RECONFIGURE must repeat it.
        var backend: String
        var identity: DeviceIdentity
        var path: String { "/dev/nbd\(index)" }
    }

    /// Records that this process serves nbd`index` (for an ioctl device, before NBD_DO_IT, so udev finds it).
    func register(index: Int, identity: DeviceIdentity, pid: Int32 = getpid()) throws {
        let dir = "\(directory)/devices"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        let path = "\(dir)/nbd\(index)"
        try Data("\(pid) \(identity.backendIdentifier)\n".utf8).write(to: URL(fileURLWithPath: path + ".new"))
        guard rename(path + ".new", path) == 0 else { throw CommandFailure("rename \(path): \(String(cString: strerror(errno)))") }
    }

    /// `register`, where a failure only costs udev's links or a restarted daemon's re-adoption: logged by
    /// nobody, never fatal to the attach.
    func record(index: Int, identity: DeviceIdentity) {
        try? register(index: index, identity: identity)
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
