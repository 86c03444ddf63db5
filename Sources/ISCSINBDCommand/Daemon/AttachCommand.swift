import ArgumentParser
import Foundation
import ISCSIClient
import Logging
import NBDKernel
import NIOCore
import NIOPosix

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

    @Option(name: .long, help: "Sockets for the device (kernel multi-queue; used when the LUN allows multi-conn).")
    var connections: Int = 1

    @OptionGroup var polling: PollOptions

    @Option(name: .long, help: "Per-request timeout in seconds (NBD_ATTR_TIMEOUT; 0 = kernel default).")
    var requestTimeout: Int = 30

    @Option(name: .long, help: "Seconds I/O waits while the session reconnects (replacement timeout; also NBD_ATTR_DEAD_CONN_TIMEOUT).")
    var deadConnectionTimeout: Int = 120

    @Option(name: .long, help: "Directory for the stable by-path link (empty = none).")
    var byPathDir: String = DeviceNames.byPathDirectory

    @Option(name: .long, help: "Kernel interface: auto (netlink where the kernel has it), netlink, or ioctl (online resize: a grown LUN grows /dev/nbdN).")
    var kernelInterface: KernelInterface = .auto

    @Flag(name: .long, help: "Attach read-only.")
    var readOnly = false

    @OptionGroup var chapOptions: CHAPOptions

    @Option(name: .long, help: "Initiator name (default: from /etc/iscsi/initiatorname.iscsi, or generated).")
    var initiatorName: String?

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        if let device { _ = try DetachCommand.index(of: device) }
        guard (1...16).contains(connections) else { throw ValidationError("--connections must be 1 to 16") }
        guard (0...3600).contains(requestTimeout), (0...86400).contains(deadConnectionTimeout) else {
            throw ValidationError("timeouts out of range")
        }
    }

    func run() async throws {
        let parsed: ISCSIURL
        do { parsed = try ISCSIURL(parsing: url) } catch { throw ValidationError(error.description) }
        if let password = parsed.password { ArgvScrubber.scrub(password) }
        let logger = logging.makeLogger(label: "iscsi-nbd.attach")
        let chap = try chapOptions.resolve(urlUsername: parsed.username, urlPassword: parsed.password)
        let reasons = StopReasons()
        let signals = SignalWatcher([SIGINT, SIGTERM]) { reasons.stop("signal \($0)") }
        defer { signals.cancel() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }

        var configuration = ISCSISessionConfiguration(
            host: parsed.host, port: parsed.port, targetName: parsed.targetName,
            initiatorName: try initiatorName ?? InitiatorIdentity.defaultName())
        configuration.chap = chap.map(\.credentials)
        configuration.replacementTimeout = .seconds(Int64(deadConnectionTimeout))
        configuration.busyPollMicroseconds = polling.pollUs
        let session = try await SessionWiring.login(configuration, on: group.next(), logger: logger)
        let attachment: KernelAttachment
        do {
            let opened = try await SessionWiring.openLUN(session: session, lun: parsed.lun, readOnly: readOnly, logger: logger)
            let options = KernelAttachOptions(
                index: try device.map(DetachCommand.index(of:)), connections: connections,
                requestTimeout: DaemonCore.kernelRequestTimeout(
                    requestTimeout == 0 ? nil : .seconds(requestTimeout), replacement: .seconds(deadConnectionTimeout)),
                deadConnectionTimeout: .seconds(deadConnectionTimeout),
                identity: DeviceIdentity(host: parsed.host, port: parsed.port, target: parsed.targetName, lun: parsed.lun,
                                         identity: opened.scsi.lunIdentity),
                exportName: "\(parsed.targetName)/lun-\(parsed.lun)",
                byPathDirectory: byPathDir.isEmpty ? nil : byPathDir,
                interface: kernelInterface)
            attachment = try await KernelAttachment.attach(device: opened.device, options: options, group: group, logger: logger)
            attachment.follow(opened.scsi)
            SessionWiring.guardIdentity(session: session, devices: [opened.scsi])
        } catch {
            try? await session.logout().get()
            throw error
        }
        FileHandle.standardOutput.write(Data((attachment.devicePath + "\n").utf8))

        attachment.allConnectionsClosed(on: session.eventLoop).whenComplete { _ in reasons.stop("the device was disconnected") }
        session.closeFuture.whenComplete { _ in reasons.stop("the iSCSI connection closed") }
        let reason = await reasons.first()
        logger.notice("stopping: \(reason)")
        await attachment.detach(flush: reason.hasPrefix("signal"), timeout: .seconds(10))
        do { try await session.logout().get() } catch { logger.info("logout: \(error)") }
        if reason.hasPrefix("the iSCSI") { throw CommandFailure("\(reason) while attached") }
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
