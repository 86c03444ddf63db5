import Logging
import NIOCore
import NIOPosix

/// An iSNS client over TCP (RFC 4171 §5): one connection, requests matched to responses by
/// TRANSACTION ID, each with a timeout.
///
///     let client = try await ISNSClient.connect(host: "192.0.2.5", port: 3205)
///     let targets = try await client.discoverTargets(initiatorName: name)
///     try await client.close()
public final class ISNSClient: Sendable {
    /// IANA port for iSNS (RFC 4171 §6.3.5 / §8).
    public static let defaultPort = 3205

    private let channel: any Channel
    private let handler: NIOLoopBound<ISNSClientHandler>
    private let timeout: TimeAmount
    private let logger: Logger

    private init(channel: any Channel, handler: NIOLoopBound<ISNSClientHandler>, timeout: TimeAmount, logger: Logger) {
        self.channel = channel
        self.handler = handler
        self.timeout = timeout
        self.logger = logger
    }

    /// Connects to an iSNS server.
    public static func connect(host: String, port: Int = ISNSClient.defaultPort,
                               group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                               timeout: TimeAmount = .seconds(10),
                               logger: Logger = Logger(label: "iscsi-nbd.isns")) async throws -> ISNSClient {
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(ISNSMessageDecoder()))
                    try channel.pipeline.syncOperations.addHandler(ISNSClientHandler(logger: logger))
                }
            }
            .connect(host: host, port: port).get()
        let handler = try await channel.eventLoop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: ISNSClientHandler.self), eventLoop: channel.eventLoop)
        }.get()
        return ISNSClient(channel: channel, handler: handler, timeout: timeout, logger: logger)
    }

    /// Sends a request and waits for its response. A non-zero status is returned, not thrown.
    public func send(_ request: ISNSRequest) async throws -> ISNSResponse {
        let loop = channel.eventLoop
        let handler = self.handler
        let channel = self.channel
        let timeout = self.timeout
        let message: ISNSMessage = try await loop.flatSubmit { () -> EventLoopFuture<ISNSMessage> in
            let promise = loop.makePromise(of: ISNSMessage.self)
            let xid = handler.value.register(promise)
            let timer = loop.scheduleTask(in: timeout) {
                handler.value.fail(xid, ISNSError(.timeout, "\(request.functionID) after \(timeout)"))
            }
            promise.futureResult.whenComplete { _ in timer.cancel() }
            var buffer = channel.allocator.buffer(capacity: 256)
            request.message(transactionID: xid).write(to: &buffer)
            channel.writeAndFlush(buffer).whenFailure { handler.value.fail(xid, $0) }
            return promise.futureResult
        }.get()
        guard message.functionID == request.functionID.response else {
            throw ISNSError(.unexpectedResponse, "\(message.functionID) in answer to \(request.functionID)")
        }
        return try ISNSResponse(parsing: message)
    }

    /// Sends a request and throws ``ISNSError`` with the status when it is not Successful.
    @discardableResult
    public func call(_ request: ISNSRequest) async throws -> ISNSResponse {
        let response = try await send(request)
        guard response.status == .successful else {
            throw ISNSError(.status, "\(request.functionID) rejected", status: response.status)
        }
        return response
    }

    /// Registers `initiatorName` as an iSCSI initiator node in entity `entityIdentifier`.
    public func registerInitiator(name: String, entityIdentifier: String, alias: String? = nil) async throws {
        try await call(ISNSInitiatorMessages.registerInitiator(name: name, entityIdentifier: entityIdentifier, alias: alias))
    }

    /// Queries all iSCSI targets visible to `source` (our registered initiator name).
    public func queryTargets(source: String) async throws -> [ISNSDiscoveredTarget] {
        let response = try await send(ISNSInitiatorMessages.queryTargets(source: source))
        return try ISNSInitiatorMessages.targets(from: response)
    }

    /// Deregisters entity `entityIdentifier` (and our node with it).
    public func deregister(source: String, entityIdentifier: String) async throws {
        try await call(ISNSInitiatorMessages.deregister(source: source, entityIdentifier: entityIdentifier))
    }

    /// The whole discovery as open-iscsi does it: register our initiator (servers only answer
    /// queries from registered nodes), query targets, deregister (also when the query fails).
    /// `entityIdentifier` defaults to the initiator name.
    public func discoverTargets(initiatorName: String, entityIdentifier: String? = nil) async throws -> [ISNSDiscoveredTarget] {
        let eid = entityIdentifier ?? initiatorName
        try await registerInitiator(name: initiatorName, entityIdentifier: eid)
        do {
            let targets = try await queryTargets(source: initiatorName)
            try await deregister(source: initiatorName, entityIdentifier: eid)
            return targets
        } catch {
            do { try await deregister(source: initiatorName, entityIdentifier: eid) } catch {
                logger.debug("iSNS deregistration after a failed query failed", metadata: ["error": "\(error)"])
            }
            throw error
        }
    }

    public func close() async throws {
        do { try await channel.close() } catch ChannelError.alreadyClosed {}
    }
}

/// Matches responses to outstanding requests by TRANSACTION ID. Lives on the channel's loop.
final class ISNSClientHandler: ChannelInboundHandler {
    typealias InboundIn = ISNSMessage

    private var pending: [UInt16: EventLoopPromise<ISNSMessage>] = [:]
    private var nextTransactionID: UInt16 = 1
    private var closedError: (any Error)?
    private let logger: Logger

    init(logger: Logger) { self.logger = logger }

    /// Allocates a TRANSACTION ID for a new request (§5.1.5: unique among outstanding requests).
    func register(_ promise: EventLoopPromise<ISNSMessage>) -> UInt16 {
        if let closedError {
            promise.fail(closedError)
            return 0
        }
        var xid = nextTransactionID
        while pending[xid] != nil || xid == 0 { xid &+= 1 }
        nextTransactionID = xid &+ 1
        pending[xid] = promise
        return xid
    }

    func fail(_ xid: UInt16, _ error: any Error) {
        pending.removeValue(forKey: xid)?.fail(error)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = unwrapInboundIn(data)
        guard message.functionID.isResponse else {
            // Server-initiated messages (ESI, SCN) are not used by this client: we register no ESI
            // port and no SCN bitmap. Ignore them.
            logger.debug("ignoring iSNS \(message.functionID) from server")
            return
        }
        guard let promise = pending.removeValue(forKey: message.transactionID) else {
            logger.debug("iSNS response for unknown transaction \(message.transactionID)")
            return
        }
        promise.succeed(message)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(ISNSError(.connectionClosed, "connection to the iSNS server closed"))
        context.fireChannelInactive()
    }

    private func failAll(_ error: any Error) {
        if closedError == nil { closedError = error }
        let all = pending
        pending = [:]
        for promise in all.values { promise.fail(error) }
    }
}

@available(*, unavailable)
extension ISNSClientHandler: Sendable {}
