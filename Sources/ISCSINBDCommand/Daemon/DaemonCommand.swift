import ArgumentParser
import Foundation
import ISCSIConfig
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// `iscsi-nbd daemon`: holds every session and its /dev/nbdN devices (open-iscsi's iscsid).
struct DaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Run the session daemon: logs in to node.startup = automatic records, serves -m node --login/--logout and -m session.",
        discussion: """
            Normally started by systemd (iscsi-nbd.service, Type=notify; iscsi-nbd.socket passes the control
            socket). READY=1 is sent once every automatic login either succeeded or was handed to background
            retry. SIGTERM during a shutdown of the machine flushes, detaches every /dev/nbdN and logs out;
            otherwise (restart, upgrade, stop) a device still in use stays attached and its kernel sockets go to
            systemd's fd store for the next daemon, which re-adopts it.
            """
    )

    @Option(name: .long, help: "Control socket path (default /run/iscsi-nbd/control.sock, or ISCSI_NBD_CONTROL_SOCKET).")
    var controlSocket: String?

    @Option(name: .long, help: "Configuration directory (default /etc/iscsi, or ISCSI_NBD_CONFIG_DIR).")
    var configDir: String?

    @Option(name: .long, help: "Directory for the stable links (default /dev/disk/by-path; empty = none).")
    var byPathDir: String = DeviceNames.byPathDirectory

    @OptionGroup var kernel: KernelDeviceOptions

    @Flag(name: .long, help: "Do not log in to automatic node records at start.")
    var noAutomatic = false

    @Flag(name: .long, help: "Skip mlockall and the OOM score adjustment (tests as non-root).")
    var noMemoryLock = false

    @Option(name: .long, help: "Event loop threads (default: --connections, so each queue of a device has its own).")
    var threads: Int?

    @OptionGroup var metrics: MetricsOptions

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        if let threads, !(1...64).contains(threads) { throw ValidationError("--threads must be 1 to 64") }
    }

    func run() async throws {
        let logger = logging.makeLogger(label: "iscsi-nbd.daemon")
        if !noMemoryLock { DaemonProcess.protectMemory(logger: logger) }
        let environment = ProcessInfo.processInfo.environment
        let activation = try SocketActivation.parse(environment: environment, pid: getpid())
        for v in SocketActivation.variables { unsetenv(v) }
        // From systemd: the control socket (iscsi-nbd.socket) and what a previous daemon handed over.
        if let activation {
            for fd in activation.unexpected {
                logger.warning("systemd passed descriptor \(fd) named '\(activation.name(of: fd))' (expected 'control' or 'nbdN.K'): closed")
                close(fd)
            }
        }
        let settings = DaemonSettings(
            configDir: ConfigDirectory.resolve(explicit: configDir),
            byPathDirectory: byPathDir.isEmpty ? nil : byPathDir,
            connectionsPerDevice: kernel.connections,
            requestTimeout: kernel.requestTimeout == 0 ? nil : .seconds(kernel.requestTimeout),
            kernelInterface: kernel.kernelInterface, busyPollMicroseconds: kernel.polling.pollUs)
        // The metrics endpoints are bound first: a port in use stops the daemon before it logs in anywhere.
        let metrics = DaemonMetrics()
        let endpoints = try await MetricsHTTPServer.startAll(try self.metrics.endpoints(), hub: metrics.hub, logger: logger)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads ?? kernel.connections)
        let core = DaemonCore(settings: settings, group: group, logger: logger, stored: activation?.storedDevices ?? [:],
                              metrics: metrics)
        let control = ControlService(path: controlSocket ?? ControlProtocol.socketPath(environment: environment),
                                     activated: activation?.control, group: group, core: core, logger: logger)
        // The control socket first, the sessions second: a shutdown logs every session out (requests get
        // "the daemon is stopping" meanwhile), then closes the socket.
        do {
            try await Lifecycle.run(endpoints.map { (MetricsService(server: $0), "metrics") } + [
                (control, "control"),
                (DaemonCoreService(core: core, control: control, automaticLogins: !noAutomatic, logger: logger), "sessions"),
            ], logger: logger)
            try? await group.shutdownGracefully()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }
}

/// The control socket: bound (or adopted from systemd) before anything logs in, closed last.
struct ControlService: Service {
    var path: String
    var activated: Int32?
    var group: any EventLoopGroup
    var core: DaemonCore
    /// Resolved once the socket listens (nil: it could not be opened).
    let listening = Handoff<String>()
    var logger: Logger

    func run() async throws {
        let server: ControlServer
        do {
            server = try await ControlServer.start(path: path, activated: activated, group: group, logger: logger) { request in
                await core.handle(request)
            }
        } catch {
            listening.resolve(nil)
            throw CommandFailure("cannot open the control socket \(path): \(error)")
        }
        listening.resolve(path)
        _ = await StopSignal().first()
        await server.close()
    }
}

/// The sessions: logs in to the automatic records once the control socket listens, tells systemd it is
/// ready (READY=1: every automatic login either succeeded or went to background retry), and at shutdown
/// flushes, detaches and logs out of everything (STOPPING=1).
struct DaemonCoreService: Service {
    var core: DaemonCore
    var control: ControlService
    var automaticLogins: Bool
    var logger: Logger

    func run() async throws {
        guard let path = await control.listening.value() else { return }
        // Devices a previous daemon left in use come first: their I/O is waiting.
        let (adopted, notAdopted) = await core.adoptOrphans()
        if adopted + notAdopted > 0 {
            logger.notice("re-adoption: \(adopted) device(s) taken over, \(notAdopted) not")
        }
        if automaticLogins {
            let (started, present, failed) = await core.loginAutomatic()
            logger.notice("automatic logins: \(started) logged in, \(present) already up, \(failed) not logged in (retried in the background unless refused: iscsi-nbd -m session says why)")
            SystemdNotify.send("READY=1\nSTATUS=\(started + present) automatic sessions up, \(failed) not logged in")
        } else {
            SystemdNotify.send("READY=1\nSTATUS=ready")
        }
        logger.notice("daemon ready", metadata: ["control": "\(path)", "pid": "\(getpid())", "version": "\(ISCSINBDVersion.current)"])
        let watcher = Task { await core.watchShutdown() }
        defer { watcher.cancel() }
        let status = Task { await core.publishStatus() }
        defer { status.cancel() }
        let reason = await StopSignal().first()
        // The machine going down: everything goes. A restart, an upgrade, a stop by hand: devices in use stay.
        let machineStopping = (try? await NIOThreadPool.singleton.runIfActive { SystemShutdown.inProgress() }) ?? false
        logger.notice("stopping: \(reason)\(machineStopping ? " (the system is shutting down)" : ""); flushing, detaching and logging out\(machineStopping ? "" : " (devices in use are handed to the next daemon)")")
        SystemdNotify.send("STOPPING=1\nSTATUS=logging out")
        await core.shutdown(handOver: !machineStopping)
        logger.notice("stopped")
    }
}

enum DaemonProcess {
    /// linux/mman.h MCL_ONFAULT.
    static let onFault: Int32 = 4

    /// Pages of the daemon must never wait on I/O to a device it serves (swap or page-cache writeback on
    /// /dev/nbdN would deadlock): lock memory, and keep the OOM killer away.
    static func protectMemory(logger: Logger) {
        // MCL_ONFAULT (Linux 4.4): pages are locked as they are first used, not all at once. The static
        // binary maps ~80 MB (a third of it ICU data the daemon never reads); locking it all up front
        // read every page of it at start (35 s from a squashfs sysext image in a loaded TCG guest) and
        // pinned it in RAM. What the daemon runs stays resident once touched, which is the point.
        if mlockall(Int32(MCL_CURRENT | MCL_FUTURE | Self.onFault)) != 0,
           errno != EINVAL || mlockall(Int32(MCL_CURRENT | MCL_FUTURE)) != 0 {
            logger.warning("mlockall failed: \(String(cString: strerror(errno))) (set LimitMEMLOCK=infinity or run as root)")
        }
        if let fh = FileHandle(forWritingAtPath: "/proc/self/oom_score_adj") {
            do {
                try fh.write(contentsOf: Data("-1000\n".utf8))
            } catch {
                logger.warning("cannot set /proc/self/oom_score_adj: \(error)")
            }
            try? fh.close()
        }
    }
}
