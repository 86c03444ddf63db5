import Foundation
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's end of the control socket: one request line in, one response line out, then close.
/// Bound at a path (directory 0700, socket 0600) or adopted from systemd (socket activation, fd 3).
final class ControlServer: Sendable {
    let channel: any Channel
    let path: String?

    private init(channel: any Channel, path: String?) {
        self.channel = channel
        self.path = path
    }

    static func start(
        path: String, activated: Int32?, group: any EventLoopGroup, logger: Logger,
        handle: @escaping @Sendable (ControlRequest) async -> ControlResponse
    ) async throws -> ControlServer {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ControlConnectionHandler(handle: handle, logger: logger))
                }
            }
        if let fd = activated {
            let channel = try await bootstrap.withBoundSocket(fd).get()
            logger.info("control socket from systemd (fd \(fd))")
            return ControlServer(channel: channel, path: nil)
        }
        let channel = try await UnixSocketFile.bind(path: path, logger: logger) {
            try await bootstrap.bind(unixDomainSocketPath: $0).get()
        }
        logger.info("control socket at \(path)")
        return ControlServer(channel: channel, path: path)
    }

    func close() async {
        try? await channel.close().get()
        if let path { unlink(path) }
    }
}

/// Reads one bounded request line, runs it, writes the response line and closes.
final class ControlConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var decoder = ControlLineDecoder(limit: ControlProtocol.maximumRequestLength)
    private var answered = false
    private let handle: @Sendable (ControlRequest) async -> ControlResponse
    private let logger: Logger

    init(handle: @escaping @Sendable (ControlRequest) async -> ControlResponse, logger: Logger) {
        self.handle = handle
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        let buffer = unwrapInboundIn(data)
        decoder.append(buffer.readableBytesView)
        let line: [UInt8]
        do {
            guard let l = try decoder.next() else { return }
            line = l
        } catch {
            reply(.failure(.invalidRequest, "\(error)"), on: context.channel)
            return
        }
        answered = true
        let request: ControlRequest
        do {
            request = try ControlProtocol.decode(ControlRequest.self, line: line)
        } catch {
            reply(.failure(.invalidRequest, "\(error)"), on: context.channel)
            return
        }
        logger.info("control request", metadata: [
            "op": "\(request.op.rawValue)", "target": "\(request.target ?? "*")", "portal": "\(request.portal ?? "*")",
        ])
        answerLater(request, handle: handle, channel: context.channel)
    }

    private func reply(_ response: ControlResponse, on channel: any Channel) {
        answered = true
        Self.write(response, on: channel)
    }

    fileprivate static func write(_ response: ControlResponse, on channel: any Channel) {
        let bytes = (try? ControlProtocol.encode(response)) ?? Array("{\"ok\":false,\"error\":\"encoding failed\",\"sessions\":[],\"messages\":[]}\n".utf8)
        var buffer = channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension ControlConnectionHandler: Sendable {}

/// Runs a request off the event loop and writes the answer when it is ready.
private func answerLater(
    _ request: ControlRequest, handle: @escaping @Sendable (ControlRequest) async -> ControlResponse, channel: any Channel
) {
    Task {
        let response = await handle(request)
        ControlConnectionHandler.write(response, on: channel)
    }
}

/// The CLI's end: blocking, one request per connection. `send` returns nil when no daemon listens.
enum ControlClient {
    /// Whether a process accepts connections on the socket (connect succeeds). ECONNREFUSED or a missing
    /// file mean nobody does.
    static func someoneListens(path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return rc == 0 || errno == EAGAIN  // EAGAIN: a listener whose backlog is full
    }

    static func send(_ request: ControlRequest, path: String, timeoutSeconds: Int = 600) throws -> ControlResponse? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw CommandFailure("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw CommandFailure("control socket path too long: \(path)") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if ok != 0 {
            let e = errno
            if e == ENOENT || e == ECONNREFUSED || e == ENOTDIR { return nil }
            throw CommandFailure("cannot reach the daemon at \(path): \(String(cString: strerror(e)))")
        }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let out = try ControlProtocol.encode(request)
        var sent = 0
        while sent < out.count {
            let n = out.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, out.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw CommandFailure("sending to the daemon: \(String(cString: strerror(errno)))") }
            sent += n
        }
        var decoder = ControlLineDecoder(limit: ControlProtocol.maximumResponseLength)
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            if let line = try decoder.next() { return try ControlProtocol.decode(ControlResponse.self, line: line) }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { throw CommandFailure("the daemon did not answer within \(timeoutSeconds) s") }
            guard n > 0 else { throw CommandFailure("the daemon closed the connection without an answer") }
            decoder.append(chunk[..<n])
        }
    }
}
