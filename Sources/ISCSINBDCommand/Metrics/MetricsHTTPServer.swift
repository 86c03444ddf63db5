import ISCSIConfig
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// Where `/metrics` is served: `--metrics-listen [HOST]:PORT` (TCP, loopback by default) or
/// `--metrics-socket PATH` (a unix socket, mode 0600).
enum MetricsEndpoint: Sendable, Hashable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): "unix:\(path)"
        }
    }

    /// `[HOST]:PORT`, `HOST:PORT` or `:PORT`; the host defaults to 127.0.0.1 and the port is required
    /// (0: any free port, which the log names).
    static func parse(listen text: String) throws(MetricsEndpointError) -> MetricsEndpoint {
        let anyPort = text.hasSuffix(":0")
        var split: (host: String, port: Int?)
        do { split = try Portal.split(anyPort ? String(text.dropLast(2)) : text) } catch {
            throw MetricsEndpointError("--metrics-listen \(text): \(error.message)")
        }
        if anyPort {
            guard split.port == nil else { throw MetricsEndpointError("--metrics-listen \(text): one port") }
            split.port = 0
        }
        guard let port = split.port, (0...65535).contains(port) else {
            throw MetricsEndpointError("--metrics-listen \(text): give a port, [HOST]:PORT (HOST defaults to 127.0.0.1)")
        }
        return .tcp(host: split.host.isEmpty ? "127.0.0.1" : split.host, port: port)
    }
}

struct MetricsEndpointError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The `/metrics` HTTP endpoint: HTTP/1.1 over TCP or a unix socket, one request per connection. Only
/// `GET /metrics` (and `HEAD`) is answered; another path is 404, another method 405. What a client sends is
/// bounded: 8 KiB per connection (a larger header is answered 431 and closed), 10 s without a byte or
/// 30 s in all closes the connection, and at most 16 scrapers are served at once. The endpoint has its own
/// thread: a scrape never runs on an I/O loop (it only hops there to read a session's counters).
final class MetricsHTTPServer: Sendable {
    static let maximumRequestBytes = 8 * 1024
    static let idleTimeout = TimeAmount.seconds(10)
    static let requestTimeout = TimeAmount.seconds(30)
    static let maximumConnections = 16

    let channel: any Channel
    let endpoint: MetricsEndpoint
    private let unixPath: String?
    private let group: MultiThreadedEventLoopGroup

    private init(channel: any Channel, endpoint: MetricsEndpoint, unixPath: String?, group: MultiThreadedEventLoopGroup) {
        self.channel = channel
        self.endpoint = endpoint
        self.unixPath = unixPath
        self.group = group
    }

    /// The address actually bound (port 0 resolved), for logs and tests.
    var boundDescription: String {
        switch endpoint {
        case .tcp(let host, _): MetricsEndpoint.tcp(host: host, port: channel.localAddress?.port ?? 0).description
        case .unix: endpoint.description
        }
    }

    /// Binds every endpoint, or none: when one fails (a port in use) those already bound are closed and the
    /// error is thrown. Logs where each one listens.
    static func startAll(_ endpoints: [MetricsEndpoint], hub: MetricsHub, logger: Logger) async throws -> [MetricsHTTPServer] {
        var servers: [MetricsHTTPServer] = []
        do {
            for endpoint in endpoints { servers.append(try await start(endpoint, hub: hub, logger: logger)) }
        } catch {
            for server in servers { await server.close() }
            throw error
        }
        for server in servers { logger.notice("metrics at \(server.boundDescription)/metrics") }
        return servers
    }

    /// Binds at once: a port in use or an address that does not resolve is an error here, at start-up.
    static func start(_ endpoint: MetricsEndpoint, hub: MetricsHub, logger: Logger) async throws -> MetricsHTTPServer {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 16)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let admitted = hub.scrapers.withLockedValue { n in
                        guard n < maximumConnections else { return false }
                        n += 1
                        return true
                    }
                    guard admitted else {
                        channel.close(promise: nil)
                        return
                    }
                    channel.closeFuture.whenComplete { _ in hub.scrapers.withLockedValue { $0 -= 1 } }
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(RequestSizeLimit(limit: maximumRequestBytes))
                    try sync.addHandler(IdleStateHandler(readTimeout: idleTimeout))
                    try sync.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: true)
                    try sync.addHandler(MetricsRequestHandler(hub: hub, logger: logger))
                    channel.eventLoop.assumeIsolated().scheduleTask(in: requestTimeout) { channel.close(promise: nil) }
                }
            }
        do {
            switch endpoint {
            case .tcp(let host, let port):
                let channel = try await bootstrap.bind(host: host, port: port).get()
                return MetricsHTTPServer(channel: channel, endpoint: endpoint, unixPath: nil, group: group)
            case .unix(let path):
                let channel = try await UnixSocketFile.bind(path: path, logger: logger) {
                    try await bootstrap.bind(unixDomainSocketPath: $0).get()
                }
                return MetricsHTTPServer(channel: channel, endpoint: endpoint, unixPath: path, group: group)
            }
        } catch {
            try? await group.shutdownGracefully()
            throw CommandFailure("cannot serve metrics at \(endpoint): \(ErrorText.describe(error))")
        }
    }

    func close() async {
        try? await channel.close().get()
        if let unixPath { UnixSocketFile.remove(unixPath) }
        try? await group.shutdownGracefully()
    }
}

/// The endpoint as a service of the command's group: it is bound before the group starts (start-up errors
/// come first), and closed when the group shuts down.
struct MetricsService: Service {
    var server: MetricsHTTPServer

    func run() async throws {
        _ = await StopSignal().first()
        await server.close()
    }
}

/// Closes a connection that sends more than `limit` bytes (the request head of a scrape is a few hundred),
/// answering 431 first; nothing beyond the limit is buffered.
private final class RequestSizeLimit: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let limit: Int
    private var received = 0
    private var tripped = false

    init(limit: Int) { self.limit = limit }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !tripped else { return }
        received += unwrapInboundIn(data).readableBytes
        guard received <= limit else {
            tripped = true
            var response = context.channel.allocator.buffer(capacity: 96)
            response.writeString("HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            context.writeAndFlush(wrapOutboundOut(response)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            return
        }
        context.fireChannelRead(data)
    }
}

/// One request: `GET /metrics` gets the exposition, anything else 404 or 405; then the connection closes.
private final class MetricsRequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private let hub: MetricsHub
    private let logger: Logger
    private var head: HTTPRequestHead?
    private var answered = false

    init(hub: MetricsHub, logger: Logger) {
        self.hub = hub
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break  // a scrape has none; whatever comes counts against the size limit and is dropped
        case .end: respond(context: context)
        }
    }

    /// Malformed HTTP: NIO's error handler has answered 400; the connection is not kept.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func respond(context: ChannelHandlerContext) {
        guard let head, !answered else { return }
        answered = true
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        guard path == "/metrics" else {
            return send(.notFound, body: "only /metrics is served here\n", context: context)
        }
        guard head.method == .GET || head.method == .HEAD else {
            return send(.methodNotAllowed, extraHeaders: [("Allow", "GET, HEAD")], body: "use GET\n", context: context)
        }
        let isHead = head.method == .HEAD
        hub.scrape(on: context.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let bytes):
                var body = context.channel.allocator.buffer(capacity: bytes.count)
                body.writeBytes(bytes)
                self.send(.ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: body, omitBody: isHead, context: context)
            case .failure(let error):
                self.logger.warning("metrics scrape failed: \(error)")
                self.send(.internalServerError, body: "scrape failed\n", context: context)
            }
        }
    }

    private func send(
        _ status: HTTPResponseStatus, extraHeaders: [(String, String)] = [], body: String, context: ChannelHandlerContext
    ) {
        var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
        buffer.writeString(body)
        send(status, contentType: "text/plain; charset=utf-8", extraHeaders: extraHeaders, body: buffer, context: context)
    }

    private func send(
        _ status: HTTPResponseStatus, contentType: String, extraHeaders: [(String, String)] = [], body: ByteBuffer,
        omitBody: Bool = false, context: ChannelHandlerContext
    ) {
        var headers = HTTPHeaders([("Content-Type", contentType), ("Content-Length", "\(body.readableBytes)"), ("Connection", "close")])
        headers.add(contentsOf: extraHeaders)
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if !omitBody { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}
