import BlockBackend
import Logging
import NBDProtocol
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Configuration of an `NBDServer`.
public struct NBDServerConfiguration: Sendable, Hashable {
    /// Where to listen.
    public enum ListenAddress: Sendable, Hashable, CustomStringConvertible {
        /// A unix socket, created with mode 0600. A stale socket file is replaced only if nothing listens on it;
        /// the file is removed on shutdown.
        case unix(path: String)
        /// TCP. Port 0 picks a free port (see `NBDServer.boundAddresses`).
        case tcp(host: String, port: Int)

        public var description: String {
            switch self {
            case .unix(let path): "unix:\(path)"
            case .tcp(let host, let port): "tcp:\(host):\(port)"
            }
        }
    }

    /// Canonical export name (e.g. "iqn.2026-11.example:disk/lun1"), listed by NBD_OPT_LIST. The empty
    /// (default) name reaches the same export.
    public var exportName: String
    /// Description for NBD_INFO_DESCRIPTION and listings; `nil` uses the device's `info.description`.
    public var description: String?
    public var listen: [ListenAddress]
    /// Requests executing at once per connection; beyond this the connection stops reading.
    public var maxInFlightPerConnection: Int
    /// READ and WRITE bytes executing at once per connection; beyond this the connection stops reading.
    public var maxInFlightBytesPerConnection: Int
    /// Largest option data accepted during the handshake (larger → hard disconnect).
    public var maxOptionLength: UInt32
    /// TLS for TCP listeners (FORCEDTLS); `nil`: no TLS (NBD_OPT_STARTTLS is refused by policy).
    public var tls: NBDTLSConfiguration?
    /// Connections served at once (all listeners together); further connections are accepted and closed at
    /// once, so that a flood of idle or stalled clients cannot exhaust memory or file descriptors.
    public var maxConnections: Int
    /// A connection that owes the rest of a message (handshake included) and sends nothing for this long is
    /// closed; idle connections between requests are not affected. `nil`: never.
    public var stallTimeout: TimeAmount?
    /// WRITE payload bytes buffered or in flight across all connections (see `NBDPayloadBudget`); beyond it
    /// writes fail with NBD_ENOMEM. `nil`: no global limit (each connection is still bounded).
    public var maxBufferedWriteBytes: Int?
    /// SO_SNDBUF of each connection in bytes (the kernel caps it at net.core.wmem_max); nil: the system
    /// default (212992 on Linux). A 1 MiB read reply then leaves in one or two wake-ups of the client
    /// instead of five: 1.2-1.8x the 1M QD8 read throughput in an A/B run, 4k unchanged. Only an upper
    /// bound: the kernel allocates for data actually queued.
    public var sendBufferBytes: Int? = 4 << 20

    public init(
        exportName: String, description: String? = nil,
        listen: [ListenAddress] = [.tcp(host: "127.0.0.1", port: 10809)],
        maxInFlightPerConnection: Int = 256, maxInFlightBytesPerConnection: Int = 64 << 20,
        maxOptionLength: UInt32 = 64 * 1024,
        tls: NBDTLSConfiguration? = nil, maxConnections: Int = 512, stallTimeout: TimeAmount? = .seconds(30),
        maxBufferedWriteBytes: Int? = 256 << 20
    ) {
        self.maxInFlightBytesPerConnection = maxInFlightBytesPerConnection
        self.maxBufferedWriteBytes = maxBufferedWriteBytes
        self.stallTimeout = stallTimeout
        self.tls = tls
        self.maxConnections = maxConnections
        self.exportName = exportName
        self.description = description
        self.listen = listen
        self.maxInFlightPerConnection = maxInFlightPerConnection
        self.maxOptionLength = maxOptionLength
    }
}

/// Memory shared by all connections of a server for WRITE payloads, from their first byte until the device
/// write completes. A payload that does not fit is discarded as it arrives and failed with NBD_ENOMEM (the
/// connection stays usable), so many clients sending large writes (or stalling in the middle of them) cannot
/// exhaust memory together.
final class NBDPayloadBudget: Sendable {
    let limit: Int
    private let used = NIOLockedValueBox(0)

    init(limit: Int) { self.limit = limit }

    func tryReserve(_ bytes: Int) -> Bool {
        used.withLockedValue {
            guard $0 + bytes <= limit else { return false }
            $0 += bytes
            return true
        }
    }

    func release(_ bytes: Int) { used.withLockedValue { $0 -= bytes } }

    var inUse: Int { used.withLockedValue { $0 } }
}

/// Errors from starting the server.
public struct NBDServerError: Error, Hashable, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A connection served over an already connected socket (`NBDServer.serveConnectedSocket`).
public struct NBDServedConnection: Sendable {
    let channel: any Channel
    /// Completes when the connection is closed.
    public var closeFuture: EventLoopFuture<Void> { channel.closeFuture }
    /// Closes the connection without waiting for in-flight requests.
    public func close() { channel.close(promise: nil) }
    /// Stops at a request boundary and closes the channel there, without telling the peer (see
    /// `NBDPauseEvent`): the socket's other descriptor, kept by the caller, then continues the stream in
    /// another process. `readExactly(n)` must return the next `n` bytes of the socket (or nil); it runs on the
    /// channel's event loop while the channel does not read. True once closed at a boundary.
    public func pauseAtRequestBoundary(readExactly: @escaping @Sendable (Int) -> ByteBuffer?) -> EventLoopFuture<Bool> {
        let done = channel.eventLoop.makePromise(of: Bool.self)
        channel.pipeline.fireUserInboundEventTriggered(NBDPauseEvent(readExactly: readExactly, done: done))
        channel.closeFuture.whenComplete { _ in done.succeed(false) }
        return done.futureResult
    }

    /// Accepts requests up to `size` from now on (the export grew, and the client was told so out of
    /// band: NBD_SET_SIZE for the kernel). Completes once the connection applied it.
    public func exportGrew(to size: UInt64) -> EventLoopFuture<Void> {
        let channel = self.channel
        return channel.eventLoop.submit {
            if let handler = try? channel.pipeline.syncOperations.handler(type: NBDConnectionHandler.self) {
                handler.exportGrew(to: size)
            }
        }
    }
}

/// An NBD server (nbd-proto.md, fixed newstyle) exporting one `BlockDevice` on unix and TCP sockets, and over
/// connected sockets handed in by the kernel path.
public final class NBDServer: Sendable {
    private let device: any BlockDevice
    private let configuration: NBDServerConfiguration
    private let group: any EventLoopGroup
    private let logger: Logger

    private struct State {
        var listeners: [(any Channel, NBDServerConfiguration.ListenAddress)] = []
        var connections: [ObjectIdentifier: any Channel] = [:]
        var unixPaths: [String] = []
        var nextConnectionID = 0
        var shuttingDown = false
        var tlsContext: NIOSSLContext?
    }
    private let state = NIOLockedValueBox(State())
    private let payloadBudget: NBDPayloadBudget?

    public init(device: any BlockDevice, configuration: NBDServerConfiguration, group: any EventLoopGroup, logger: Logger) {
        self.device = device
        self.configuration = configuration
        self.group = group
        self.logger = logger
        self.payloadBudget = configuration.maxBufferedWriteBytes.map { NBDPayloadBudget(limit: max($0, 0)) }
    }

    /// The addresses actually listened on (TCP port 0 resolved), once `start()` returned.
    public var boundAddresses: [NBDServerConfiguration.ListenAddress] {
        state.withLockedValue { $0.listeners.map { $0.1 } }
    }

    /// The export as offered right now (device info is read per connection: it may change on resize).
    public func currentExport() -> NBDExport {
        Self.makeExport(info: device.info, name: configuration.exportName, description: configuration.description)
    }

    /// Maps a device description onto an NBD export: transmission flags from the capabilities, minimum block
    /// size = logical block size, preferred = preferred block size, maximum payload = max transfer length.
    public static func makeExport(info: BlockDeviceInfo, name: String, description: String?) -> NBDExport {
        var flags: NBDTransmissionFlags = [.hasFlags]
        if info.readOnly { flags.insert(.readOnly) }
        if info.canFlush { flags.insert(.sendFlush) }
        if info.canFUA { flags.insert(.sendFUA) }
        if info.canTrim { flags.insert(.sendTrim) }
        if info.canWriteZeroes { flags.insert(.sendWriteZeroes) }
        if info.canFastZero { flags.insert(.sendFastZero) }
        if info.canMultiConn { flags.insert(.canMultiConn) }
        if info.rotational { flags.insert(.rotational) }
        return NBDExport(
            name: name, description: description ?? info.description, size: info.size, flags: flags,
            minimumBlockSize: info.logicalBlockSize, preferredBlockSize: info.preferredBlockSize,
            maximumPayload: info.maxTransferLength)
    }

    // MARK: - Lifecycle

    /// Binds every configured address; returns once all are listening. On failure, whatever was bound is closed.
    /// Loads the TLS context before anything listens.
    private func prepareTLS() throws {
        guard let tls = configuration.tls else { return }
        let context = try tls.makeContext()
        state.withLockedValue { $0.tlsContext = context }
    }

    // Not optimised: Swift 6.3.1's LLVM coroutine splitting crashes (signal 11 in
    // emitSetAndGetSwiftErrorValueAround) on this function in release builds. It runs once per server.
    @_optimize(none)
    public func start() async throws {
        try prepareTLS()
        do {
            for address in configuration.listen {
                switch address {
                case .tcp(let host, let port):
                    let channel = try await makeServerBootstrap(tcp: true).bind(host: host, port: port).get()
                    let bound = channel.localAddress?.port ?? port
                    state.withLockedValue { $0.listeners.append((channel, .tcp(host: host, port: bound))) }
                    logger.info("NBD server listening", metadata: ["nbd.address": "tcp:\(host):\(bound)"])
                case .unix(let path):
                    let channel = try await bindUnix(path: path)
                    state.withLockedValue {
                        $0.listeners.append((channel, address))
                        $0.unixPaths.append(path)
                    }
                    logger.info("NBD server listening", metadata: ["nbd.address": "unix:\(path)"])
                }
            }
        } catch {
            await shutdown()
            throw error
        }
    }

    /// Stops accepting, lets every connection finish its in-flight requests, closes them, removes unix socket files.
    public func shutdown() async {
        let (listeners, paths) = state.withLockedValue { s in
            s.shuttingDown = true
            defer { s.listeners = []; s.unixPaths = [] }
            return (s.listeners.map { $0.0 }, s.unixPaths)
        }
        for listener in listeners { try? await listener.close().get() }
        for path in paths { unlink(path) }
        let connections = state.withLockedValue { Array($0.connections.values) }
        for channel in connections {
            channel.eventLoop.execute { channel.pipeline.fireUserInboundEventTriggered(NBDDrainEvent()) }
        }
        for channel in connections { try? await channel.closeFuture.get() }
    }

    /// Serves an already connected socket. `transmissionOnly`: no handshake, the peer speaks the transmission
    /// phase with simple replies from the first byte (the kernel's end of a socketpair after netlink
    /// NBD_CMD_CONNECT). Takes ownership of `fd`.
    /// `loop`: where the connection runs (default: the device's own loop, so requests and replies never hop
    /// threads). A kernel device with several sockets (one per blk-mq hardware queue) spreads them over
    /// loops: requests then hop to the device's loop and their replies back.
    public func serveConnectedSocket(fd: Int32, transmissionOnly: Bool, on loop: (any EventLoop)? = nil) async throws -> NBDServedConnection {
        let loop = loop ?? device.preferredEventLoop ?? group.next()
        var bootstrap = ClientBootstrap(group: loop)
        if let bytes = configuration.sendBufferBytes {
            bootstrap = bootstrap.channelOption(.socketOption(.so_sndbuf), value: SocketOptionValue(clamping: bytes))
        }
        let channel = try await bootstrap
            .channelOption(.recvAllocator, value: Self.recvAllocator)
            .channelOption(.writeBufferWaterMark, value: Self.waterMark)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try self.install(on: channel, transmissionOnly: transmissionOnly, tls: false) }
            }
            .withConnectedSocket(fd).get()
        return NBDServedConnection(channel: channel)
    }

    // MARK: - Internals

    /// Replies queued beyond what the socket takes: above `high` the connection stops taking requests.
    private static let waterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 512 * 1024, high: 2 << 20)
    private static let recvAllocator = AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: 64 * 1024, maximum: 1024 * 1024)

    private func makeServerBootstrap(tcp: Bool) -> ServerBootstrap {
        // Connections go to the device's loop when it has one, so requests and replies never hop threads.
        let childGroup: any EventLoopGroup = device.preferredEventLoop ?? group
        var bootstrap = ServerBootstrap(group: group, childGroup: childGroup)
            .serverChannelOption(.backlog, value: 128)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.recvAllocator, value: Self.recvAllocator)
            .childChannelOption(.writeBufferWaterMark, value: Self.waterMark)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try self.install(on: channel, transmissionOnly: false, tls: tcp) }
            }
        if tcp { bootstrap = bootstrap.childChannelOption(.socketOption(.tcp_nodelay), value: 1) }
        if let bytes = configuration.sendBufferBytes {
            bootstrap = bootstrap.childChannelOption(.socketOption(.so_sndbuf), value: SocketOptionValue(clamping: bytes))
        }
        return bootstrap
    }

    private func install(on channel: any Channel, transmissionOnly: Bool, tls: Bool) throws {
        let maxConnections = configuration.maxConnections
        let (id, refuse, full, tlsContext) = state.withLockedValue { s -> (Int, Bool, Bool, NIOSSLContext?) in
            s.nextConnectionID += 1
            // Kernel sockets (transmissionOnly) are ours and always taken.
            let full = !transmissionOnly && s.connections.count >= maxConnections
            if !s.shuttingDown && !full { s.connections[ObjectIdentifier(channel)] = channel }
            return (s.nextConnectionID, s.shuttingDown, full, tls ? s.tlsContext : nil)
        }
        if refuse || full {
            if full {
                logger.warning("too many connections, refusing one", metadata: ["nbd.maxConnections": "\(maxConnections)"])
            }
            channel.close(promise: nil)
            return
        }
        channel.closeFuture.whenComplete { [state] _ in
            state.withLockedValue { _ = $0.connections.removeValue(forKey: ObjectIdentifier(channel)) }
        }
        var logger = self.logger
        logger[metadataKey: "nbd.connection"] = "\(id)"
        if let remote = channel.remoteAddress { logger[metadataKey: "nbd.peer"] = "\(remote)" }
        let export = currentExport()
        let handler =
            transmissionOnly
            ? NBDConnectionHandler(
                device: device, transmissionOnly: export, maxInFlight: configuration.maxInFlightPerConnection,
                maxInFlightBytes: configuration.maxInFlightBytesPerConnection, logger: logger)
            : NBDConnectionHandler(
                device: device, export: export, maxInFlight: configuration.maxInFlightPerConnection,
                maxInFlightBytes: configuration.maxInFlightBytesPerConnection,
                maxOptionLength: configuration.maxOptionLength, tlsContext: tlsContext,
                stallTimeout: configuration.stallTimeout, payloadBudget: payloadBudget, logger: logger)
        try channel.pipeline.syncOperations.addHandler(handler)
        logger.debug("connection accepted", metadata: ["nbd.transmissionOnly": "\(transmissionOnly)"])
    }

    /// Binds a unix socket with mode 0600 without a window where it is reachable with looser permissions:
    /// bind inside a fresh 0700 directory next to the target, chmod, then rename into place. An existing file
    /// at `path` is replaced only if it is a socket nobody listens on.
    private func bindUnix(path: String) async throws -> any Channel {
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else {
                throw NBDServerError("\(path) exists and is not a socket")
            }
            if Self.somebodyListens(path: path) { throw NBDServerError("\(path) is in use by another server") }
            logger.info("removing stale socket file", metadata: ["nbd.path": "\(path)"])
            unlink(path)
        }
        let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let templatePath = (directory.isEmpty ? "." : directory) + "/.XXXXXX"
        // sun_path holds 107 bytes; if the temporary path would not fit, bind in place and chmod at once.
        guard templatePath.utf8.count + 2 <= 107 else {
            let channel = try await makeServerBootstrap(tcp: false).bind(unixDomainSocketPath: path).get()
            guard chmod(path, 0o600) == 0 else {
                let e = errno
                try? await channel.close().get()
                throw NBDServerError("cannot chmod \(path) (errno \(e))")
            }
            return channel
        }
        var template = Array(templatePath.utf8CString)
        guard let tmp = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }).map({ String(cString: $0) }) else {
            throw NBDServerError("cannot create a temporary directory next to \(path) (errno \(errno))")
        }
        let tmpSocket = tmp + "/s"
        defer {
            unlink(tmpSocket)
            rmdir(tmp)
        }
        let channel = try await makeServerBootstrap(tcp: false).bind(unixDomainSocketPath: tmpSocket).get()
        guard chmod(tmpSocket, 0o600) == 0, rename(tmpSocket, path) == 0 else {
            let e = errno
            try? await channel.close().get()
            throw NBDServerError("cannot install socket at \(path) (errno \(e))")
        }
        return channel
    }

    private static func somebodyListens(path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
    }
}
