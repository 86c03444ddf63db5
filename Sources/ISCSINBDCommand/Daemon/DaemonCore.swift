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
    struct Live {
        var session: ISCSISession
        var attachments: [(lun: UInt16, attachment: KernelAttachment, scsi: SCSIBlockDevice)]
        var plan: SessionPlan
        var settings: EffectiveNodeSettings { plan.settings }
    }

    let settings: DaemonSettings
    let group: any EventLoopGroup
    let logger: Logger
    private(set) var table = SessionTable()
    private(set) var live: [Int: Live] = [:]
    private var retries: [Int: Task<Void, Never>] = [:]
    private(set) var shuttingDown = false
    /// Our ends of kernel NBD sockets a previous daemon handed over (systemd's fd store), by device index;
    /// taken by the re-adoption of that device.
    private var stored: [Int: [Int32]]
    /// Every session's and LUN's counters (`-m session -s`, `-P 1`, and `/metrics` when served).
    let metrics: DaemonMetrics

    init(settings: DaemonSettings, group: any EventLoopGroup, logger: Logger, stored: [Int: [Int32]] = [:],
         metrics: DaemonMetrics = DaemonMetrics()) {
        self.metrics = metrics
        self.settings = settings
        self.group = group
        self.logger = logger
        self.stored = stored
    }

    // MARK: - Requests

    func handle(_ request: ControlRequest) async -> ControlResponse {
        if shuttingDown { return .failure(.daemonUnavailable, "the daemon is stopping") }
        switch request.op {
        case .ping:
            return .success(messages: ["iscsi-nbd daemon, pid \(getpid())"])
        case .sessions:
            await metrics.refresh()
            return .success(sessions: sessionReports().filter { request.sid == nil || $0.id == request.sid })
        case .stats:
            return .success(sessions: await statsReports(sid: request.sid))
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
        let planner: SessionPlanner
        do {
            let filter = try portal.map { try Portal(parsing: $0) }
            records = try NodeDatabase(configDirectory: dir).find(target: target, portal: filter)
            planner = try makePlanner(dir)
        } catch {
            return .failure(.recordDatabase, "\(error)")
        }
        guard !records.isEmpty else { return .failure(.noObjectsFound, "No records found") }
        var messages: [String] = []
        var ids: [Int] = []
        var failures = 0
        var present = 0
        for record in records {
            let label = record.id.iscsiadmLabel
            switch await loginRecord(record, planner: planner, retryInBackground: false) {
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
        if failures > 0 { return .failure(.loginFailed, "\(failures) of \(records.count) logins failed", sessions: sessions, messages: messages) }
        // iscsiadm: ISCSI_ERR_SESS_EXISTS (15) when nothing new was logged in.
        if present > 0 && ids.isEmpty { return .failure(.sessionExists, "session already present", messages: messages) }
        return .success(sessions: sessions, messages: messages)
    }

    /// node.startup = automatic (and onboot) records: one attempt each, failures continue in the background.
    /// Returns when every first attempt finished, so READY=1 never waits on a dead target for longer than
    /// one login timeout.
    /// `present`: sessions already up (re-adopted from a previous daemon).
    func loginAutomatic() async -> (started: Int, present: Int, failed: Int) {
        guard let (planner, records) = loadRecords(for: "automatic logins") else { return (0, 0, 0) }
        var counts = (started: 0, present: 0, failed: 0)
        await withTaskGroup(of: LoginOutcome.self) { group in
            for record in records {
                guard let s = try? EffectiveNodeSettings.resolve(iscsid: planner.iscsid, node: record),
                      s.startup == .automatic || s.startup == .onboot else { continue }
                group.addTask { await self.loginRecord(record, planner: planner, retryInBackground: true) }
            }
            for await outcome in group {
                switch outcome {
                case .success: counts.started += 1
                case .alreadyPresent: counts.present += 1
                case .failure: counts.failed += 1
                }
            }
        }
        return counts
    }

    /// Devices a previous daemon left behind (it was restarted, upgraded or killed while they were in use):
    /// each is logged in again through its node record and handed fresh sockets (NBD_CMD_RECONFIGURE)
    /// while the kernel holds its I/O (the dead-connection timeout). Whatever the record's node.startup:
    /// the session was up when the previous daemon stopped. Failed logins retry in the background; the
    /// kernel fails the held I/O once the timeout passes, and the device works again once re-adopted.
    func adoptOrphans(registry: DeviceRegistry = DeviceRegistry()) async -> (adopted: Int, failed: Int) {
        let orphans = registry.orphans(adoptableWith: settings.kernelInterface)
        for (index, sockets) in stored where !orphans.contains(where: { $0.index == index }) {
            logger.warning("sockets of /dev/nbd\(index) came back from systemd's fd store, but the device is not one a previous daemon left: closed")
            dropStored(index: index, sockets: sockets)
        }
        guard !orphans.isEmpty else { return (0, 0) }
        guard let (planner, records) = loadRecords(for: "re-adopting \(orphans.map(\.path))") else { return (0, orphans.count) }
        var byRecord: [NodeID: (record: NodeRecord, luns: [UInt16: DeviceRegistry.Orphan])] = [:]
        var unmatched = 0
        for orphan in orphans {
            let match = records.lazy.compactMap { record in
                DeviceNames.lun(inPath: orphan.identity.path, host: record.id.portal.host, port: record.id.portal.port,
                                target: record.id.target).map { (record, $0) }
            }.first
            guard let (record, lun) = match else {
                logger.error("\(orphan.path) (\(orphan.identity.path)) was left by a previous daemon, but no node record names it: not re-adopted (iscsi-nbd detach \(orphan.path) releases it)")
                unmatched += 1
                continue
            }
            byRecord[record.id, default: (record, [:])].luns[lun] = orphan
        }
        var adopted = 0
        var failed = unmatched
        for (_, entry) in byRecord.sorted(by: { $0.key < $1.key }) {
            logger.notice("re-adopting \(entry.luns.values.map(\.path).sorted().joined(separator: ", ")) through \(entry.record.id.iscsiadmLabel)")
            if case .success = await loginRecord(entry.record, planner: planner, retryInBackground: true, adopting: entry.luns) {
                adopted += entry.luns.count
            } else {
                failed += entry.luns.count
            }
        }
        return (adopted, failed)
    }

    func logout(target: String?, portal: String?) async -> ControlResponse {
        let filter: Portal?
        do { filter = try portal.map { try Portal(parsing: $0) } } catch {
            return .failure(.invalidRequest, "\(error)")
        }
        let ids = table.beginLogout(target: target, host: filter?.host, port: filter?.port)
        guard !ids.isEmpty else { return .failure(.noObjectsFound, "No matching sessions found") }
        var messages: [String] = []
        for id in ids {
            guard let key = table.entries[id]?.key else { continue }
            let label = "[sid: \(id), target: \(key.target), portal: \(key.portal.iscsiadmForm)]"
            messages.append("Logging out of session \(label)")
            await tearDown(id, flush: true)
            messages.append("Logout of \(label) successful.")
        }
        return .success(messages: messages)
    }

    /// Live sessions that are reconnecting and still holding their requests, with their devices.
    func recoveringSessions() -> [(id: Int, session: ISCSISession, devices: [String])] {
        live.sorted { $0.key < $1.key }.compactMap { id, l in
            guard case .recovering(expired: false) = l.session.status.state else { return nil }
            return (id, l.session, l.attachments.map(\.attachment.devicePath))
        }
    }

    /// SIGTERM. When the machine shuts down (or `handOver` is false), everything is flushed, detached and
    /// logged out: mounts are gone by then, the unit being ordered before remote-fs-pre.target. Otherwise this
    /// is a restart, an upgrade or a stop by hand, and a device still in use (mounted, open) must not be torn
    /// down under its user: it is handed over (`KernelAttachment.handOver`), its sockets kept in systemd's fd
    /// store for the next daemon, and its I/O waits meanwhile; devices nobody uses are detached as usual.
    func shutdown(handOver: Bool) async {
        shuttingDown = true
        let ids = table.beginLogout(target: nil, host: nil, port: nil)
        await withTaskGroup(of: Void.self) { group in
            for id in ids { group.addTask { await self.stop(id, handOver: handOver) } }
        }
        // Sockets handed to us that no login took up yet (the target is away): at a restart they stay in the
        // fd store for the daemon after us; at the machine's shutdown they go.
        for (index, sockets) in stored {
            if handOver {
                for fd in sockets { close(fd) }
            } else {
                dropStored(index: index, sockets: sockets)
            }
        }
        stored = [:]
    }

    private func stop(_ id: Int, handOver: Bool) async {
        guard handOver, let l = live[id] else { return await tearDown(id, flush: true) }
        retries.removeValue(forKey: id)?.cancel()
        live[id] = nil
        for a in l.attachments {
            let device = a.attachment.devicePath
            guard let holder = (try? await NIOThreadPool.singleton.runIfActive { a.attachment.holder() }) ?? nil else {
                await a.attachment.detach(flush: true)
                continue
            }
            let timeout = a.attachment.options.deadConnectionTimeout.map { "\($0.components.seconds) s" } ?? "the kernel's dead-connection timeout"
            if let sockets = await a.attachment.handOver() {
                let kept = sockets.enumerated().allSatisfy { k, fd in
                    SystemdNotify.store([fd], name: SocketActivation.storeName(index: a.attachment.index, connection: k))
                }
                for fd in sockets { close(fd) }
                if kept {
                    logger.notice("\(device) is in use (\(holder)): left attached, its sockets in systemd's fd store at a request boundary; its I/O waits for the next daemon (for at most \(timeout))")
                    continue
                }
            }
            logger.warning("\(device) is in use (\(holder)): left attached; the next daemon must give it fresh sockets within \(timeout), or its I/O fails (requests in flight are re-sent when their timeout fires)")
        }
        await logOut(id, l)
    }

    private func logOut(_ id: Int, _ l: Live) async {
        do {
            try await l.session.logout().get()
            logger.notice("session \(id) logged out", metadata: ["target": "\(l.plan.node.target)"])
        } catch {
            logger.warning("logout of session \(id): \(error)")
        }
        table.remove(id)
        metrics.forget(id)
    }

    /// How an orphan is taken back: its handed-over sockets while they are alive, else fresh ones.
    private func adoptionStart(_ index: Int) -> KernelStart {
        guard let sockets = stored[index] else { return .reconfigure(index: index) }
        if sockets.allSatisfy(Self.isOpen) { return .resume(index: index, sockets: sockets) }
        logger.notice("the handed-over sockets of /dev/nbd\(index) were closed by the kernel meanwhile: giving it fresh ones")
        dropStored(index: index, sockets: sockets)
        return .reconfigure(index: index)
    }

    /// The kernel has not shut its end (its request timeout marks a connection dead that way).
    private static func isOpen(_ fd: Int32) -> Bool {
        // POLLRDHUP (0x2000, poll(2)): the peer shut down its writing side.
        var p = pollfd(fd: fd, events: 0x2000, revents: 0)
        return poll(&p, 1, 0) == 0
    }

    /// The resumed sockets leave the fd store: after a crash of this daemon their streams could be cut
    /// anywhere, so the next one must give the device fresh sockets instead.
    private func forgetStored(index: Int) {
        guard let sockets = stored.removeValue(forKey: index) else { return }
        for k in sockets.indices { SystemdNotify.removeStored(name: SocketActivation.storeName(index: index, connection: k)) }
    }

    private func dropStored(index: Int, sockets: [Int32]) {
        forgetStored(index: index)
        for fd in sockets { close(fd) }
    }

    var sessionCount: Int { table.entries.count }

    // MARK: - Login

    /// The planner and every node record of the daemon's configuration directory; nil (logged) when they
    /// cannot be read.
    private func loadRecords(for purpose: String) -> (SessionPlanner, [NodeRecord])? {
        do {
            return (try makePlanner(settings.configDir), try NodeDatabase(configDirectory: settings.configDir).find())
        } catch {
            logger.error("cannot read node records in \(settings.configDir) for \(purpose): \(error)")
            return nil
        }
    }

    /// The daemon plans every session the way the other commands do; the initiator name file is written
    /// when missing, as iscsid does.
    private func makePlanner(_ configDir: String) throws -> SessionPlanner {
        try SessionPlanner(configDirectory: configDir, initiatorNameSource: .fileCreatingIfMissing)
    }

    enum LoginOutcome: Sendable {
        case success(Int)
        case alreadyPresent(Int)
        case failure(String)
    }

    private func loginRecord(_ record: NodeRecord, planner: SessionPlanner, retryInBackground: Bool,
                             adopting: [UInt16: DeviceRegistry.Orphan] = [:]) async -> LoginOutcome {
        let key = SessionTable.Key(target: record.id.target, portal: record.id.portal)
        let id: Int
        switch table.beginLogin(key) {
        case .alreadyPresent(let existing, _): return .alreadyPresent(existing)
        case .started(let new): id = new
        }
        do {
            try await attempt(id: id, record: record, planner: planner, adopting: adopting)
            return .success(id)
        } catch {
            let message = "\(error)"
            let permanent = (error as? LoginFailure)?.isPermanent == true
            switch (retryInBackground && !shuttingDown, permanent) {
            case (true, false):
                table.loginFailed(id, error: message, then: .retry)
                logger.warning("login to \(key) failed, retrying in the background: \(message)")
                retries[id] = Task { await self.retryLoop(id: id, record: record, planner: planner, adopting: adopting) }
            case (true, true):
                table.loginFailed(id, error: message, then: .refused)
                logger.error("login to \(key) refused, not retried: \(message); fix the node record, then: iscsi-nbd -m node -T \(record.id.target) -p \(record.id.portal) --login")
            case (false, _):
                table.loginFailed(id, error: message, then: .forget)
                metrics.forget(id)
            }
            return .failure(message)
        }
    }

    private func retryLoop(id: Int, record: NodeRecord, planner: SessionPlanner,
                           adopting: [UInt16: DeviceRegistry.Orphan]) async {
        var n = 1
        while !Task.isCancelled {
            try? await Task.sleep(for: SessionTable.retryDelay(attempt: n))
            n += 1
            guard !Task.isCancelled, !shuttingDown, table.retryStarts(id) else { return }
            do {
                try await attempt(id: id, record: record, planner: planner, adopting: adopting)
                retries[id] = nil
                return
            } catch {
                if (error as? LoginFailure)?.isPermanent == true {
                    table.loginFailed(id, error: "\(error)", then: .refused)
                    logger.error("login to \(record.id.target) refused, not retried: \(error)")
                    retries[id] = nil
                    return
                }
                table.loginFailed(id, error: "\(error)", then: .retry)
                logger.info("login retry \(n) to \(record.id.target) failed: \(error)")
            }
        }
    }

    /// One login: session, REPORT LUNS, every disk LUN attached as /dev/nbdN. A LUN in `adopting` goes to
    /// the device a previous daemon left (NBD_CMD_RECONFIGURE with fresh sockets), once its identity is the
    /// one that device's backend identifier names; the kernel checks it again.
    private func attempt(id: Int, record: NodeRecord, planner: SessionPlanner,
                         adopting: [UInt16: DeviceRegistry.Orphan] = [:]) async throws {
        var plan = try planner.plan(node: record.id, record: record,
                                    overrides: SessionOverrides(busyPollMicroseconds: settings.busyPollMicroseconds))
        plan.configuration.eventHandler = metrics.session(id, target: record.id.target, portal: plan.configuration.portal.description).eventHandler
        let nodeSettings = plan.settings
        var sessionLogger = logger
        sessionLogger[metadataKey: "sid"] = "\(id)"
        let session = try await SessionWiring.login(plan.configuration, on: group.next(), logger: sessionLogger)
        metrics.loggedIn(id, session)
        var attachments: [(UInt16, KernelAttachment, SCSIBlockDevice)] = []
        var lastError: String?
        let reported = await SessionWiring.reportLUNs(session: session, logger: sessionLogger)
        for (lun, orphan) in adopting where !reported.contains(lun) {
            sessionLogger.error("\(orphan.path) (\(orphan.identity.path)) is not re-adopted: the target no longer reports LUN \(lun)")
        }
        for lun in reported {
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
                if let orphan = adopting[lun], orphan.backend != options.identity.backendIdentifier {
                    sessionLogger.error("\(orphan.path) is not re-adopted: it holds \(orphan.backend), LUN \(lun) of the target is now \(options.identity.backendIdentifier)")
                }
                let start = adopting[lun].flatMap { $0.backend == options.identity.backendIdentifier ? $0.index : nil }
                    .map(adoptionStart) ?? .connect
                let attachment: KernelAttachment
                do {
                    attachment = try await KernelAttachment.attach(device: opened.device, options: options, group: group,
                                                                   logger: sessionLogger, start: start,
                                                                   observers: metrics.requests(id, lun: lun))
                } catch where start.isResume {
                    sessionLogger.warning("cannot resume the handed-over sockets of /dev/nbd\(start.index ?? -1) (\(error)); giving it fresh ones")
                    attachment = try await KernelAttachment.attach(device: opened.device, options: options, group: group,
                                                                   logger: sessionLogger, start: .reconfigure(index: start.index ?? -1),
                                                                   observers: metrics.requests(id, lun: lun))
                }
                if start.isResume { forgetStored(index: attachment.index) }
                if start != .connect {
                    sessionLogger.notice("re-adopted \(attachment.devicePath) from a previous daemon (\(start.isResume ? "its sockets, from systemd's fd store: no request waited" : "fresh sockets: requests in flight are re-sent when their timeout fires"))")
                }
                attachment.follow(opened.scsi)
                metrics.attached(id, lun: lun, device: attachment.devicePath, scsi: opened.scsi)
                attachments.append((lun, attachment, opened.scsi))
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
        SessionWiring.guardIdentity(session: session, devices: attachments.map(\.2))
        live[id] = Live(session: session, attachments: attachments, plan: plan)
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
                let session = try await SessionWiring.login(old.plan.configuration, on: group.next(), logger: logger)
                newSession = session
                metrics.loggedIn(id, session)
                var attachments: [(lun: UInt16, attachment: KernelAttachment, scsi: SCSIBlockDevice)] = []
                for a in old.attachments {
                    let opened = try await SessionWiring.openLUN(session: session, lun: a.lun, readOnly: false, logger: logger)
                    if case .different(let why) = a.scsi.identityGuard.afterRelogin(opened.scsi.lunIdentity) {
                        throw CommandFailure("LUN \(a.lun) is another logical unit now (\(why))")
                    }
                    let attachment = try await KernelAttachment.attach(
                        device: opened.device, options: a.attachment.options, group: group, logger: logger,
                        start: .reconfigure(index: a.attachment.index), observers: metrics.requests(id, lun: a.lun))
                    attachment.follow(opened.scsi)
                    metrics.attached(id, lun: a.lun, device: attachment.devicePath, scsi: opened.scsi)
                    attachments.append((a.lun, attachment, opened.scsi))
                }
                SessionWiring.guardIdentity(session: session, devices: attachments.map(\.scsi))
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
        metrics.forget(id)
    }

    private func tearDown(_ id: Int, flush: Bool) async {
        retries.removeValue(forKey: id)?.cancel()
        // lastError is set exactly while a live session is recovering (cleared again by loggedIn).
        let wasRecovering = table.entries[id]?.lastError != nil
        if let l = live.removeValue(forKey: id) {
            // A device without live connections cannot flush (it would wait for the dead-connection timeout).
            for a in l.attachments { await a.attachment.detach(flush: flush && !wasRecovering) }
            await logOut(id, l)
        }
        table.remove(id)
        metrics.forget(id)
    }
}
