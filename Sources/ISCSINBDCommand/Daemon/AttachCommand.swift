import ArgumentParser
import Foundation
import ISCSIBlockBackend
import ISCSIClient
import ISCSIConfig
import Logging
import NBDKernel
import NIOCore
import NIOPosix
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// `iscsi-nbd attach URL [--device /dev/nbdN]`: like nbd-client, without the daemon. Logs in, attaches
/// the LUN as /dev/nbdN (printed on stdout), and stays in the foreground until SIGINT/SIGTERM or until
/// the device is disconnected (`iscsi-nbd detach /dev/nbdN`); then flushes, detaches and logs out.
struct AttachCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attach",
        abstract: "Log in and attach one LUN as /dev/nbdN in the foreground (no daemon).",
        discussion: """
              iscsi-nbd attach iscsi://HOST[:PORT]/TARGET-IQN/LUN [--device /dev/nbd3]
            Prints the device path once attached. Stops on SIGINT/SIGTERM or `iscsi-nbd detach /dev/nbdN`.
            """
    )

    @Argument(help: "iscsi://[USER[%SECRET]@]HOST[:PORT]/TARGET-IQN/LUN")
    var url: String

    @Option(name: .long, help: "The device to use, /dev/nbdN (default: the first free one).")
    var device: String?

    @OptionGroup var kernel: KernelDeviceOptions

    @Option(name: .long, help: "Seconds I/O waits while the session reconnects (replacement timeout; also NBD_ATTR_DEAD_CONN_TIMEOUT). Default: node.session.timeo.replacement_timeout from iscsid.conf, else 120.")
    var deadConnectionTimeout: Int?

    @Option(name: .long, help: "Configuration directory for iscsid.conf and initiatorname.iscsi (default /etc/iscsi, or ISCSI_NBD_CONFIG_DIR).")
    var configDir: String?

    @Option(name: .long, help: "Directory for the stable by-path link (empty = none).")
    var byPathDir: String = DeviceNames.byPathDirectory

    @Flag(name: .long, help: "Attach read-only.")
    var readOnly = false

    @OptionGroup var chapOptions: CHAPOptions

    @OptionGroup var metrics: MetricsOptions

    @Option(name: .long, help: "Initiator name (default: from /etc/iscsi/initiatorname.iscsi, or generated).")
    var initiatorName: String?

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        if let device { _ = try DetachCommand.index(of: device) }
        guard (0...86400).contains(deadConnectionTimeout ?? 0) else {
            throw ValidationError("--dead-connection-timeout must be 0 to 86400")
        }
    }

    func run() async throws {
        let parsed = try ISCSIURL.fromCommandLine(url)
        let logger = logging.makeLogger(label: "iscsi-nbd.attach")
        // The same plan as serve's: iscsid.conf's defaults, then the URL and the flags.
        let planner = try SessionPlanner(configDirectory: ConfigDirectory.resolve(explicit: configDir),
                                         initiatorName: initiatorName, initiatorNameSource: .fileOrMachineID)
        let plan = try planner.plan(url: parsed, overrides: SessionOverrides(
            chap: try chapOptions.resolve(urlUsername: parsed.username, urlPassword: parsed.password),
            replacementTimeout: deadConnectionTimeout.map { .seconds($0) }, busyPollMicroseconds: kernel.polling.pollUs))
        let deadConnection = plan.settings.replacementTimeout
        let index = try device.map(DetachCommand.index(of:))
        let kernelRequestTimeout = DaemonCore.kernelRequestTimeout(
            kernel.requestTimeout == 0 ? nil : .seconds(kernel.requestTimeout), replacement: deadConnection)
        let (connections, byPathDir, kernelInterface) = (kernel.connections, self.byPathDir, kernel.kernelInterface)
        let options: @Sendable (LUNIdentity?) -> KernelAttachOptions = { identity in
            KernelAttachOptions(
                index: index, connections: connections, requestTimeout: kernelRequestTimeout,
                deadConnectionTimeout: deadConnection,
                identity: DeviceIdentity(host: parsed.host, port: parsed.port, target: parsed.targetName, lun: parsed.lun,
                                         identity: identity),
                exportName: "\(parsed.targetName)/lun-\(parsed.lun)",
                byPathDirectory: byPathDir.isEmpty ? nil : byPathDir, interface: kernelInterface)
        }
        // One thread per queue: the session shares the first with queue 0.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: connections)
        defer { group.shutdownGracefully { _ in } }
        let loop = group.next()
        var configuration = plan.configuration
        let metrics = try await CommandMetrics.start(try self.metrics.endpoints(), configuration: configuration, logger: logger)
        metrics?.instrument(&configuration)
        let opened = Handoff<OpenedLUN>()
        // The session first, the device second: a shutdown detaches the device, then logs out.
        try await Lifecycle.run((metrics?.services ?? []) + [
            (SessionService(configuration: configuration, lun: parsed.lun, readOnly: readOnly, loop: loop,
                            opened: opened, logger: logger), "session"),
            (KernelDeviceService(opened: opened, options: options, group: group, metrics: metrics, logger: logger), "device"),
        ], logger: logger)
    }
}

/// `attach`'s device: attaches the opened LUN as /dev/nbdN (printed on stdout; the device of a dead
/// `attach` of the same LU is taken back), and keeps it until the
/// group shuts down (flush, then NBD_CMD_DISCONNECT) or the kernel drops it (`iscsi-nbd detach`: the command
/// ends, exit 0). When the session ended for good, the device is detached without a flush, which could
/// only time out.
struct KernelDeviceService: Service {
    var opened: Handoff<OpenedLUN>
    /// The device's options, once the LUN's identity is known.
    var options: @Sendable (LUNIdentity?) -> KernelAttachOptions
    var group: any EventLoopGroup
    var metrics: CommandMetrics?
    var logger: Logger

    func run() async throws {
        guard let lun = await opened.value() else { return }
        let options = options(lun.scsi.lunIdentity)
        // Run again after an attach of the same LU died (kill -9, a crash): take its device back, so the
        // I/O the kernel holds for the dead-connection timeout goes on, on the same /dev/nbdN.
        let orphan = DeviceRegistry().orphans(adoptableWith: options.interface).first {
            $0.backend == options.identity.backendIdentifier && (options.index == nil || options.index == $0.index)
        }
        let attachment = try await KernelAttachment.attach(
            device: lun.device, options: options, group: group, logger: logger,
            start: orphan.map { .reconfigure(index: $0.index) } ?? .connect, observers: metrics?.requests)
        metrics?.serving(lun, device: attachment.devicePath)
        if let orphan { logger.notice("re-adopted \(orphan.path), left by an attach that died") }
        attachment.follow(lun.scsi)
        FileHandle.standardOutput.write(Data((attachment.devicePath + "\n").utf8))
        let stop = StopSignal()
        attachment.allConnectionsClosed(on: lun.session.eventLoop).whenComplete { _ in stop.stop(.deviceDisconnected) }
        let reason = await stop.first()
        logger.notice("stopping: \(reason)")
        let sessionUsable = lun.session.status.state != .closed
        await attachment.detach(flush: reason == .shutdownRequested && sessionUsable, timeout: .seconds(10))
    }
}

/// `iscsi-nbd detach /dev/nbdN`: NBD_CMD_DISCONNECT (as `nbd-client -d`). An `attach` process serving the
/// device then logs out and exits.
struct DetachCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "detach",
        abstract: "Disconnect /dev/nbdN (the attach process serving it logs out and exits)."
    )

    @Argument(help: "/dev/nbdN, nbdN or N")
    var device: String

    func validate() throws { _ = try Self.index(of: device) }

    static func index(of device: String) throws -> Int {
        var name = Substring(device)
        if name.hasPrefix("/dev/") { name = name.dropFirst(5) }
        if name.hasPrefix("nbd") { name = name.dropFirst(3) }
        guard !name.isEmpty, name.allSatisfy(\.isASCII), name.allSatisfy(\.isNumber), let n = Int(name), n <= 1_000_000 else {
            throw ValidationError("\(device) is not an NBD device (/dev/nbdN)")
        }
        return n
    }

    func run() async throws {
        let index = try Self.index(of: device)
        // Flush first, so dirty pages are written before the device goes away.
        let fd = open("/dev/nbd\(index)", O_RDWR | O_CLOEXEC | O_NONBLOCK)
        if fd >= 0 {
            _ = fsync(fd)
            close(fd)
        }
        do {
            try NBDKernelDevice().disconnect(index: index)
        } catch where error.code == .noDriver || (error.code == .kernelRejected && error.errno == ENOENT) {
            // No "nbd" netlink family: the device was set up with ioctls (nbd-client -d does the same).
            do { try NBDIoctlDevice.disconnect(index: index) } catch { throw CommandFailure("cannot detach /dev/nbd\(index): \(error)") }
        } catch {
            throw CommandFailure("cannot detach /dev/nbd\(index): \(error)")
        }
    }
}

extension KernelInterface: ExpressibleByArgument {}
