import ISCSIProtocol
import Logging
import NIOCore
import NIOPosix
import SCSI

/// An iSCSI session with one connection to a target (RFC 7143), usable as a `SCSITransport`.
///
/// All protocol state lives in the connection handler on `eventLoop`; calls from other threads hop
/// there. Commands are pipelined: up to `queueDepth` in flight within the target's CmdSN window.
public final class ISCSISession: SCSITransport, Sendable {
    public let eventLoop: any EventLoop
    /// The negotiated operational parameters (RFC 7143 §13).
    public let parameters: OperationalParameters
    /// The subset the full feature phase uses.
    public var sessionParameters: SessionParameters { SessionParameters(parameters) }
    /// The target-assigned session handle (RFC 7143 §11.13.3).
    public let tsih: UInt16
    public let configuration: ISCSISessionConfiguration
    private let channel: any Channel
    private let handler: NIOLoopBound<ISCSIConnectionHandler>

    private init(
        channel: any Channel, handler: NIOLoopBound<ISCSIConnectionHandler>, parameters: OperationalParameters,
        tsih: UInt16, configuration: ISCSISessionConfiguration
    ) {
        self.eventLoop = channel.eventLoop
        self.channel = channel
        self.handler = handler
        self.parameters = parameters
        self.tsih = tsih
        self.configuration = configuration
    }

    /// Connects and logs in (following redirects).
    public static func connect(
        _ configuration: ISCSISessionConfiguration, on eventLoop: any EventLoop, logger: Logger
    ) -> EventLoopFuture<ISCSISession> {
        attempt(configuration, host: configuration.host, port: configuration.port,
                redirectsLeft: configuration.maxRedirects, on: eventLoop, logger: logger)
    }

    /// Async convenience for `connect(_:on:logger:)`.
    public static func connect(
        _ configuration: ISCSISessionConfiguration, on eventLoop: any EventLoop, logger: Logger
    ) async throws -> ISCSISession {
        try await connect(configuration, on: eventLoop, logger: logger).get()
    }

    private static func attempt(
        _ configuration: ISCSISessionConfiguration, host: String, port: Int, redirectsLeft: Int,
        on eventLoop: any EventLoop, logger: Logger
    ) -> EventLoopFuture<ISCSISession> {
        var logger = logger
        logger[metadataKey: "iscsi.portal"] = "\(host):\(port)"
        let sessionLogger = logger
        let baseLogger = logger
        let bootstrap = ClientBootstrap(group: eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(configuration.loginTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ISCSIConnectionHandler(configuration: configuration, logger: sessionLogger)
                    )
                }
            }
        return bootstrap.connect(host: host, port: port).flatMap { channel in
            let outcome: EventLoopFuture<LoginOutcome>
            let bound: NIOLoopBound<ISCSIConnectionHandler>
            do {
                let handler = try channel.pipeline.syncOperations.handler(type: ISCSIConnectionHandler.self)
                bound = NIOLoopBound(handler, eventLoop: channel.eventLoop)
                let promise = channel.eventLoop.makePromise(of: LoginOutcome.self)
                handler.startLogin(try LoginStateMachine(configuration: configuration.loginConfiguration), promise: promise)
                outcome = promise.futureResult
            } catch {
                channel.close(promise: nil)
                return channel.eventLoop.makeFailedFuture(error)
            }
            return outcome.flatMap { outcome in
                switch outcome {
                case .loggedIn(let parameters, let tsih):
                    return channel.eventLoop.makeSucceededFuture(
                        ISCSISession(channel: channel, handler: bound, parameters: parameters, tsih: tsih,
                                     configuration: configuration)
                    )
                case .redirect(let portal):
                    channel.close(promise: nil)
                    guard redirectsLeft > 0 else { return channel.eventLoop.makeFailedFuture(ISCSISessionError.tooManyRedirects) }
                    sessionLogger.info("login redirected", metadata: ["iscsi.redirect": "\(portal)"])
                    return attempt(configuration, host: portal.host, port: portal.port, redirectsLeft: redirectsLeft - 1,
                                   on: eventLoop, logger: baseLogger)
                }
            }
            .flatMapError { error in
                channel.close(promise: nil)
                // RFC 7143 §12.1.3: a target that refuses every offered CHAP algorithm gets a new login
                // offering MD5 only.
                if case ISCSISessionError.login(let loginError) = error, let retry = loginError.retryCHAPAlgorithms,
                    retry != configuration.chapAlgorithms
                {
                    var fallback = configuration
                    fallback.chapAlgorithms = retry
                    sessionLogger.notice("target rejected the CHAP algorithms, retrying with \(retry)")
                    return attempt(fallback, host: host, port: port, redirectsLeft: redirectsLeft, on: eventLoop, logger: baseLogger)
                }
                return channel.eventLoop.makeFailedFuture(error)
            }
        }
    }

    /// Queues a SCSI command (RFC 7143 §11.3). The future completes on `eventLoop`.
    public func execute(_ command: SCSICommand, lun: LogicalUnitNumber) -> EventLoopFuture<SCSICommandResult> {
        let promise = eventLoop.makePromise(of: SCSICommandResult.self)
        if eventLoop.inEventLoop {
            handler.value.submit(command, lun: lun, promise: promise)
        } else {
            let handler = self.handler
            eventLoop.execute { handler.value.submit(command, lun: lun, promise: promise) }
        }
        return promise.futureResult
    }

    /// Waits for outstanding commands, then logs out (reason: close the session) and closes the connection.
    public func logout() -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        let handler = self.handler
        let channel = self.channel
        eventLoop.execute { handler.value.beginLogout(promise: promise) }
        return promise.futureResult.always { _ in channel.close(promise: nil) }
    }

    /// Closes the connection without logging out; outstanding commands fail with `connectionClosed`.
    public func close() -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        channel.close(promise: promise)
        return promise.futureResult.flatMapErrorThrowing { _ in () }
    }

    /// A discovery session (SessionType=Discovery, RFC 7143 Appendix C / §13.3): log in, send
    /// SendTargets=All, collect the answer and log out.
    public static func discover(
        host: String, port: Int = 3260, initiatorName: String, chap: CHAPCredentials? = nil,
        on eventLoop: any EventLoop, logger: Logger
    ) -> EventLoopFuture<[DiscoveredTarget]> {
        var configuration = ISCSISessionConfiguration(host: host, port: port, targetName: nil, initiatorName: initiatorName)
        configuration.chap = chap
        configuration.noopOutInterval = nil
        return connect(configuration, on: eventLoop, logger: logger).flatMap { session in
            let promise = session.eventLoop.makePromise(of: ByteBuffer.self)
            let handler = session.handler
            session.eventLoop.execute { handler.value.sendText(SendTargets.requestKeys("All"), promise: promise) }
            return promise.futureResult.flatMapThrowing { text -> [DiscoveredTarget] in
                try SendTargets.parse(text)
            }.flatMap { targets in
                session.logout().map { targets }.flatMapErrorThrowing { _ in targets }
            }.flatMapError { error in
                session.close().flatMapThrowing { throw error }
            }
        }
    }

    /// Completes when the connection has closed.
    public var closeFuture: EventLoopFuture<Void> { channel.closeFuture }
}
