import ArgumentParser
import Foundation

/// The iscsiadm-compatible surface, so open-iscsi guides work with the binary's name swapped in:
///
///     iscsi-nbd -m discovery -t sendtargets -p 10.0.0.1:3260
///     iscsi-nbd -m discovery -t isns [-p HOST:PORT]
///     iscsi-nbd -m node                                   # list records
///     iscsi-nbd -m node -T IQN [-p HOST:PORT]             # show one (secrets masked)
///     iscsi-nbd -m node -T IQN -p HOST:PORT --op new|delete
///     iscsi-nbd -m node --targetname=IQN --op update --name=KEY --value=V
///     iscsi-nbd -m node [-T IQN [-p HOST:PORT]] --login | --logout
///     iscsi-nbd -m session [-P 1|2|3]
///
/// Parsing is separate from doing: `request()` turns the flags into an `AdminRequest` (tested without IO).
struct Admin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "admin",
        abstract: "iscsiadm-compatible modes: -m discovery | node | session (the default command).",
        discussion: """
            Examples (as in open-iscsi guides):
              iscsi-nbd -m discovery -t sendtargets -p 10.0.0.1:3260
              iscsi-nbd -m node --targetname=IQN --op update --name=node.session.auth.username --value=USER
              iscsi-nbd -m node --login
              iscsi-nbd -m session -P 1
            """
    )

    @Option(name: [.customShort("m"), .customLong("mode")], help: "discovery, node, session (or discoverydb, iface: not supported).")
    var mode: String?

    @Option(name: [.customShort("t"), .customLong("type")], help: "Discovery type: sendtargets (st) or isns.")
    var type: String?

    @Option(name: [.customShort("p"), .customLong("portal")], help: "HOST[:PORT] (ports default to 3260, iSNS 3205).")
    var portal: String?

    @Option(name: [.customShort("T"), .customLong("targetname")], help: "Target IQN.")
    var targetName: String?

    @Option(name: [.customShort("o"), .customLong("op")], help: "Record operation: new, delete, update, show.")
    var op: String?

    @Option(name: [.customShort("n"), .customLong("name")], help: "Record key for --op update.")
    var name: String?

    @Option(name: [.customShort("v"), .customLong("value")], help: "Record value for --op update.")
    var value: String?

    @Flag(name: [.customShort("l"), .customLong("login")], help: "Log in to the selected node records.")
    var login = false

    @Flag(name: [.customShort("u"), .customLong("logout")], help: "Log out of the selected node records.")
    var logout = false

    @Option(name: [.customShort("P"), .customLong("print")], help: "Detail level for -m session (0 to 3).")
    var printLevel: Int?

    @Option(name: [.customShort("I"), .customLong("interface")], help: "Accepted for compatibility; only 'default'.")
    var interface: String?

    @Option(name: .long, help: "Configuration directory (default /etc/iscsi, or ISCSI_NBD_CONFIG_DIR).")
    var configDir: String?

    @Option(name: [.customShort("d"), .customLong("debug")], help: "Debug level 0 to 8 (iscsiadm style).")
    var debug: Int?

    func request() throws -> AdminRequest {
        guard let mode else {
            throw ValidationError("no mode given: use -m discovery, -m node or -m session (see --help)")
        }
        if let interface, interface != "default" {
            throw ValidationError("-I \(interface): only the default interface exists (iscsi-nbd uses the kernel's TCP stack)")
        }
        if login && logout { throw ValidationError("--login and --logout exclude each other") }
        switch mode {
        case "discovery", "discoverydb":
            let kind: AdminRequest.DiscoveryType
            switch type?.lowercased() {
            case "sendtargets", "st": kind = .sendTargets
            case "isns": kind = .isns
            case nil: throw ValidationError("-m discovery needs -t sendtargets or -t isns")
            case let other?: throw ValidationError("unknown discovery type \(other): use sendtargets (st) or isns")
            }
            if kind == .sendTargets && portal == nil {
                throw ValidationError("-m discovery -t sendtargets needs -p HOST[:PORT]")
            }
            let p = try portal.map { try PortalAddress.parse($0, defaultPort: kind == .isns ? 3205 : 3260) }
            return .discovery(kind, portal: p, login: login)
        case "node":
            let p = try portal.map { try PortalAddress.parse($0, defaultPort: 3260) }
            if login { return .nodeLogin(target: targetName, portal: p) }
            if logout { return .nodeLogout(target: targetName, portal: p) }
            switch op?.lowercased() {
            case nil, "show":
                if name != nil || value != nil { throw ValidationError("--name/--value go with --op update") }
                return targetName == nil ? .nodeList : .nodeShow(target: targetName!, portal: p)
            case "new":
                guard let targetName, let p else { throw ValidationError("--op new needs -T IQN and -p HOST[:PORT]") }
                return .nodeNew(target: targetName, portal: p)
            case "delete":
                guard let targetName else { throw ValidationError("--op delete needs -T IQN (and optionally -p)") }
                return .nodeDelete(target: targetName, portal: p)
            case "update":
                guard let name, let value else { throw ValidationError("--op update needs --name KEY and --value VALUE") }
                return .nodeUpdate(target: targetName, portal: p, key: name, value: value)
            case let other?:
                throw ValidationError("unknown --op \(other): use new, delete, update or show")
            }
        case "session":
            let level = printLevel ?? 0
            guard (0...3).contains(level) else { throw ValidationError("-P takes 0 to 3") }
            if logout { return .nodeLogout(target: targetName, portal: nil) }
            return .sessionList(printLevel: level)
        case "iface", "fw", "host":
            throw ValidationError("-m \(mode) is not supported by iscsi-nbd (no offload interfaces or firmware boot)")
        default:
            throw ValidationError("unknown mode \(mode): use discovery, node or session")
        }
    }

    func validate() throws { _ = try request() }

    func run() async throws {
        do {
            try await AdminRuntime(configDir: configDir, debug: debug ?? 0).perform(try request())
        } catch let error as ExitCodeError {
            FileHandle.standardError.write(Data("iscsi-nbd: \(error.message)\n".utf8))
            throw ExitCode(error.code)
        }
    }
}

/// What an admin invocation asks for.
enum AdminRequest: Equatable {
    enum DiscoveryType: Equatable { case sendTargets, isns }
    case discovery(DiscoveryType, portal: PortalAddress?, login: Bool)
    case nodeList
    case nodeShow(target: String, portal: PortalAddress?)
    case nodeNew(target: String, portal: PortalAddress)
    case nodeDelete(target: String, portal: PortalAddress?)
    case nodeUpdate(target: String?, portal: PortalAddress?, key: String, value: String)
    case nodeLogin(target: String?, portal: PortalAddress?)
    case nodeLogout(target: String?, portal: PortalAddress?)
    case sessionList(printLevel: Int)
}

/// `HOST[:PORT][,TPGT]`, with `[v6]` literals, as iscsiadm's -p takes it.
struct PortalAddress: Equatable, Hashable, CustomStringConvertible {
    var host: String
    var port: Int

    static func parse(_ text: String, defaultPort: Int) throws -> PortalAddress {
        var t = Substring(text)
        if let comma = t.lastIndex(of: ","), !t[comma...].contains("]") { t = t[..<comma] }  // drop ,TPGT
        var host: Substring
        var portText: Substring?
        if t.hasPrefix("[") {
            guard let close = t.firstIndex(of: "]") else { throw ValidationError("portal \(text): unterminated [") }
            host = t[t.index(after: t.startIndex)..<close]
            let rest = t[t.index(after: close)...]
            if rest.hasPrefix(":") { portText = rest.dropFirst() } else if !rest.isEmpty {
                throw ValidationError("portal \(text): expected :PORT after ]")
            }
        } else if t.filter({ $0 == ":" }).count == 1, let colon = t.firstIndex(of: ":") {
            host = t[..<colon]
            portText = t[t.index(after: colon)...]
        } else {
            host = t  // a name, an IPv4 address, or a bare IPv6 address
        }
        guard !host.isEmpty else { throw ValidationError("portal \(text): no host") }
        var port = defaultPort
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p) else {
                throw ValidationError("portal \(text): port must be 1 to 65535")
            }
            port = p
        }
        return PortalAddress(host: String(host), port: port)
    }

    var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
