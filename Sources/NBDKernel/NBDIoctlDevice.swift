import CLinuxNBD
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// /dev/nbdN driven through the classic ioctl interface (linux/nbd.h: NBD_SET_SOCK, NBD_DO_IT, ...), as
/// nbd-client does it.
///
/// The reason to use it instead of netlink (`NBDKernelDevice`): kernels without the "nbd" generic netlink
/// family (before 4.12). Both resize a device in use: here NBD_SET_SIZE (`resize(to:)`), with netlink
/// NBD_CMD_RECONFIGURE carrying NBD_ATTR_SIZE_BYTES (since 5.3); the kernel refuses every ioctl but
/// DISCONNECT and CLEAR_SOCK on a netlink-configured device (drivers/block/nbd.c, 6.1). What this interface
/// lacks: a dead-connection timeout and NBD_CMD_RECONFIGURE. When the sockets close, I/O fails and the
/// device is torn down.
///
/// The kernel ties the setup to one task (NBD_SET_SOCK records `task_setup`) and NBD_DO_IT blocks until
/// disconnect, so each device gets a thread of its own that configures it, blocks in NBD_DO_IT, then clears
/// the sockets and closes the descriptor.
public final class NBDIoctlDevice: Sendable {
    /// What the kernel is told before NBD_DO_IT.
    public struct Setup: Hashable, Sendable {
        /// Connected sockets past the NBD handshake; more than one needs NBD_FLAG_CAN_MULTI_CONN.
        public var sockets: [Int32]
        public var size: UInt64
        public var blockSize: UInt32
        /// Transmission flags (`NBD_FLAG_*`) from the handshake.
        public var serverFlags: UInt64
        /// NBD_SET_TIMEOUT in seconds; nil or 0 = none (the kernel warns and keeps waiting).
        public var timeoutSeconds: UInt64?
        /// nil = the first device no one uses (`NBDIoctlDevice.firstFree`).
        public var index: Int?

        public init(sockets: [Int32], size: UInt64, blockSize: UInt32, serverFlags: UInt64, timeoutSeconds: UInt64? = nil, index: Int? = nil) {
            self.sockets = sockets
            self.size = size
            self.blockSize = blockSize
            self.serverFlags = serverFlags
            self.timeoutSeconds = timeoutSeconds
            self.index = index
        }
    }

    /// How NBD_DO_IT ended: nil while it runs, then 0 or the errno it failed with.
    private struct State {
        var fd: Int32
        var finished: Int32?
        var waiters: [@Sendable (Int32) -> Void] = []
    }

    public let index: Int
    private let state: NIOLockedValueBox<State>

    private init(index: Int, fd: Int32) {
        self.index = index
        self.state = NIOLockedValueBox(State(fd: fd))
    }

    public var path: String { "/dev/nbd\(index)" }

    /// Configures the device on a thread of its own and returns once the kernel runs it (the device's
    /// `pid` appears in sysfs), or throws what the kernel refused. Blocks for up to `startTimeout`.
    /// `announce` is called with the device's index once it is chosen, before NBD_DO_IT makes the kernel
    /// announce the device (its uevent): the place to leave what udev will ask about it.
    public static func start(_ setup: Setup, startTimeout: Duration = .seconds(10),
                             announce: (Int) -> Void = { _ in }) throws(NBDKernelError) -> NBDIoctlDevice {
        guard !setup.sockets.isEmpty, setup.sockets.allSatisfy({ $0 >= 0 }) else {
            throw .invalidArgument("at least one connected socket is required")
        }
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard setup.blockSize >= 512, Int(setup.blockSize) <= pageSize, setup.blockSize.nonzeroBitCount == 1 else {
            throw .invalidArgument("block size \(setup.blockSize) must be a power of two in 512...\(pageSize)")
        }
        guard setup.size > 0, setup.size <= UInt64(Int64.max) else { throw .invalidArgument("size \(setup.size) out of range") }
        let index: Int
        if let chosen = setup.index { index = chosen } else { index = try firstFree() }
        let path = "/dev/nbd\(index)"
        var opened = open(path, O_RDWR | O_CLOEXEC)
        if opened < 0, errno == ENOENT, NBDSysfs.devices().isEmpty {
            if let failure = NetlinkSocket.modprobe("nbd") { throw .noDriver(modprobe: failure) }
            opened = open(path, O_RDWR | O_CLOEXEC)
        }
        guard opened >= 0 else { throw .systemCall("open \(path)", errno: errno) }
        let fd = opened
        announce(index)
        let device = NBDIoctlDevice(index: index, fd: fd)
        // The thread reports the setup's outcome first (nil = running), then finishes on its own.
        let setupResult = NIOLockedValueBox<NBDKernelError??>(nil)
        let condition = ConditionLock(value: 0)
        try spawnThread {
            let failure = device.configure(setup, fd: fd)
            condition.lock()
            setupResult.withLockedValue { $0 = .some(failure) }
            condition.unlock(withValue: 1)
            if failure == nil { device.run(fd: fd) } else { device.finish(errno: EINVAL) }
        }
        condition.lock(whenValue: 1)
        condition.unlock()
        if case .some(.some(let failure)) = setupResult.withLockedValue({ $0 }) { throw failure }
        // NBD_DO_IT sets the device's pid (nbd_start_device) before it waits: that is "running".
        let deadline = ContinuousClock.now + startTimeout
        while NBDSysfs.pid(index: index) == nil {
            if let code = device.finishedCode { throw .kernelRejected("NBD_DO_IT \(path)", errno: code == 0 ? EIO : code) }
            guard ContinuousClock.now < deadline else {
                try? device.disconnect()  // do not leave a half-started device behind
                throw .timedOut("NBD_DO_IT \(path)", seconds: Double(startTimeout.components.seconds))
            }
            usleep(10_000)
        }
        return device
    }

    /// NBD_SET_SIZE on the running device: the kernel updates the capacity and tells the block layer
    /// (`set_capacity_and_notify`, a KOBJ_CHANGE uevent), so `resize2fs` or `xfs_growfs` can follow.
    public func resize(to bytes: UInt64) throws(NBDKernelError) {
        guard bytes > 0, bytes <= UInt64(Int64.max) else { throw .invalidArgument("size \(bytes) out of range") }
        try control("NBD_SET_SIZE", iscsi_nbd_ioctl_set_size, argument: UInt(bytes))
    }

    /// NBD_DISCONNECT: the kernel sends NBD_CMD_DISC on each socket; NBD_DO_IT returns once the server
    /// closed them. Harmless when the device already stopped.
    public func disconnect() throws(NBDKernelError) {
        guard finishedCode == nil else { return }
        try control("NBD_DISCONNECT", iscsi_nbd_ioctl_disconnect, argument: 0)
    }

    /// NBD_DISCONNECT on /dev/nbd`index` from another process (as `nbd-client -d`): the process serving
    /// it sees NBD_CMD_DISC, and its NBD_DO_IT returns.
    public static func disconnect(index: Int) throws(NBDKernelError) {
        let path = "/dev/nbd\(index)"
        let fd = open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw .systemCall("open \(path)", errno: errno) }
        defer { close(fd) }
        guard iscsi_nbd_ioctl(fd, iscsi_nbd_ioctl_disconnect, 0) == 0 else { throw .kernelRejected("NBD_DISCONNECT \(path)", errno: errno) }
    }

    /// 0 or NBD_DO_IT's errno once the device stopped; nil while it runs.
    public var finishedCode: Int32? { state.withLockedValue { $0.finished } }

    /// Calls `body` once NBD_DO_IT has returned (at once when it already has).
    public func whenFinished(_ body: @escaping @Sendable (Int32) -> Void) {
        let done: Int32? = state.withLockedValue { s in
            if s.finished == nil { s.waiters.append(body) }
            return s.finished
        }
        if let done { body(done) }
    }

    // MARK: - Device selection

    /// The first /dev/nbdN with no size and no serving process (sysfs), loading the module when no nbd
    /// device exists yet. The choice is a hint: a racing process makes NBD_SET_SOCK fail with EBUSY.
    public static func firstFree() throws(NBDKernelError) -> Int {
        var devices = NBDSysfs.devices()
        if devices.isEmpty {
            if let failure = NetlinkSocket.modprobe("nbd") { throw .noDriver(modprobe: failure) }
            devices = NBDSysfs.devices()
        }
        if let free = firstFree(among: devices) { return free }
        throw NBDKernelError(code: .kernelRejected, errno: EBUSY, message: "every NBD device is in use (load nbd with a larger nbds_max)")
    }

    /// Pure choice over a sysfs snapshot: the lowest index with size 0 and no pid.
    public static func firstFree(among devices: [NBDSysfs.Device]) -> Int? {
        devices.filter { $0.sectors == 0 && $0.pid == nil }.map(\.index).min()
    }

    // MARK: - The device thread

    private func configure(_ setup: Setup, fd: Int32) -> NBDKernelError? {
        do throws(NBDKernelError) {
            // A device left half-configured by a crashed process would refuse NBD_SET_SOCK.
            _ = iscsi_nbd_ioctl(fd, iscsi_nbd_ioctl_clear_sock, 0)
            try ioctlChecked(fd, "NBD_SET_BLKSIZE", iscsi_nbd_ioctl_set_blksize, UInt(setup.blockSize))
            try ioctlChecked(fd, "NBD_SET_SIZE", iscsi_nbd_ioctl_set_size, UInt(setup.size))
            try ioctlChecked(fd, "NBD_SET_FLAGS", iscsi_nbd_ioctl_set_flags, UInt(setup.serverFlags))
            if let t = setup.timeoutSeconds, t > 0 { try ioctlChecked(fd, "NBD_SET_TIMEOUT", iscsi_nbd_ioctl_set_timeout, UInt(t)) }
            for socket in setup.sockets { try ioctlChecked(fd, "NBD_SET_SOCK", iscsi_nbd_ioctl_set_sock, UInt(socket)) }
            return nil
        } catch {
            _ = iscsi_nbd_ioctl(fd, iscsi_nbd_ioctl_clear_sock, 0)
            return error
        }
    }

    private func run(fd: Int32) {
        // Blocks until NBD_DISCONNECT, NBD_CMD_DISCONNECT (netlink), or every socket closed.
        let rc = iscsi_nbd_ioctl(fd, iscsi_nbd_ioctl_do_it, 0)
        let code = rc == 0 ? 0 : errno
        _ = iscsi_nbd_ioctl(fd, iscsi_nbd_ioctl_clear_que, 0)
        _ = iscsi_nbd_ioctl(fd, iscsi_nbd_ioctl_clear_sock, 0)
        finish(errno: code)
    }

    private func finish(errno code: Int32) {
        let (fd, waiters) = state.withLockedValue { s -> (Int32, [@Sendable (Int32) -> Void]) in
            s.finished = code
            defer { s.waiters = []; s.fd = -1 }
            return (s.fd, s.waiters)
        }
        if fd >= 0 { close(fd) }
        for w in waiters { w(code) }
    }

    /// An ioctl on the held descriptor from any thread (the kernel serialises them on its config lock;
    /// NBD_DO_IT releases that lock while it waits).
    private func control(_ name: String, _ request: UInt, argument: UInt) throws(NBDKernelError) {
        // Held under the lock so the descriptor cannot be closed (and reused) in between.
        let failure: Int32? = state.withLockedValue { s in
            guard s.fd >= 0, s.finished == nil else { return ENXIO }
            return iscsi_nbd_ioctl(s.fd, request, argument) == 0 ? nil : errno
        }
        if let failure { throw .kernelRejected("\(name) \(path)", errno: failure) }
    }

    private func ioctlChecked(_ fd: Int32, _ name: String, _ request: UInt, _ argument: UInt) throws(NBDKernelError) {
        guard iscsi_nbd_ioctl(fd, request, argument) == 0 else { throw .kernelRejected("\(name) \(path)", errno: errno) }
    }

    private static func spawnThread(_ body: @escaping @Sendable () -> Void) throws(NBDKernelError) {
        final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            throw .systemCall("pthread_create", errno: rc)
        }
        pthread_detach(thread)
    }
}

/// What sysfs says about the nbd devices (/sys/block/nbdN/{size,pid}).
public enum NBDSysfs {
    public struct Device: Hashable, Sendable {
        public var index: Int
        /// /sys/block/nbdN/size: 512-byte sectors; 0 when nothing is connected.
        public var sectors: UInt64
        /// /sys/block/nbdN/pid: the task serving the device (ioctl: the one in NBD_DO_IT; netlink: the
        /// one that connected); nil when none.
        public var pid: Int?

        public init(index: Int, sectors: UInt64, pid: Int?) {
            self.index = index
            self.sectors = sectors
            self.pid = pid
        }
    }

    public static func devices(root: String = "/sys/block") -> [Device] {
        guard let dir = opendir(root) else { return [] }
        defer { closedir(dir) }
        var result: [Device] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { ptr in
                ptr.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            guard name.hasPrefix("nbd"), let index = Int(name.dropFirst(3)) else { continue }
            let sectors = readLine("\(root)/\(name)/size").flatMap { UInt64($0) } ?? 0
            result.append(Device(index: index, sectors: sectors, pid: readLine("\(root)/\(name)/pid").flatMap { Int($0) }))
        }
        return result.sorted { $0.index < $1.index }
    }

    public static func sectors(index: Int, root: String = "/sys/block") -> UInt64? {
        readLine("\(root)/nbd\(index)/size").flatMap { UInt64($0) }
    }

    public static func pid(index: Int, root: String = "/sys/block") -> Int? {
        readLine("\(root)/nbd\(index)/pid").flatMap { Int($0) }
    }

    /// The first line of a small sysfs file, trimmed; nil when it cannot be read.
    static func readLine(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = read(fd, &buffer, buffer.count)
        guard n > 0 else { return nil }
        let text = String(decoding: buffer[0..<n], as: UTF8.self)
        return text.split(whereSeparator: \.isNewline).first.map { String($0).trimmedBlanks() }
    }
}

extension String {
    fileprivate func trimmedBlanks() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
