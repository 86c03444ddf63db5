#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Controls the kernel's NBD devices (/dev/nbdN) over generic netlink (linux/nbd-netlink.h).
///
/// Each call opens a netlink socket, resolves the "nbd" family (loading the module with `modprobe nbd` once
/// if the family is unknown), sends one request and waits for the kernel's ACK. Calls block; they need
/// root (CAP_SYS_ADMIN) except `status` and `resolveFamily`.
///
/// After `connect`, the kernel holds its own reference to each socket: the caller may (and normally
/// should) close its descriptors. The kernel speaks the NBD transmission phase on them, with simple
/// replies only, and sends `NBD_CMD_DISC` on disconnect.
public struct NBDKernelDevice: Sendable {
    /// How long to wait for the kernel's answer to one request.
    public var replyTimeout: Duration

    public init(replyTimeout: Duration = .seconds(10)) {
        self.replyTimeout = replyTimeout
    }

    /// Hands connected, handshaken sockets to the kernel (`NBD_CMD_CONNECT`) and returns N of /dev/nbdN.
    ///
    /// - Parameters:
    ///   - sockets: one or more connected sockets past the NBD handshake (more than one needs the server's
    ///     `NBD_FLAG_CAN_MULTI_CONN` to be safe).
    ///   - size: export size in bytes.
    ///   - blockSize: logical block size: a power of two in 512...page size.
    ///   - serverFlags: transmission flags from the handshake (`NBD_FLAG_*`).
    ///   - timeout: per-request timeout (`NBD_ATTR_TIMEOUT`, whole seconds, rounded up); nil = kernel default.
    ///   - deadConnectionTimeout: how long I/O waits for a reconfigure when every connection is dead.
    ///   - index: the device to use; nil = the first free one (the kernel creates one if none is free).
    ///   - backendIdentifier: shown in /sys/block/nbdN/backend; a later reconfigure must give the same one.
    public func connect(
        sockets: [Int32], size: UInt64, blockSize: UInt32, serverFlags: UInt64,
        timeout: Duration? = nil, deadConnectionTimeout: Duration? = nil, index: Int? = nil,
        backendIdentifier: String? = nil, clientFlags: NBDClientFlags = []
    ) throws(NBDKernelError) -> Int {
        let request = NBDConnectRequest(
            sockets: sockets, size: size, blockSize: blockSize, serverFlags: NBDTransmissionFlags(rawValue: serverFlags),
            clientFlags: clientFlags, timeoutSeconds: try timeout.map(Self.wholeSeconds),
            deadConnectionTimeoutSeconds: try deadConnectionTimeout.map(Self.wholeSeconds),
            index: try index.map(Self.deviceIndex), backendIdentifier: backendIdentifier)
        return try connect(request)
    }

    /// `NBD_CMD_CONNECT` with a prepared request; returns the device index the kernel used.
    public func connect(_ request: NBDConnectRequest) throws(NBDKernelError) -> Int {
        try request.validate(pageSize: Int(sysconf(Int32(_SC_PAGESIZE))))
        let (socket, family) = try open()
        let sequence = socket.nextSequence()
        let replies = try socket.transact(
            try request.encode(family: family.id, sequence: sequence), sequence: sequence,
            what: "NBD_CMD_CONNECT", timeout: replyTimeout)
        guard let reply = replies.first else { throw .malformedReply("no reply to NBD_CMD_CONNECT before the ACK") }
        return try NBDNetlinkMessages.parseConnectReply(GenericNetlinkMessage(reply))
    }

    /// `NBD_CMD_DISCONNECT`: the kernel sends NBD_CMD_DISC to the server, fails queued I/O and drops the sockets.
    public func disconnect(index: Int) throws(NBDKernelError) {
        let index = try Self.deviceIndex(index)
        let (socket, family) = try open()
        let sequence = socket.nextSequence()
        _ = try socket.transact(
            try NBDNetlinkMessages.encodeDisconnect(family: family.id, index: index, sequence: sequence),
            sequence: sequence, what: "NBD_CMD_DISCONNECT nbd\(index)", timeout: replyTimeout)
    }

    /// `NBD_CMD_RECONFIGURE`: new sockets replace dead connections; timeouts, client flags and the size
    /// (`size`, bytes: the device is resized while in use, either way) can change. A device connected with a
    /// backend identifier must be named by it.
    public func reconfigure(
        index: Int, sockets: [Int32] = [], timeout: Duration? = nil, deadConnectionTimeout: Duration? = nil,
        clientFlags: NBDClientFlags? = nil, backendIdentifier: String? = nil, size: UInt64? = nil
    ) throws(NBDKernelError) {
        let request = NBDReconfigureRequest(
            index: try Self.deviceIndex(index), sockets: sockets, timeoutSeconds: try timeout.map(Self.wholeSeconds),
            deadConnectionTimeoutSeconds: try deadConnectionTimeout.map(Self.wholeSeconds),
            clientFlags: clientFlags, backendIdentifier: backendIdentifier, sizeBytes: size)
        let (socket, family) = try open()
        let sequence = socket.nextSequence()
        _ = try socket.transact(
            try request.encode(family: family.id, sequence: sequence), sequence: sequence,
            what: "NBD_CMD_RECONFIGURE nbd\(index)", timeout: replyTimeout)
    }

    /// `NBD_CMD_STATUS`: every device (index nil) or one; a device that does not exist is simply absent.
    public func status(index: Int? = nil) throws(NBDKernelError) -> [NBDDeviceStatus] {
        let index = try index.map(Self.deviceIndex)
        let (socket, family) = try open()
        let sequence = socket.nextSequence()
        let replies = try socket.transact(
            try NBDNetlinkMessages.encodeStatus(family: family.id, index: index, sequence: sequence),
            sequence: sequence, what: "NBD_CMD_STATUS", timeout: replyTimeout)
        var result: [NBDDeviceStatus] = []
        for reply in replies { result += try NBDNetlinkMessages.parseStatusReply(GenericNetlinkMessage(reply)) }
        return result.sorted { $0.index < $1.index }
    }

    /// Resolves the "nbd" generic netlink family (id, version, multicast groups), loading the module if needed.
    public func resolveFamily() throws(NBDKernelError) -> GenericNetlinkFamily {
        try open().1
    }

    /// Resolves any generic netlink family by name, without loading modules (used by tests against the
    /// host kernel's "nlctrl").
    public func resolveFamily(named name: String) throws(NBDKernelError) -> GenericNetlinkFamily {
        try Self.resolve(name, on: NetlinkSocket(), timeout: replyTimeout)
    }

    // MARK: - Internals

    func openResolved() throws(NBDKernelError) -> (NetlinkSocket, GenericNetlinkFamily) { try open() }

    private func open() throws(NBDKernelError) -> (NetlinkSocket, GenericNetlinkFamily) {
        let socket = try NetlinkSocket()
        do {
            return (socket, try Self.resolve(NBDNetlinkFamily.name, on: socket, timeout: replyTimeout))
        } catch where error.code == .kernelRejected && error.errno == ENOENT {
            // Unknown family: the nbd module is not loaded (no udev rule loads it on demand). Try once.
            if let failure = NetlinkSocket.modprobe("nbd") { throw .noDriver(modprobe: failure) }
            do {
                return (socket, try Self.resolve(NBDNetlinkFamily.name, on: socket, timeout: replyTimeout))
            } catch where error.code == .kernelRejected && error.errno == ENOENT {
                throw .noDriver(modprobe: "modprobe succeeded but the \"nbd\" netlink family is still unknown")
            }
        }
    }

    static func resolve(_ name: String, on socket: NetlinkSocket, timeout: Duration) throws(NBDKernelError) -> GenericNetlinkFamily {
        let sequence = socket.nextSequence()
        let replies = try socket.transact(
            try GenericNetlinkFamily.encodeRequest(name: name, sequence: sequence), sequence: sequence,
            what: "CTRL_CMD_GETFAMILY \(name)", timeout: timeout)
        guard let reply = replies.first else { throw .malformedReply("no reply to CTRL_CMD_GETFAMILY") }
        let family = try GenericNetlinkFamily(reply: GenericNetlinkMessage(reply))
        guard family.name == name else { throw .malformedReply("asked for family \(name), got \(family.name)") }
        return family
    }

    /// Whole seconds, rounded up (the kernel's timeouts are in seconds).
    static func wholeSeconds(_ duration: Duration) throws(NBDKernelError) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0, attoseconds >= 0 else { throw .invalidArgument("timeouts must not be negative") }
        return UInt64(seconds) + (attoseconds > 0 ? 1 : 0)
    }

    static func deviceIndex(_ index: Int) throws(NBDKernelError) -> UInt32 {
        guard index >= 0, index <= Int(Int32.max) else { throw .invalidArgument("device index \(index) out of range") }
        return UInt32(index)
    }
}
