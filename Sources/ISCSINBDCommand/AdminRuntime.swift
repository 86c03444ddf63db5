import Foundation
import ISCSIBlockBackend
import ISCSIClient
import ISCSIConfig
import ISCSIProtocol
import ISNS
import Logging
import NIOCore
import NIOPosix
import SCSI

/// Carries out an `AdminRequest` against the configuration directory, the network and (for sessions)
/// the daemon. Output follows iscsiadm's formats, so scripts written for it keep working.
struct AdminRuntime {
    var configDir: String?
    var debug: Int

    var directory: String { ConfigDirectory.resolve(explicit: configDir) }
    var database: NodeDatabase { NodeDatabase(configDirectory: directory) }

    var logger: Logger {
        var l = Logger(label: "iscsi-nbd")
        l.logLevel = debug >= 6 ? .trace : debug >= 3 ? .debug : debug >= 1 ? .info : .warning
        return l
    }

    func perform(_ request: AdminRequest) async throws {
        switch request {
        case .discovery(.sendTargets, let portal, let login):
            try await discoverSendTargets(portal!, login: login)
        case .discovery(.isns, let portal, let login):
            try await discoverISNS(portal, login: login)
        case .nodeList:
            let ids = try database.list()
            guard !ids.isEmpty else { throw noObjects("No records found") }
            for id in ids { print(nodeLine(id)) }
        case .nodeShow(let target, let portal):
            for record in try records(target: target, portal: portal) { print(record.show(), terminator: "") }
        case .nodeNew(let target, let portal):
            let id = NodeID(target: target, portal: portal, tpgt: 1)
            try ISCSIName.validate(target)
            let iscsid = try ISCSIDConf.load(configDirectory: directory)
            try database.create(NodeRecord.new(id: id, iscsid: iscsid, discovery: DiscoverySource(kind: .static, address: portal.host, port: portal.port)))
            print("New iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if=default] \(id.portal.iscsiadmForm),\(id.tpgt) \(id.target)] added")
        case .nodeDelete(let target, let portal):
            for record in try records(target: target, portal: portal) { try database.delete(record.id) }
        case .nodeUpdate(let target, let portal, let key, let value):
            for record in try records(target: target, portal: portal) {
                _ = try database.update(record.id, key: key, value: value)
            }
        case .nodeLogin(let target, let portal):
            let selected = try records(target: target, portal: portal)
            if let response = try askDaemon(.login, target: target, portal: portal) {
                try printDaemonLogin(response, records: selected)
            } else {
                try await loginNodes(selected)
            }
        case .nodeLogout(let target, let portal):
            guard let response = try askDaemon(.logout, target: target, portal: portal) else {
                throw noObjects("No matching sessions found")
            }
            for line in response.messages { print(line) }
            try check(response)
        case .sessionList(let level, let sid):
            let sessions = try daemonSessions(.sessions, sid: sid)
            print(SessionPrinter.render(sessions, level: level), terminator: "")
        case .sessionStats(let sid):
            let sessions = try daemonSessions(.stats, sid: sid)
            print(SessionPrinter.renderStats(sessions), terminator: "")
        }
    }

    // MARK: - Daemon

    /// The control socket: ISCSI_NBD_CONTROL_SOCKET or /run/iscsi-nbd/control.sock.
    var controlSocket: String { ControlProtocol.socketPath() }

    /// Sends a request to the daemon; nil when no daemon listens (then the caller falls back).
    private func askDaemon(_ op: ControlRequest.Operation, target: String?, portal: Portal?) throws -> ControlResponse? {
        let request = ControlRequest(op: op, target: target, portal: portal?.description, configDir: directory)
        return try ControlClient.send(request, path: controlSocket)
    }

    /// The daemon's sessions (all, or the one `-r` names), or iscsiadm's "no objects" when there are none.
    private func daemonSessions(_ op: ControlRequest.Operation, sid: Int?) throws -> [ControlSession] {
        let request = ControlRequest(op: op, configDir: directory, sid: sid)
        guard let response = try ControlClient.send(request, path: controlSocket) else {
            throw noObjects("No active sessions.")
        }
        try check(response)
        let sessions = response.sessions.filter { sid == nil || $0.id == sid }
        guard !sessions.isEmpty else {
            throw noObjects(sid.map { "Could not find session \($0)." } ?? "No active sessions.")
        }
        return sessions
    }

    private func check(_ response: ControlResponse) throws {
        guard response.ok else {
            throw ExitCodeError(status: response.code.flatMap(ExitStatus.init(rawValue:)) ?? .failure,
                                message: response.error ?? "the daemon reported a failure")
        }
    }

    private func printDaemonLogin(_ response: ControlResponse, records: [NodeRecord]) throws {
        for record in records {
            print("Logging in to \(record.id.iscsiadmLabel)")
        }
        for line in response.messages {
            if line.hasPrefix("iscsi-nbd:") {
                FileHandle.standardError.write(Data((line + "\n").utf8))
            } else {
                print(line)
            }
        }
        for session in response.sessions {
            for line in SessionPrinter.deviceLines(session) { print(line) }
        }
        try check(response)
    }

    // MARK: - Discovery

    /// The session planner of this configuration directory (iscsid.conf, the initiator name, written when
    /// missing as iscsiadm does), with the keys iscsi-nbd does not use logged at debug level.
    private func planner() throws -> SessionPlanner {
        let planner = try SessionPlanner(configDirectory: directory, initiatorNameSource: .fileCreatingIfMissing)
        let unknown = ConfigKeys.unknownKeys(in: planner.iscsid)
        if !unknown.isEmpty {
            logger.debug("iscsid.conf keys kept but not used: \(unknown.joined(separator: ", "))")
        }
        return planner
    }

    private func discoverSendTargets(_ portal: Portal, login: Bool) async throws {
        let planner = try planner()
        let iscsid = planner.iscsid
        let scratch = try planner.discovery(portal: portal)
        if let note = scratch.authNote { logger.notice("discovery: \(note)") }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let targets: [DiscoveredTarget]
        do {
            targets = try await ISCSISession.discover(
                host: portal.host, port: portal.port, initiatorName: planner.initiatorName, chap: scratch.chap,
                on: group.next(), logger: logger).get()
            try await group.shutdownGracefully()
        } catch {
            try? await group.shutdownGracefully()
            throw CommandFailure("discovery at \(portal) failed: \(ErrorText.describe(error))")
        }
        let discoveryPortal = TargetPortalAddress(host: portal.host, port: portal.port, portalGroupTag: 1)
        let nodes = targets.flatMap { t in
            t.portals(default: discoveryPortal).map {
                DiscoveredNode(target: t.name, portal: Portal(host: $0.host, port: $0.port), tpgt: Int($0.portalGroupTag ?? 1))
            }
        }
        try record(nodes, source: DiscoverySource(kind: .sendTargets, address: portal.host, port: portal.port),
                   iscsid: iscsid, login: login)
    }

    private func discoverISNS(_ portal: Portal?, login: Bool) async throws {
        let planner = try planner()
        let iscsid = planner.iscsid
        let server: Portal
        if let portal {
            server = portal
        } else if let s = try ISNSServerSettings.resolve(iscsid: iscsid, file: directory + "/" + ISCSIDConf.fileName) {
            server = Portal(host: s.address, port: s.port)
        } else {
            throw CommandFailure("no iSNS server: give -p HOST[:PORT] or set isns.address in \(directory)/\(ISCSIDConf.fileName)")
        }
        let found: [ISNSDiscoveredTarget]
        do {
            let client = try await ISNSClient.connect(host: server.host, port: server.port, logger: logger)
            do {
                found = try await client.discoverTargets(initiatorName: planner.initiatorName)
                try? await client.close()
            } catch {
                try? await client.close()
                throw error
            }
        } catch {
            throw CommandFailure("iSNS discovery at \(server) failed: \(ErrorText.describe(error))")
        }
        let nodes = found.flatMap { t in
            t.portals.map { DiscoveredNode(target: t.name, portal: Portal(host: $0.host, port: $0.port), tpgt: $0.tpgt) }
        }
        try record(nodes, source: DiscoverySource(kind: .isns, address: server.host, port: server.port),
                   iscsid: iscsid, login: login)
    }

    /// Records discovered nodes (new ones added, existing ones left as the user edited them), prints them
    /// as iscsiadm does, and reports the ones that vanished without deleting them.
    private func record(_ nodes: [DiscoveredNode], source: DiscoverySource, iscsid: ConfigDocument, login: Bool) throws {
        let result = try database.applyDiscovery(nodes, source: source, iscsid: iscsid)
        for node in nodes.sorted() { print("\(node.portal),\(node.tpgt) \(node.target)") }
        for id in result.vanished {
            FileHandle.standardError.write(Data(
                "iscsi-nbd: \(id.target) at \(id.portal),\(id.tpgt) was not found again; its record is kept (delete it with -m node -T \(id.target) -p \(id.portal) --op delete)\n".utf8))
        }
        if nodes.isEmpty { throw noObjects("No portals found") }
        if login {
            FileHandle.standardError.write(Data("iscsi-nbd: use -m node --login to log in\n".utf8))
        }
    }

    // MARK: - Nodes

    private func nodeLine(_ id: NodeID) -> String { "\(id.portal),\(id.tpgt) \(id.target)" }

    private func records(target: String?, portal: Portal?) throws -> [NodeRecord] {
        let found = try database.find(target: target, portal: portal)
        guard !found.isEmpty else { throw noObjects("No records found") }
        return found
    }

    /// Without the daemon, a login is a verified round trip: log in, report the negotiated values and the
    /// LUNs (REPORT LUNS), log out. With the daemon running, the daemon logs in and keeps the session.
    private func loginNodes(_ records: [NodeRecord]) async throws {
        let planner = try planner()
        var failures = 0
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        for record in records {
            let id = record.id
            let label = id.iscsiadmLabel
            print("Logging in to \(label)")
            do {
                let configuration = try planner.plan(node: id, record: record, overrides: SessionOverrides()).configuration
                if let note = configuration.authNote { logger.notice("\(note)") }
                let session = try await ISCSISession.connect(configuration, on: group.next(), logger: logger).get()
                let luns = try? await SCSIBlockDevice.reportLUNs(transport: session, logger: logger).get()
                try? await session.logout().get()
                print("Login to \(label) successful.")
                printNegotiated(session.parameters, auth: configuration.authSummary, luns: luns)
            } catch {
                failures += 1
                FileHandle.standardError.write(Data("iscsi-nbd: Could not login to \(label).\niscsi-nbd: \(ErrorText.describe(error))\n".utf8))
            }
        }
        if failures > 0 { throw ExitCodeError(status: .loginFailed, message: "\(failures) of \(records.count) logins failed") }
    }

    private func printNegotiated(_ p: OperationalParameters, auth: String, luns: [LogicalUnitNumber]?) {
        print("\tAuthMethod: \(auth)")
        print("\tNegotiated iSCSI params:")
        let rows: [(String, String)] = [
            ("HeaderDigest", p.headerDigest.description), ("DataDigest", p.dataDigest.description),
            ("MaxRecvDataSegmentLength", "\(p.initiatorMaxRecvDataSegmentLength)"),
            ("MaxXmitDataSegmentLength", "\(p.targetMaxRecvDataSegmentLength)"),
            ("FirstBurstLength", "\(p.firstBurstLength)"), ("MaxBurstLength", "\(p.maxBurstLength)"),
            ("ImmediateData", p.immediateData ? "Yes" : "No"), ("InitialR2T", p.initialR2T ? "Yes" : "No"),
            ("MaxOutstandingR2T", "\(p.maxOutstandingR2T)"), ("ErrorRecoveryLevel", "\(p.errorRecoveryLevel)"),
            ("DefaultTime2Wait", "\(p.defaultTime2Wait)"), ("DefaultTime2Retain", "\(p.defaultTime2Retain)"),
        ]
        for (k, v) in rows { print("\t\t\(k): \(v)") }
        if let luns {
            print("\tLUNs: \(luns.map(\.description).joined(separator: ", "))")
        }
        print("\tLogged out (no daemon is running: start `iscsi-nbd daemon` or `systemctl start iscsi-nbd` to keep sessions).")
    }

    private func noObjects(_ message: String) -> ExitCodeError {
        ExitCodeError(status: .noObjectsFound, message: message)
    }
}
