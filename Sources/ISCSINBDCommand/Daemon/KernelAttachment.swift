import BlockBackend
import ISCSIBlockBackend
import Foundation
import Logging
import NBDKernel
import NBDServer
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Which kernel interface sets up /dev/nbdN.
enum KernelInterface: String, Sendable, CaseIterable {
    /// netlink when the kernel has the "nbd" generic netlink family (Linux 4.12 and later), else ioctl.
    case auto
    /// Generic netlink: dead-connection timeout, NBD_CMD_RECONFIGURE with fresh sockets or a new size,
    /// backend identifier.
    case netlink
    /// The classic ioctls (as nbd-client): online resize with NBD_SET_SIZE; no dead-connection grace.
    case ioctl
}

/// How to hand a LUN to the kernel.
struct KernelAttachOptions: Sendable {
    /// nbdN to use; nil = the first free one.
    var index: Int?
    /// Sockets (kernel multi-queue); more than one only when the export allows NBD_FLAG_CAN_MULTI_CONN.
    var connections: Int = 1
    /// NBD_ATTR_TIMEOUT: a request taking longer marks its connection dead (and is requeued while the
    /// dead-connection timeout runs). nil = the kernel's default.
    var requestTimeout: Duration? = .seconds(30)
    /// NBD_ATTR_DEAD_CONN_TIMEOUT: how long I/O waits for fresh sockets (NBD_CMD_RECONFIGURE) when every
    /// connection is dead. Tied to open-iscsi's node.session.timeo.replacement_timeout.
    var deadConnectionTimeout: Duration? = .seconds(120)
    /// Who the device is: its backend identifier and its by-path name.
    var identity: DeviceIdentity
    var exportName: String
    /// Directory for the stable by-path link; nil = none. In /dev/disk/by-path udev makes it (from the
    /// identity, through `iscsi-nbd udev-id`), so systemd sees it; we make it ourselves only where udev
    /// does not run or did not make it in time, or in another directory.
    var byPathDirectory: String? = DeviceNames.byPathDirectory
    var interface: KernelInterface = .auto

    var backendIdentifier: String { identity.backendIdentifier }
}

/// How an attachment gets its kernel device.
enum KernelStart: Sendable, Equatable {
    /// A new device (NBD_CMD_CONNECT; NBD_DO_IT for ioctl).
    case connect
    /// /dev/nbd<index> exists and its connections died: fresh sockets replace them (NBD_CMD_RECONFIGURE),
    /// and the I/O the kernel held back continues on them (requests in flight on the dead ones are re-sent
    /// when their request timeout fires). An ioctl device has no such grace: it starts afresh at that index.
    case reconfigure(index: Int)
    /// /dev/nbd<index> is alive and these are our ends of its sockets, left at a request boundary by a
    /// previous daemon (systemd's fd store): serving them again is all it takes; the kernel never notices.
    case resume(index: Int, sockets: [Int32])
}

/// One LUN attached as /dev/nbdN: an NBD server with no listeners serves our ends of socketpairs in
/// transmission-only mode; the kernel holds the other ends (NBD_CMD_CONNECT).
final class KernelAttachment: Sendable {
    let index: Int
    let device: any BlockDevice
    let backendIdentifier: String
    let byPathLink: String?
    /// The link was made by us (udev did not), so detach removes it.
    private let ownsLink: Bool
    let connectionCount: Int
    let options: KernelAttachOptions
    private let server: NBDServer
    let served: NIOLockedValueBox<[NBDServedConnection]>
    /// A second descriptor of each of our socket ends (same order as `served`): what a handover gives to
    /// systemd's fd store, and what completes a request cut short when pausing. Closed with the attachment,
    /// or the kernel would never see the sockets close.
    private let kept: NIOLockedValueBox<[Int32]>
    /// Set for a device set up with ioctls: the thread blocked in NBD_DO_IT (nil: netlink).
    let ioctlDevice: NBDIoctlDevice?
    let logger: Logger

    var devicePath: String { "/dev/nbd\(index)" }

    /// Completes when the kernel has dropped every connection (after a disconnect, `iscsi-nbd detach`, or
    /// dead connections).
    func allConnectionsClosed(on loop: any EventLoop) -> EventLoopFuture<Void> {
        let futures = served.withLockedValue { $0.map(\.closeFuture) }
        return EventLoopFuture.andAllComplete(futures, on: loop)
    }

    private init(index: Int, device: any BlockDevice, options: KernelAttachOptions, byPathLink: String?, ownsLink: Bool,
                 server: NBDServer, served: [NBDServedConnection], kept: [Int32], ioctlDevice: NBDIoctlDevice?, logger: Logger) {
        self.kept = NIOLockedValueBox(kept)
        self.ownsLink = ownsLink
        self.ioctlDevice = ioctlDevice
        self.options = options
        let backendIdentifier = options.backendIdentifier
        self.index = index
        self.device = device
        self.backendIdentifier = backendIdentifier
        self.byPathLink = byPathLink
        self.connectionCount = served.count
        self.server = server
        self.served = NIOLockedValueBox(served)
        self.logger = logger
    }

    /// Serves `device` to the kernel. Blocking netlink calls run on the thread pool.
    static func attach(
        device: any BlockDevice, options: KernelAttachOptions, group: any EventLoopGroup, logger: Logger,
        start: KernelStart = .connect, observers: (any NBDRequestObserverFactory)? = nil
    ) async throws -> KernelAttachment {
        let info = device.info
        let export = NBDServer.makeExport(info: info, name: options.exportName, description: nil)
        let count = export.flags.contains(.canMultiConn) ? max(1, min(options.connections, 16)) : 1
        let server = NBDServer(
            device: device, configuration: NBDServerConfiguration(exportName: options.exportName, listen: []),
            group: group, logger: logger, observers: observers)
        // Our ends: new socketpairs, or the resumed sockets.
        var ours: [Int32] = []
        var kernelFDs: [Int32] = []
        var kept: [Int32] = []
        var served: [NBDServedConnection] = []
        func closeAll() async {
            for fd in kernelFDs + kept { close(fd) }
            for s in served { s.close() }
            if served.count < ours.count { for fd in ours[served.count...] { close(fd) } }
            await server.shutdown()
        }
        if case .resume(_, let sockets) = start {
            ours = sockets
        } else {
            for _ in 0..<count {
                var fds: [Int32] = [-1, -1]
                guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
                    let e = errno
                    await closeAll()
                    throw CommandFailure("socketpair: \(String(cString: strerror(e)))")
                }
                ours.append(fds[0])
                kernelFDs.append(fds[1])
            }
        }
        // An existing device: refused before it gets a socket when the LUN shrank (resumed sockets are closed:
        // the kernel fails its I/O after the dead-connection timeout); grown when the LUN grew.
        let grownSize: UInt64?
        do {
            grownSize = try start.index.flatMap { try sizeOnReattach(index: $0, lunSize: info.size) }
        } catch {
            logger.critical("\(error)")
            await closeAll()
            throw error
        }
        let loops = Self.loops(for: ours.count, device: device, group: group)
        do {
            for (fd, loop) in zip(ours, loops) {
                let copy = fcntl(fd, F_DUPFD_CLOEXEC, 3)
                guard copy >= 0 else { throw CommandFailure("dup: \(String(cString: strerror(errno)))") }
                kept.append(copy)
                served.append(try await server.serveConnectedSocket(fd: fd, transmissionOnly: true, on: loop))
            }
        } catch {
            await closeAll()
            throw error
        }
        let index: Int
        var ioctlDevice: NBDIoctlDevice?
        do {
            switch start {
            case .resume(let existing, _):
                if let grownSize {
                    try await NIOThreadPool.singleton.runIfActive { () throws -> Void in
                        try NBDKernelDevice().reconfigure(index: existing, backendIdentifier: options.backendIdentifier, size: grownSize)
                    }
                }
                index = existing
            case .connect, .reconfigure:
                let interface = await resolve(options.interface)
                if interface == .ioctl {
                    let setup = NBDIoctlDevice.Setup(
                        sockets: kernelFDs, size: info.size, blockSize: info.logicalBlockSize,
                        serverFlags: UInt64(export.flags.rawValue), timeoutSeconds: options.requestTimeout.map(Self.seconds),
                        index: start.index ?? options.index)
                    let identity = options.identity
                    let started = try await NIOThreadPool.singleton.runIfActive { () throws -> NBDIoctlDevice in
                        try NBDIoctlDevice.start(setup) { index in
                            // udev asks `iscsi-nbd udev-id` about the device once NBD_DO_IT announces it.
                            DeviceRegistry().record(index: index, identity: identity)
                        }
                    }
                    ioctlDevice = started
                    index = started.index
                } else if case .reconfigure(let existing) = start {
                    try await NIOThreadPool.singleton.runIfActive { [kernelFDs] () throws -> Void in
                        try NBDKernelDevice().reconfigure(index: existing, sockets: kernelFDs, backendIdentifier: options.backendIdentifier,
                                                          size: grownSize)
                    }
                    index = existing
                } else {
                    let request = NBDConnectRequest(
                        sockets: kernelFDs, size: info.size, blockSize: info.logicalBlockSize,
                        serverFlags: NBDKernel.NBDTransmissionFlags(rawValue: UInt64(export.flags.rawValue)),
                        clientFlags: [], timeoutSeconds: options.requestTimeout.map(Self.seconds),
                        deadConnectionTimeoutSeconds: options.deadConnectionTimeout.map(Self.seconds),
                        index: options.index.map { UInt32(clamping: $0) }, backendIdentifier: options.backendIdentifier)
                    index = try await NIOThreadPool.singleton.runIfActive { () throws -> Int in
                        try NBDKernelDevice().connect(request)
                    }
                }
            }
        } catch {
            await closeAll()
            throw CommandFailure("cannot attach the LUN to the kernel: \(error)")
        }
        // The kernel holds its own references now.
        for fd in kernelFDs { close(fd) }
        setQueueLimits(index: index, export: export, info: info, logger: logger)
        // Ours now: a restarted daemon must not take it while we serve it (and takes it back if we die).
        if ioctlDevice == nil { DeviceRegistry().record(index: index, identity: options.identity) }
        var link: (path: String, ours: Bool)?
        if let dir = options.byPathDirectory {
            link = await settleLink(path: dir + "/" + options.identity.path, device: "/dev/nbd\(index)",
                                    udevMakesIt: dir == DeviceNames.byPathDirectory && udevRunning(), logger: logger)
        }
        let verb = switch start {
        case .connect: "attached"
        case .reconfigure: "reconnected"
        case .resume: "resumed"
        }
        logger.notice("\(verb)", metadata: [
            "device": "/dev/nbd\(index)", "backend": "\(options.backendIdentifier)", "connections": "\(served.count)",
            "size": "\(info.size)", "blockSize": "\(info.logicalBlockSize)", "grown": "\(grownSize != nil)",
            "interface": "\(ioctlDevice == nil ? "netlink" : "ioctl")",
        ])
        return KernelAttachment(index: index, device: device, options: options, byPathLink: link?.path, ownsLink: link?.ours ?? false,
                                server: server, served: served, kept: kept, ioctlDevice: ioctlDevice, logger: logger)
    }

    /// One loop per kernel socket (blk-mq hardware queue), the first on the device's own loop, the next ones
    /// on the group's following loops, round robin: NBD decoding and reply writing of each queue run in parallel, while
    /// the iSCSI session stays on its loop (requests hop to it and back). With one loop, all share it.
    static func loops(for count: Int, device: any BlockDevice, group: any EventLoopGroup) -> [any EventLoop] {
        var all: [any EventLoop] = []
        var iterator = group.makeIterator()
        while let loop = iterator.next() { all.append(loop) }
        let home = device.preferredEventLoop ?? group.next()
        guard let start = all.firstIndex(where: { $0 === home }) else { return Array(repeating: home, count: count) }
        return (0..<count).map { k in all[(start + k) % all.count] }
    }

    /// `.auto` becomes netlink when the kernel knows the "nbd" family (loading the module if needed), else ioctl.
    private static func resolve(_ interface: KernelInterface) async -> KernelInterface {
        guard interface == .auto else { return interface }
        let netlink = try? await NIOThreadPool.singleton.runIfActive { () throws -> Bool in
            _ = try NBDKernelDevice().resolveFamily()
            return true
        }
        return netlink == true ? .netlink : .ioctl
    }

    /// Follows the LUN's size: growth the bridge notices (2A/09, or a larger LUN at re-login) reaches the
    /// kernel device.
    func follow(_ scsi: SCSIBlockDevice) {
        scsi.onInfoChange { [weak self] info in
            guard let self else { return }
            Task { await self.grow(to: info.size) }
        }
    }

    /// Waits (bounded) until an ioctl device's NBD_DO_IT returned, so its index can be used again.
    private func ioctlFinished(timeout: Duration) async {
        guard let ioctlDevice else { return }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let done = loop.makePromise(of: Void.self)
        let completed = NIOLockedValueBox(false)
        let fire: @Sendable () -> Void = {
            if completed.withLockedValue({ was in defer { was = true }; return !was }) { done.succeed() }
        }
        ioctlDevice.whenFinished { _ in fire() }
        let timer = loop.scheduleTask(in: .seconds(Int64(timeout.components.seconds))) { fire() }
        try? await done.futureResult.get()
        timer.cancel()
    }

    /// Flushes the block device (page cache + NBD_CMD_FLUSH), disconnects it (NBD_CMD_DISCONNECT: queued
    /// I/O fails, the kernel sends NBD_CMD_DISC and drops the sockets), waits for our connections to finish
    /// and removes the by-path link. Bounded: never waits more than `timeout` for the kernel.
    func detach(flush: Bool, timeout: Duration = .seconds(30)) async {
        let index = self.index
        var flushState = "no"
        if flush {
            let flushed = try? await NIOThreadPool.singleton.runIfActive { () -> Int32 in
                let fd = open("/dev/nbd\(index)", O_RDWR | O_CLOEXEC | O_NONBLOCK)
                guard fd >= 0 else { return errno }
                defer { close(fd) }
                return fsync(fd) == 0 ? 0 : errno
            }
            if let e = flushed, e != 0 {
                logger.warning("flush of /dev/nbd\(index) failed: \(String(cString: strerror(e)))")
                flushState = "failed"
            } else {
                flushState = flushed == nil ? "failed" : "yes"
            }
        }
        do {
            if let ioctlDevice {
                try await NIOThreadPool.singleton.runIfActive { () throws -> Void in try ioctlDevice.disconnect() }
            } else {
                try await NIOThreadPool.singleton.runIfActive { () throws -> Void in try NBDKernelDevice().disconnect(index: index) }
            }
        } catch {
            logger.warning("disconnect /dev/nbd\(index): \(error)")
        }
        let connections = served.withLockedValue { $0 }
        let loop = device.preferredEventLoop ?? MultiThreadedEventLoopGroup.singleton.next()
        let closed = allConnectionsClosed(on: loop)
        let deadline = loop.scheduleTask(in: .seconds(Int64(timeout.components.seconds))) {
            for c in connections { c.close() }
        }
        try? await closed.get()
        deadline.cancel()
        await ioctlFinished(timeout: .seconds(10))
        await server.shutdown()
        closeKept()
        if ownsLink, let link = byPathLink { Self.removeLink(path: link, ifPointingTo: devicePath) }
        DeviceRegistry().unregister(index: index)
        logger.notice("detached", metadata: ["device": "\(devicePath)", "flushed": "\(flushState)"])
    }

    /// Drops our ends without telling the kernel: it sees dead connections and holds I/O back for the
    /// dead-connection timeout, waiting for fresh sockets (`attach(..., start: .reconfigure)`). An ioctl
    /// device stops instead (its I/O fails); the wait for NBD_DO_IT to return frees its index.
    func abandon() async {
        for c in served.withLockedValue({ $0 }) { c.close() }
        closeKept()
        await ioctlFinished(timeout: .seconds(10))
        await server.shutdown()
        if ioctlDevice != nil { DeviceRegistry().unregister(index: index) }
    }

    private func closeKept() {
        for fd in kept.withLockedValue({ k in defer { k = [] }; return k }) { close(fd) }
    }

    // MARK: - Handing over to the next daemon

    /// For a restart under a device in use: every connection stops at a request boundary (requests read are
    /// answered, none is cut) and our socket ends are returned, open, for systemd's fd store; the kernel sees
    /// nothing and the next daemon continues the streams (`.resume`). Nil when a connection could not stop
    /// cleanly or the device is an ioctl one (it cannot outlive this process): everything is then dropped as
    /// by `abandon()`, and the next daemon hands the device fresh sockets instead.
    func handOver(timeout: Duration = .seconds(10)) async -> [Int32]? {
        guard ioctlDevice == nil else {
            await abandon()
            return nil
        }
        let connections = served.withLockedValue { $0 }
        let descriptors = kept.withLockedValue { $0 }
        var clean = connections.count == descriptors.count
        for (connection, fd) in zip(connections, descriptors) where clean {
            let paused = connection.pauseAtRequestBoundary { count in
                SocketReading.readExactly(fd: fd, count: count, timeout: .seconds(2))
            }
            let loop = paused.eventLoop
            let timer = loop.scheduleTask(in: .seconds(Int64(timeout.components.seconds))) { connection.close() }
            clean = (try? await paused.get()) == true
            timer.cancel()
        }
        guard clean else {
            logger.warning("\(devicePath): its connections could not stop at a request boundary; the next daemon gives it fresh sockets")
            await abandon()
            return nil
        }
        await server.shutdown()
        return kept.withLockedValue { k in defer { k = [] }; return k }
    }

    /// Who holds the device open, if anyone: a mount, swap, a device-mapper or md holder (they open it
    /// exclusively: O_EXCL fails with EBUSY), or any process with it open. Nil: nobody, it can go.
    func holder() -> String? {
        Self.holder(of: devicePath)
    }

    static func holder(of path: String, proc: String = "/proc") -> String? {
        let fd = open(path, O_RDONLY | O_EXCL | O_CLOEXEC | O_NONBLOCK)
        if fd >= 0 {
            close(fd)
        } else if errno == EBUSY {
            return "mounted or held exclusively"
        }
        let me = getpid()
        guard let pids = try? FileManager.default.contentsOfDirectory(atPath: proc) else { return nil }
        for pid in pids where pid.allSatisfy(\.isNumber) && Int32(pid) != me {
            guard let fds = try? FileManager.default.contentsOfDirectory(atPath: "\(proc)/\(pid)/fd") else { continue }
            for fd in fds where (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(proc)/\(pid)/fd/\(fd)")) == path {
                let comm = (try? String(contentsOfFile: "\(proc)/\(pid)/comm", encoding: .utf8))?
                    .trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
                return "open by \(comm) (pid \(pid))"
            }
        }
        return nil
    }

    // MARK: - by-path links

    /// udev is running when its control socket exists (as sd-device checks it).
    static func udevRunning() -> Bool { access("/run/udev/control", F_OK) == 0 }

    /// How long an attach waits for udev's link, so that the login's output names a link that exists.
    static let udevLinkWait: Duration = .seconds(10)

    /// Makes sure `path` leads to `device`: waits (bounded) for udev's link where udev makes it, else makes
    /// it. A link of our own is invisible to systemd (no `.device` unit follows it), so a warning says why
    /// it had to be made.
    private static func settleLink(path: String, device: String, udevMakesIt: Bool, logger: Logger) async -> (path: String, ours: Bool)? {
        if udevMakesIt {
            let deadline = ContinuousClock.now + udevLinkWait
            while ContinuousClock.now < deadline {
                if let resolved = try? FileManager.default.destinationOfSymbolicLink(atPath: path),
                   URL(fileURLWithPath: resolved, relativeTo: URL(fileURLWithPath: (path as NSString).deletingLastPathComponent)).standardizedFileURL.path == device {
                    return (path, false)
                }
                try? await Task.sleep(for: .milliseconds(50))
            }
            logger.warning("udev did not make \(path) within \(udevLinkWait.components.seconds) s (is 60-iscsi-nbd.rules installed in /lib/udev/rules.d?); making it ourselves, but systemd cannot see a link udev did not make, so mount units and fstab lines on it will wait in vain")
        }
        do {
            try installLink(path: path, target: device)
            return (path, true)
        } catch {
            logger.warning("cannot create \(path): \(error)")
            return nil
        }
    }

    static func installLink(path: String, target: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFLNK else { throw CommandFailure("\(path) exists and is not a symlink") }
            unlink(path)
        }
        guard symlink(target, path) == 0 else { throw CommandFailure("symlink: \(String(cString: strerror(errno)))") }
    }

    static func removeLink(path: String, ifPointingTo target: String) {
        if let current = try? FileManager.default.destinationOfSymbolicLink(atPath: path), current == target {
            unlink(path)
        }
    }

    private static func seconds(_ d: Duration) -> UInt64 {
        let (s, atto) = d.components
        return s < 0 ? 0 : UInt64(s) + (atto > 0 ? 1 : 0)
    }
}

extension KernelStart {
    /// The device index the start names, if any.
    var index: Int? {
        switch self {
        case .connect: nil
        case .reconfigure(let index), .resume(let index, _): index
        }
    }
}

extension KernelStart {
    var isResume: Bool {
        if case .resume = self { return true }
        return false
    }
}
