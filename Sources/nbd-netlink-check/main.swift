// nbd-netlink-check: a development tool that exercises NBDKernel against the real kernel (run in the VM:
// scripts/vm/scenario-netlink.sh). It performs the client side of the NBD handshake on a unix socket and
// hands the connected socket(s) to the kernel with NBD_CMD_CONNECT.
import NBDKernel

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

let usage = """
    usage: nbd-netlink-check connect --unix PATH [--export NAME] [--connections N] [--index N]
                                     [--block-size BYTES] [--timeout SECS] [--dead-timeout SECS]
                                     [--backend ID] [--destroy-on-disconnect]
           nbd-netlink-check handshake --unix PATH [--export NAME]   (handshake only, no kernel)
           nbd-netlink-check reconfigure INDEX --unix PATH [--export NAME] [--connections N] [--backend ID]
                                     [--dead-timeout SECS]   (new sockets replace dead connections)
           nbd-netlink-check monitor [--timeout SECS]   (prints the index of each NBD_CMD_LINK_DEAD)
           nbd-netlink-check disconnect INDEX
           nbd-netlink-check status [INDEX]
           nbd-netlink-check family
    connect prints the device index (N of /dev/nbdN) on stdout.
    """

func fail(_ message: String, code: Int32 = 1) -> Never {
    var stderr = StandardError()
    print("nbd-netlink-check: \(message)", to: &stderr)
    exit(code)
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        var string = string
        string.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

/// Parses `--name value` options and flags (`--name` alone) after the subcommand.
struct Options {
    var values: [String: String] = [:]
    var flags: Set<String> = []
    var positional: [String] = []

    init(_ arguments: ArraySlice<String>, flags knownFlags: Set<String>) {
        var iterator = arguments.makeIterator()
        while let argument = iterator.next() {
            if knownFlags.contains(argument) {
                flags.insert(argument)
            } else if argument.hasPrefix("--") {
                guard let value = iterator.next() else { fail("\(argument) needs a value\n\(usage)", code: 2) }
                values[argument] = value
            } else {
                positional.append(argument)
            }
        }
    }

    func integer<T: FixedWidthInteger>(_ name: String, _: T.Type = T.self) -> T? {
        guard let text = values[name] else { return nil }
        guard let value = T(text) else { fail("\(name): not a valid number: \(text)", code: 2) }
        return value
    }
}

let arguments = CommandLine.arguments
guard arguments.count >= 2 else { fail(usage, code: 2) }
let device = NBDKernelDevice()

do {
    switch arguments[1] {
    case "connect":
        let options = Options(arguments.dropFirst(2), flags: ["--destroy-on-disconnect"])
        guard let path = options.values["--unix"] else { fail("connect needs --unix PATH\n\(usage)", code: 2) }
        let connections = options.integer("--connections", Int.self) ?? 1
        guard (1...16).contains(connections) else { fail("--connections must be 1...16", code: 2) }
        var sockets: [Int32] = []
        var export: ExportInfo?
        for _ in 0..<connections {
            let fd = try connectUnix(path: path)
            sockets.append(fd)
            let info = try NBDClientHandshake.perform(fd: fd, exportName: options.values["--export"] ?? "")
            if let export, export.size != info.size { fail("connections disagree on the export size") }
            export = info
        }
        guard let export else { fail("no connection") }
        let blockSize = options.integer("--block-size", UInt32.self) ?? export.preferredBlockSize.map { min($0, 4096) } ?? 4096
        let index = try device.connect(
            sockets: sockets, size: export.size, blockSize: max(blockSize, 512),
            serverFlags: UInt64(export.transmissionFlags),
            timeout: options.integer("--timeout", Int64.self).map { .seconds($0) },
            deadConnectionTimeout: options.integer("--dead-timeout", Int64.self).map { .seconds($0) },
            index: options.integer("--index", Int.self), backendIdentifier: options.values["--backend"],
            clientFlags: options.flags.contains("--destroy-on-disconnect") ? .destroyOnDisconnect : [])
        // The kernel holds its own references to the sockets now.
        for fd in sockets { close(fd) }
        var stderr = StandardError()
        print(
            "connected /dev/nbd\(index): \(export.size) bytes, flags 0x\(String(export.transmissionFlags, radix: 16)), "
                + "\(connections) connection(s)", to: &stderr)
        print(index)
    case "reconfigure":
        guard arguments.count >= 3, let index = Int(arguments[2]) else { fail("reconfigure INDEX ...\n\(usage)", code: 2) }
        let options = Options(arguments.dropFirst(3), flags: [])
        guard let path = options.values["--unix"] else { fail("reconfigure needs --unix PATH\n\(usage)", code: 2) }
        let connections = options.integer("--connections", Int.self) ?? 1
        guard (1...16).contains(connections) else { fail("--connections must be 1...16", code: 2) }
        var sockets: [Int32] = []
        for _ in 0..<connections {
            let fd = try connectUnix(path: path)
            sockets.append(fd)
            _ = try NBDClientHandshake.perform(fd: fd, exportName: options.values["--export"] ?? "")
        }
        try device.reconfigure(
            index: index, sockets: sockets,
            deadConnectionTimeout: options.integer("--dead-timeout", Int64.self).map { .seconds($0) },
            backendIdentifier: options.values["--backend"])
        for fd in sockets { close(fd) }
    case "monitor":
        let options = Options(arguments.dropFirst(2), flags: [])
        let monitor = try NBDLinkMonitor()
        print("monitoring")  // the group is joined: events from now on are seen
        fflush(nil)
        let seconds = options.integer("--timeout", Int64.self) ?? 60
        let deadline = ContinuousClock.now.advanced(by: .seconds(seconds))
        while case let remaining = ContinuousClock.now.duration(to: deadline), remaining > .zero {
            guard let index = try monitor.next(timeout: remaining) else { break }
            print("link-dead \(index)")
            fflush(nil)
        }
    case "handshake":
        let options = Options(arguments.dropFirst(2), flags: [])
        guard let path = options.values["--unix"] else { fail("handshake needs --unix PATH\n\(usage)", code: 2) }
        let fd = try connectUnix(path: path)
        defer { close(fd) }
        let info = try NBDClientHandshake.perform(fd: fd, exportName: options.values["--export"] ?? "")
        print(
            "size \(info.size) flags 0x\(String(info.transmissionFlags, radix: 16)) "
                + "preferred-block-size \(info.preferredBlockSize.map(String.init) ?? "-")")
    case "disconnect":
        guard arguments.count == 3, let index = Int(arguments[2]) else { fail("disconnect INDEX\n\(usage)", code: 2) }
        try device.disconnect(index: index)
    case "status":
        guard arguments.count <= 3 else { fail(usage, code: 2) }
        let index: Int? = arguments.count == 3 ? Int(arguments[2]) : nil
        if arguments.count == 3 && index == nil { fail("status: bad INDEX", code: 2) }
        for entry in try device.status(index: index) {
            print("nbd\(entry.index) \(entry.isConnected ? "connected" : "disconnected")")
        }
    case "family":
        let family = try device.resolveFamily()
        print("family \(family.name) id \(family.id.rawValue) version \(family.version) maxattr \(family.maximumAttribute)")
        for (name, id) in family.multicastGroups.sorted(by: { $0.key < $1.key }) {
            print("multicast \(name) \(id)")
        }
    case "-h", "--help", "help":
        print(usage)
    default:
        fail("unknown command \(arguments[1])\n\(usage)", code: 2)
    }
} catch {
    fail("\(error)")
}
