import ArgumentParser
import Foundation
import ISCSIConfig

/// The iscsiadm-compatible surface, so open-iscsi guides work with the binary's name swapped in:
///
///     iscsi-nbd -m discovery -t sendtargets -p 10.0.0.1:3260
///     iscsi-nbd -m discovery -t isns [-p HOST:PORT]
///     iscsi-nbd -m node                                   # list records
///     iscsi-nbd -m node -T IQN [-p HOST:PORT]             # show one (secrets masked)
///     iscsi-nbd -m node -T IQN -p HOST:PORT --op new|delete
///     iscsi-nbd -m node --targetname=IQN --op update --name=KEY --value=V
///     iscsi-nbd -m node [-T IQN [-p HOST:PORT]] --login | --logout
///     iscsi-nbd -m session [-P 1|2|3] [-r SID]
///     iscsi-nbd -m session [-r SID] -s                 # counters (iscsiadm --stats)
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

    @Option(name: [.customShort("m"), .customLong("mode")], help: "discovery, node or session (discoverydb is discovery; iface, fw and host are not supported).")
    var mode: AdminMode?

    @Option(name: [.customShort("t"), .customLong("type")], help: "Discovery type: sendtargets (st) or isns.")
    var type: DiscoveryType?

    @Option(name: [.customShort("p"), .customLong("portal")], help: "HOST[:PORT] (ports default to 3260, iSNS 3205).")
    var portal: String?

    @Option(name: [.customShort("T"), .customLong("targetname")], help: "Target IQN.")
    var targetName: String?

    @Option(name: [.customShort("o"), .customLong("op")], help: "Record operation: new, delete, update, show.")
    var op: RecordOperation?

    @Option(name: [.customShort("n"), .customLong("name")], help: "Record key for --op update.")
    var name: String?

    @Option(name: [.customShort("v"), .customLong("value")], help: "Record value for --op update.")
    var value: String?

    @Flag(name: [.customShort("l"), .customLong("login")], help: "Log in to the selected node records.")
    var login = false

    @Flag(name: [.customShort("u"), .customLong("logout")], help: "Log out of the selected node records.")
    var logout = false

    @Option(name: [.customShort("P"), .customLong("print")], help: "Detail level for -m session (0 to 3).")
    var printLevel: PrintLevel?

    @Option(name: [.customShort("r"), .customLong("sid")], help: "With -m session: only the session with this id.")
    var sid: Int?

    @Flag(name: [.customShort("s"), .customLong("stats")], help: "With -m session: the sessions' counters (PDUs, errors, recoveries; see docs/metrics.md).")
    var stats = false

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
        if mode != .session, sid != nil || stats { throw ValidationError("-r and -s go with -m session") }
        switch mode {
        case .discovery, .discoverydb:
            guard let type else { throw ValidationError("-m discovery needs -t sendtargets or -t isns") }
            let kind: AdminRequest.DiscoveryType = type == .isns ? .isns : .sendTargets
            if kind == .sendTargets && portal == nil {
                throw ValidationError("-m discovery -t sendtargets needs -p HOST[:PORT]")
            }
            let p = try portal.map { try Self.portal($0, defaultPort: kind == .isns ? ISNSServerSettings.defaultPort : Portal.defaultPort) }
            return .discovery(kind, portal: p, login: login)
        case .node:
            let p = try portal.map { try Self.portal($0, defaultPort: Portal.defaultPort) }
            if login { return .nodeLogin(target: targetName, portal: p) }
            if logout { return .nodeLogout(target: targetName, portal: p) }
            switch op ?? .show {
            case .show:
                if name != nil || value != nil { throw ValidationError("--name/--value go with --op update") }
                return targetName.map { .nodeShow(target: $0, portal: p) } ?? .nodeList
            case .new:
                guard let targetName, let p else { throw ValidationError("--op new needs -T IQN and -p HOST[:PORT]") }
                return .nodeNew(target: targetName, portal: p)
            case .delete:
                guard let targetName else { throw ValidationError("--op delete needs -T IQN (and optionally -p)") }
                return .nodeDelete(target: targetName, portal: p)
            case .update:
                guard let name, let value else { throw ValidationError("--op update needs --name KEY and --value VALUE") }
                return .nodeUpdate(target: targetName, portal: p, key: name, value: value)
            }
        case .session:
            if let sid, sid < 1 { throw ValidationError("-r \(sid): session ids start at 1") }
            if logout { return .nodeLogout(target: targetName, portal: nil) }
            if stats { return .sessionStats(sid: sid) }
            return .sessionList(printLevel: (printLevel ?? .zero).rawValue, sid: sid)
        case .iface, .fw, .host:
            throw ValidationError("-m \(mode.rawValue) is not supported by iscsi-nbd (no offload interfaces or firmware boot)")
        }
    }

    /// `-p`: the project's one portal grammar (`Portal`), with iscsiadm's `,TPGT` suffix accepted.
    static func portal(_ text: String, defaultPort: Int) throws -> Portal {
        do { return try Portal(parsing: text, defaultPort: defaultPort) } catch { throw ValidationError("-p \(text): \(error)") }
    }

    func validate() throws { _ = try request() }

    func run() async throws {
        do {
            try await AdminRuntime(configDir: configDir, debug: debug ?? 0).perform(try request())
        } catch let error as ExitCodeError {
            FileHandle.standardError.write(Data("iscsi-nbd: \(error.message)\n".utf8))
            throw ExitCode(error.status.rawValue)
        }
    }
}

/// `-m`: iscsiadm's modes. ArgumentParser checks the value and lists the choices in --help.
enum AdminMode: String, CaseIterable, ExpressibleByArgument {
    case discovery, discoverydb, node, session, iface, fw, host
}

/// `-t`: SendTargets (`sendtargets`, `st`) or iSNS.
enum DiscoveryType: String, CaseIterable, ExpressibleByArgument {
    case sendtargets, st, isns
    init?(argument: String) { self.init(rawValue: argument.lowercased()) }
}

/// `-o` / `--op`: what to do with node records.
enum RecordOperation: String, CaseIterable, ExpressibleByArgument {
    case new, delete, update, show
    init?(argument: String) { self.init(rawValue: argument.lowercased()) }
}

/// `-P`: the detail of `-m session` (iscsiadm's print levels 0 to 3).
enum PrintLevel: Int, CaseIterable, ExpressibleByArgument {
    case zero = 0, one, two, three
}

/// What an admin invocation asks for.
enum AdminRequest: Equatable {
    enum DiscoveryType: Equatable { case sendTargets, isns }
    case discovery(DiscoveryType, portal: Portal?, login: Bool)
    case nodeList
    case nodeShow(target: String, portal: Portal?)
    case nodeNew(target: String, portal: Portal)
    case nodeDelete(target: String, portal: Portal?)
    case nodeUpdate(target: String?, portal: Portal?, key: String, value: String)
    case nodeLogin(target: String?, portal: Portal?)
    case nodeLogout(target: String?, portal: Portal?)
    case sessionList(printLevel: Int, sid: Int? = nil)
    case sessionStats(sid: Int?)
}
