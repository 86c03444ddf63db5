import Foundation
import ISCSIBlockBackend
import ISCSIClient
import ISCSIConfig
import ISCSIProtocol
import Logging
import NIOCore
import NIOPosix

/// Settings of a daemon instance.
struct DaemonSettings: Sendable {
    var configDir: String
    var byPathDirectory: String? = DeviceNames.byPathDirectory
    var connectionsPerDevice = 1
    var requestTimeout: Duration? = .seconds(30)
    var kernelInterface: KernelInterface = .auto
    /// `--poll-us` for every session.
    var busyPollMicroseconds = 0
}

/// Holds every session of the daemon and its /dev/nbdN devices. All requests (control socket, automatic
/// logins, SIGTERM) go through this actor; the table of states is `SessionTable`.
actor DaemonCore {
    private struct Live {
        var session: ISCSISession
        var attachments: [(lun: UInt16, attachment: KernelAttachment, scsi: SCSIBlockDevice)]
        var settings: EffectiveNodeSettings
        var tpgt: Int
        var record: NodeRecord
        var context: LoginContext
    }

    let settings: DaemonSettings
    let group: any EventLoopGroup
    let logger: Logger
    private var table = SessionTable()
    private var live: [Int: Live] = [:]
    private var retries: [Int: Task<Void, Never>] = [:]
    private var shuttingDown = false

    init(settings: DaemonSettings, group: any EventLoopGroup, logger: Logger) {
        self.settings = settings
        self.group = group
        self.logger = logger
    }

    // MARK: - Requests

    func handle(_ request: ControlRequest) async -> ControlResponse {
        if shuttingDown { return .failure(20, "the daemon is stopping") }
        switch request.op {
        case .ping:
            return .success(messages: ["iscsi-nbd daemon, pid \(getpid())"])
        case .sessions:
            return .success(sessions: sessionReports())
        case .login:
            return await login(target: request.target, portal: request.portal, configDir: request.configDir)
        case .logout:
            return await logout(target: request.target, portal: request.portal)
        }
    }

    /// Logs in to the matching node records (one attempt each); the response lists the new sessions.
    func login(target: String?, portal: String?, configDir: String?) async -> ControlResponse {
        let dir = configDir ?? settings.configDir
        let records: [NodeRecord]
        let context: LoginContext
        do {
            let filter = try portal.map { try PortalAddress.parse($0, defaultPort: 3260) }
            records = try NodeDatabase(configDirectory: dir).find(target: target, portal: filter.map { Portal(host: $0.host, port: $0.port) })
            context = try LoginContext(configDir: dir)
        } catch {
            return .failure(6, "\(error)")  // ISCSI_ERR_IDBM? keep simple: 6 = database failure
        }
        guard !records.isEmpty else { return .failure(AdminRuntime.noObjectsFound, "No records found") }
        var messages: [String] = []
        var ids: [Int] = []
        var failures = 0
        var present = 0
        for record in records {
            let label = Self.label(record.id)
            switch await loginRecord(record, context: context, retryInBackground: false) {
            case .success(let id):
                ids.append(id)
                messages.append("Login to \(label) successful.")
            case .alreadyPresent:
                present += 1
                messages.append("iscsi-nbd: default: 1 session requested, but 1 already present. (\(label))")
            case .failure(let error):
                failures += 1
                messages.append("iscsi-nbd: Could not login to \(label).\niscsi-nbd: \(error)")
            }
        }
        let sessions = sessionReports().filter { ids.contains($0.id) }
        if failures > 0 { return .failure(24, "\(failures) of \(records.count) logins failed", sessions: sessions, messages: messages) }
        // iscsiadm: ISCSI_ERR_SESS_EXISTS (15) when nothing new was logged in.
        if present > 0 && ids.isEmpty { return .failure(15, "session already present", messages: messages) }
        return .success(sessions: sessions, messages: messages)
    }

    /// node.startup = automatic (and onboot) records: one attempt each, failures continue in the background.
    /// Returns when every first attempt finished, so READY=1 never waits on a dead target for longer than
    /// one login timeout.
    func loginAutomatic() async -> (started: Int, failed: Int) {
        let context: LoginContext
        let records: [NodeRecord]
        do {
            context = try LoginContext(configDir: settings.configDir)
            records = try NodeDatabase(configDirectory: settings.configDir).find()
        } catch {
            logger.error("cannot read node records in \(settings.configDir): \(error)")
            return (0, 0)
        }
        var started = 0
        var failed = 0
        await withTaskGroup(of: Bool.self) { group in
            for record in records {
                guard let s = try? EffectiveNodeSettings.resolve(iscsid: context.iscsid, node: record),
                      s.startup == .automatic || s.startup == .onboot else { continue }
                group.addTask {
                    if case .success = await self.loginRecord(record, context: context, retryInBackground: true) { return true }
                    return false
                }
            }
            for await ok in group { if ok { started += 1 } else { failed += 1 } }
        }
        return (started, failed)
    }

    func logout(target: String?, portal: String?) async -> ControlResponse {
        let filter: PortalAddress?
        do { filter = try portal.map { try PortalAddress.parse($0, defaultPort: 3260) } } catch {
            return .failure(7, "\(error)")
        }
        let ids = table.beginLogout(target: target, host: filter?.host, port: filter?.port)
        guard !ids.isEmpty else { return .failure(AdminRuntime.noObjectsFound, "No matching sessions found") }
        var messages: [String] = []
        for id in ids {
            guard let key = table.entries[id]?.key else { continue }
            let label = "[sid: \(id), target: \(key.target), portal: \(key.host),\(key.port)]"
            messages.append("Logging out of session \(label)")
            await tearDown(id, flush: true)
            messages.append("Logout of \(label) successful.")
        }
        return .success(messages: messages)
    }

    /// SIGTERM: flush, detach and log out of everything (filesystems are unmounted by then: the unit is
    /// ordered before remote-fs-pre.target, so mounts on our devices stop first).
    func shutdown() async {
        shuttingDown = true
        let ids = table.beginLogout(target: nil, host: nil, port: nil)
        await withTaskGroup(of: Void.self) { group in
            for id in ids { group.addTask { await self.tearDown(id, flush: true) } }
        }
    }

    var sessionCount: Int { table.entries.count }

    // MARK: - Login

    struct LoginContext: Sendable {
        var iscsid: ConfigDocument
        var initiator: InitiatorNameFile
        init(configDir: String) throws {
            iscsid = try ISCSIDConf.load(configDirectory: configDir)
            initiator = try InitiatorNameFile.loadOrCreate(configDirectory: configDir)
        }
    }

    enum LoginOutcome: Sendable {
        case success(Int)
        case alreadyPresent(Int)
        case failure(String)
    }

    private func loginRecord(_ record: NodeRecord, context: LoginContext, retryInBackground: Bool) async -> LoginOutcome {
        let key = SessionTable.Key(target: record.id.target, host: record.id.portal.host, port: record.id.portal.port)
        let id: Int
        switch table.beginLogin(key) {
        case .alreadyPresent(let existing, _): return .alreadyPresent(existing)
        case .started(let new): id = new
        }
        do {
            try await attempt(id: id, record: record, context: context)
            return .success(id)
        } catch {
            let message = "\(error)"
            table.loginFailed(id, error: message, retry: retryInBackground && !shuttingDown)
            if retryInBackground && !shuttingDown {
                logger.warning("login to \(key) failed, retrying in the background: \(message)")
                retries[id] = Task { await self.retryLoop(id: id, record: record, context: context) }
            }
            return .failure(message)
        }
    }

    private func retryLoop(id: Int, record: NodeRecord, context: LoginContext) async {
        var n = 1
        while !Task.isCancelled {
            try? await Task.sleep(for: SessionTable.retryDelay(attempt: n))
            n += 1
            guard !Task.isCancelled, !shuttingDown, table.retryStarts(id) else { return }
            do {
                try await attempt(id: id, record: record, context: context)
                retries[id] = nil
                return
            } catch {
                table.loginFailed(id, error: "\(error)", retry: true)
                logger.info("login retry \(n) to \(record.id.target) failed: \(error)")
            }
        }
    }

    /// The session configuration of a node: its effective settings plus the daemon's own (`--poll-us`).
    private func sessionConfiguration(_ node: NodeID, _ nodeSettings: EffectiveNodeSettings,
                                      _ context: LoginContext) -> ISCSISessionConfiguration {
        var configuration = ISCSISessionConfiguration(
            node: node, settings: nodeSettings, initiatorName: context.initiator.name.rawValue,
            initiatorAlias: context.initiator.alias)
        configuration.busyPollMicroseconds = settings.busyPollMicroseconds
        return configuration
    }

    /// One login: session, REPORT LUNS, every disk LUN attached as /dev/nbdN.
    private func attempt(id: Int, record: NodeRecord, context: LoginContext) async throws {
        let nodeSettings = try EffectiveNodeSettings.resolve(iscsid: context.iscsid, node: record)
        let configuration = sessionConfiguration(record.id, nodeSettings, context)
        var sessionLogger = logger
        sessionLogger[metadataKey: "sid"] = "\(id)"
        let session = try await SessionWiring.login(configuration, on: group.next(), logger: sessionLogger)
        var attachments: [(UInt16, KernelAttachment, SCSIBlockDevice)] = []
        var scsiDevices: [SCSIBlockDevice] = []
        var lastError: String?
        for lun in await SessionWiring.reportLUNs(session: session, logger: sessionLogger) {
            do {
                let opened = try await SessionWiring.openLUN(session: session, lun: lun, readOnly: false, logger: sessionLogger)
                let target = record.id.target
                let options = KernelAttachOptions(
                    connections: settings.connectionsPerDevice,
                    requestTimeout: Self.kernelRequestTimeout(settings.requestTimeout, replacement: nodeSettings.replacementTimeout),
                    deadConnectionTimeout: nodeSettings.replacementTimeout,
                    identity: DeviceIdentity(host: record.id.portal.host, port: record.id.portal.port, target: target, lun: lun,
                                             identity: opened.scsi.lunIdentity),
                    exportName: "\(target)/lun-\(lun)", byPathDirectory: settings.byPathDirectory,
                    interface: settings.kernelInterface)
                let attachment = try await KernelAttachment.attach(device: opened.device, options: options, group: group, logger: sessionLogger)
                attachment.follow(opened.scsi)
                attachments.append((lun, attachment, opened.scsi))
                scsiDevices.append(opened.scsi)
            } catch {
                // tgtd's LUN 0 is the controller: not a disk, skipped quietly.
                sessionLogger.info("LUN \(lun) not attached: \(error)")
                lastError = "\(error)"
            }
        }
        guard !attachments.isEmpty else {
            try? await session.logout().get()
            throw CommandFailure("no LUN of \(record.id.target) could be attached\(lastError.map { ": " + $0 } ?? "")")
        }
        // The session reconnects by itself (ERL0); before queued I/O is re-issued, each LU must be the same.
        SessionWiring.guardIdentity(session: session, devices: scsiDevices)
        live[id] = Live(session: session, attachments: attachments, settings: nodeSettings, tpgt: record.id.tpgt,
                        record: record, context: context)
        table.loggedIn(id)
        session.closeFuture.whenComplete { _ in Task { await self.sessionClosed(id: id, session: session) } }
    }

    /// NBD_ATTR_TIMEOUT must outlast the session's own recovery: a request the client holds back while it
    /// reconnects (up to replacement_timeout) must not make the kernel declare the socket dead.
    static func kernelRequestTimeout(_ configured: Duration?, replacement: Duration) -> Duration? {
        guard let configured else { return nil }
        return max(configured, replacement + .seconds(15))
    }

    /// The session ended for good under a live entry (the client gave up: fail-stop, target logout, or
    /// recovery disabled); a recoverable connection loss is handled inside ISCSISession and never gets here. The kernel devices stay: our socket ends are
    /// closed, so the kernel holds I/O back for its dead-connection timeout (= replacement_timeout, RFC 7143
    /// §6.2 leaves session recovery to the initiator), while the daemon logs in again and hands it fresh
    /// sockets (NBD_CMD_RECONFIGURE). Past the timeout the devices are disconnected: I/O fails, never hangs.
    private func sessionClosed(id: Int, session: ISCSISession) async {
        guard let l = live[id], l.session === session, let key = table.entries[id]?.key,
              table.connectionLost(id, error: "connection lost") else { return }
        logger.warning("session \(id) to \(key) lost its connection; recovering for up to \(l.settings.replacementTimeout)")
        for a in l.attachments { await a.attachment.abandon() }
        let deadline = ContinuousClock.now.advanced(by: l.settings.replacementTimeout)
        retries[id] = Task { await self.recover(id: id, old: l, deadline: deadline) }
    }

    private func recover(id: Int, old: Live, deadline: ContinuousClock.Instant) async {
        var n = 0
        while !Task.isCancelled, !shuttingDown, table.entries[id]?.state == .recovering, ContinuousClock.now < deadline {
            n += 1
            var newSession: ISCSISession?
            do {
                let configuration = sessionConfiguration(old.record.id, old.settings, old.context)
                let session = try await SessionWiring.login(configuration, on: group.next(), logger: logger)
                newSession = session
                var attachments: [(lun: UInt16, attachment: KernelAttachment, scsi: SCSIBlockDevice)] = []
                var scsiDevices: [SCSIBlockDevice] = []
                for a in old.attachments {
                    let opened = try await SessionWiring.openLUN(session: session, lun: a.lun, readOnly: false, logger: logger)
                    if case .different(let why) = a.scsi.identityGuard.afterRelogin(opened.scsi.lunIdentity) {
                        throw CommandFailure("LUN \(a.lun) is another logical unit now (\(why))")
                    }
                    let attachment = try await KernelAttachment.attach(
                        device: opened.device, options: a.attachment.options, group: group, logger: logger,
                        reconfigure: a.attachment.index)
                    attachment.follow(opened.scsi)
                    attachments.append((a.lun, attachment, opened.scsi))
                    scsiDevices.append(opened.scsi)
                }
                SessionWiring.guardIdentity(session: session, devices: scsiDevices)
                guard table.entries[id]?.state == .recovering else {
                    // Logged out meanwhile: tearDown owns the old devices; drop what we built.
                    for a in attachments { await a.attachment.abandon() }
                    try? await session.logout().get()
                    return
                }
                var l = old
                l.session = session
                l.attachments = attachments
                live[id] = l
                table.loggedIn(id)
                retries[id] = nil
                logger.notice("session \(id) recovered after \(n) attempt(s)")
                session.closeFuture.whenComplete { _ in Task { await self.sessionClosed(id: id, session: session) } }
                return
            } catch {
                if let newSession { try? await newSession.logout().get() }
                table.noteError(id, "recovery attempt \(n): \(error)")
                logger.info("session \(id) recovery attempt \(n) failed: \(error)")
                let pause = min(Duration.seconds(2), deadline - ContinuousClock.now)
                if pause > .zero { try? await Task.sleep(for: pause) }
            }
        }
        guard table.entries[id]?.state == .recovering else { return }
        logger.error("session \(id) not recovered within replacement_timeout: detaching its devices")
        live[id] = nil
        retries[id] = nil
        for a in old.attachments { await a.attachment.detach(flush: false, timeout: .seconds(5)) }
        table.remove(id)
    }

    private func tearDown(_ id: Int, flush: Bool) async {
        retries.removeValue(forKey: id)?.cancel()
        // lastError is set exactly while a live session is recovering (cleared again by loggedIn).
        let wasRecovering = table.entries[id]?.lastError != nil
        if let l = live.removeValue(forKey: id) {
            // A device without live connections cannot flush (it would wait for the dead-connection timeout).
            for a in l.attachments { await a.attachment.detach(flush: flush && !wasRecovering) }
            do {
                try await l.session.logout().get()
                logger.notice("session \(id) logged out", metadata: ["target": "\(l.record.id.target)"])
            } catch {
                logger.warning("logout of session \(id): \(error)")
            }
        }
        table.remove(id)
    }

    // MARK: - Reports

    private static func label(_ id: NodeID) -> String {
        "[iface: default, target: \(id.target), portal: \(id.portal.host),\(id.portal.port)]"
    }

    /// iscsiadm's CHAP section (secrets always masked), headed by the method actually used: open-iscsi's
    /// rule makes that CHAP whenever a password is set, whatever `authmethod` says.
    static func authRows(_ c: ISCSISessionConfiguration) -> [[String]] {
        [
            ["authmethod in use", c.authSummary],
            ["username", c.chap.map(\.username).flatMap { $0.isEmpty ? nil : $0 } ?? "<empty>"],
            ["password", "********"],
            ["username_in", c.chap?.mutual.map(\.username).flatMap { $0.isEmpty ? nil : $0 } ?? "<empty>"],
            ["password_in", "********"],
        ]
    }

    func sessionReports() -> [ControlSession] {
        table.entries.values.sorted { $0.id < $1.id }.map { e in
            let l = live[e.id]
            let luns = l?.attachments.map { a in
                ControlLUN(lun: a.lun, device: a.attachment.devicePath, byPath: a.attachment.byPathLink,
                           size: a.attachment.device.info.size, blockSize: a.attachment.device.info.logicalBlockSize,
                           backend: a.attachment.backendIdentifier, state: "running")
            } ?? []
            var negotiated: [[String]] = []
            var timeouts: [[String]] = []
            if let l {
                let p = l.session.parameters
                negotiated = [
                    ["HeaderDigest", p.headerDigest.description], ["DataDigest", p.dataDigest.description],
                    ["MaxRecvDataSegmentLength", "\(p.initiatorMaxRecvDataSegmentLength)"],
                    ["MaxXmitDataSegmentLength", "\(p.targetMaxRecvDataSegmentLength)"],
                    ["FirstBurstLength", "\(p.firstBurstLength)"], ["MaxBurstLength", "\(p.maxBurstLength)"],
                    ["ImmediateData", p.immediateData ? "Yes" : "No"], ["InitialR2T", p.initialR2T ? "Yes" : "No"],
                    ["MaxOutstandingR2T", "\(p.maxOutstandingR2T)"], ["ErrorRecoveryLevel", "\(p.errorRecoveryLevel)"],
                    ["DefaultTime2Wait", "\(p.defaultTime2Wait)"], ["DefaultTime2Retain", "\(p.defaultTime2Retain)"],
                ]
                let s = l.settings
                timeouts = [
                    ["Recovery Timeout (replacement_timeout)", "\(s.replacementTimeout.components.seconds)"],
                    ["Login Timeout", "\(s.loginTimeout.components.seconds)"],
                    ["Logout Timeout", "\(s.logoutTimeout.components.seconds)"],
                    ["NOP-out Interval", "\(s.noopOutInterval.components.seconds)"],
                    ["NOP-out Timeout", "\(s.noopOutTimeout.components.seconds)"],
                    ["Request Timeout (nbd)", settings.requestTimeout.map { "\($0.components.seconds)" } ?? "kernel default"],
                    ["Dead Connection Timeout (nbd)", "\(s.replacementTimeout.components.seconds)"],
                ]
            }
            // The client recovers a dropped connection by itself: show that as iscsiadm does (FAILED).
            var state = e.state.rawValue
            var lastError = e.lastError
            if e.state == .loggedIn, let status = l?.session.status {
                switch status.state {
                case .connected: break
                case .recovering(let expired):
                    state = SessionTable.State.recovering.rawValue
                    lastError = expired ? "reconnecting; replacement_timeout expired, I/O fails until the target is back" : "reconnecting"
                case .closed: state = "CLOSED"
                }
                timeouts.append(["Recoveries", "\(status.recoveries)"])
            }
            return ControlSession(
                id: e.id, target: e.key.target, portal: SessionWiring.portalText(host: e.key.host, port: e.key.port),
                tpgt: l?.tpgt ?? 1, state: state, initiatorName: l?.session.configuration.initiatorName,
                tsih: l?.session.tsih, isid: l.map { String(format: "%012llx", $0.session.configuration.isid) },
                luns: luns, negotiated: negotiated, timeouts: timeouts, lastError: lastError,
                auth: l.map { Self.authRows($0.session.configuration) } ?? [])
        }
    }
}
