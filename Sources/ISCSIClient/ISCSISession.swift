import ISCSIProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SCSI

/// Run after every re-login on the new connection, before queued commands are released: the transport
/// reaches only the new connection. Fail with `ISCSISessionError.identityMismatch` to stop the session for
/// good (a different LUN answers); any other failure drops the connection and the session tries again.
public typealias ReloginCheck = @Sendable (any SCSITransport) -> EventLoopFuture<Void>

/// An iSCSI session to a target (RFC 7143), usable as a `SCSITransport`, that survives connection loss.
///
/// All protocol state lives in the connection handler on `eventLoop`; calls from other threads hop
/// there. Commands are pipelined: up to `queueDepth` in flight within the target's CmdSN window.
///
/// Recovery (ErrorRecoveryLevel 0, RFC 7143 §7.1.4.4 session recovery): when the connection drops (TCP,
/// a NOP-Out ping that goes unanswered, a protocol violation, a target-requested logout), the commands
/// the target has not answered go back to a queue, the session logs in again with the same ISID and TSIH 0
/// (§6.3.5 session reinstatement), runs the `ReloginCheck` (LUN identity), and re-issues them. Callers see
/// only a delay, up to `replacementTimeout`; after that queued and new commands fail with
/// `.replacementTimeout` while reconnecting goes on, and the session resumes by itself when the target is
/// back.
public final class ISCSISession: SCSITransport, Sendable {
    public let eventLoop: any EventLoop
    public let configuration: ISCSISessionConfiguration
    private let core: NIOLoopBound<SessionCore>
    private let published: NIOLockedValueBox<SessionStatus>
    /// Completes when the session has ended for good: logout, close, a fail-stop after an identity
    /// mismatch, or a lost connection with recovery disabled. Not on a recoverable connection loss.
    public let closeFuture: EventLoopFuture<Void>

    /// The negotiated operational parameters of the current (or last) connection (RFC 7143 §13).
    public var parameters: OperationalParameters { published.withLockedValue { $0.parameters } }
    /// The subset the full feature phase uses.
    public var sessionParameters: SessionParameters { SessionParameters(parameters) }
    /// The target-assigned session handle (RFC 7143 §11.13.3) of the current (or last) login.
    public var tsih: UInt16 { published.withLockedValue { $0.tsih } }
    /// A snapshot of the session's recovery state.
    public var status: SessionStatus { published.withLockedValue { $0 } }

    private init(connection: LoggedInConnection, configuration: ISCSISessionConfiguration, logger: Logger) {
        let loop = connection.channel.eventLoop
        self.eventLoop = loop
        self.configuration = configuration
        let published = NIOLockedValueBox(
            SessionStatus(parameters: connection.parameters, tsih: connection.tsih, state: .connected, recoveries: 0))
        self.published = published
        let closePromise = loop.makePromise(of: Void.self)
        self.closeFuture = closePromise.futureResult
        let core = SessionCore(
            configuration: configuration, eventLoop: loop, logger: logger, closePromise: closePromise,
            published: published)
        core.install(connection)
        self.core = NIOLoopBound(core, eventLoop: loop)
    }

    /// Connects and logs in (following redirects), once.
    public static func connect(
        _ configuration: ISCSISessionConfiguration, on eventLoop: any EventLoop, logger: Logger
    ) -> EventLoopFuture<ISCSISession> {
        connect(configuration, on: eventLoop, logger: logger, retry: .once)
    }

    /// Connects and logs in, retrying failed logins as `retry` says (open-iscsi
    /// node.session.initial_login_retry_max; `LoginRetryPolicy(retries: nil)` keeps trying in the
    /// background until `shouldContinue` returns false).
    public static func connect(
        _ configuration: ISCSISessionConfiguration, on eventLoop: any EventLoop, logger: Logger, retry: LoginRetryPolicy
    ) -> EventLoopFuture<ISCSISession> {
        loginRetrying(configuration, on: eventLoop, logger: logger, retry: retry, attempt: 0).map { connection in
            ISCSISession(connection: connection, configuration: configuration, logger: logger)
        }
    }

    /// Async convenience for `connect(_:on:logger:)`.
    public static func connect(
        _ configuration: ISCSISessionConfiguration, on eventLoop: any EventLoop, logger: Logger,
        retry: LoginRetryPolicy = .once
    ) async throws -> ISCSISession {
        try await connect(configuration, on: eventLoop, logger: logger, retry: retry).get()
    }

    private static func loginRetrying(
        _ configuration: ISCSISessionConfiguration, on eventLoop: any EventLoop, logger: Logger, retry: LoginRetryPolicy,
        attempt: Int
    ) -> EventLoopFuture<LoggedInConnection> {
        login(configuration, on: eventLoop, logger: logger).flatMapError { error in
            configuration.eventHandler?(.loginFailed(reason: LoginFailureReason(error)))
            let more = retry.retries.map { attempt < $0 } ?? true
            guard more, retry.shouldContinue(), retry.retries == nil || LoginRetryPolicy.isTransient(error) else {
                return eventLoop.makeFailedFuture(error)
            }
            let delay = retry.backoff.delay(beforeAttempt: attempt)
            logger.warning(
                "login failed, retrying",
                metadata: ["error": "\(error)", "attempt": "\(attempt + 1)", "delay_ms": "\(delay.nanoseconds / 1_000_000)"])
            return eventLoop.scheduleTask(in: delay) {}.futureResult.flatMap {
                loginRetrying(configuration, on: eventLoop, logger: logger, retry: retry, attempt: attempt + 1)
            }
        }
    }

    /// One login (with redirects and the CHAP algorithm fallback) on a new connection. The Login Request
    /// carries `configuration.isid` and TSIH 0: a new session, or after a loss the reinstatement of the old
    /// one (RFC 7143 §6.3.5).
    static func login(
        _ configuration: ISCSISessionConfiguration, on eventLoop: any EventLoop, logger: Logger
    ) -> EventLoopFuture<LoggedInConnection> {
        attempt(configuration, host: configuration.host, port: configuration.port,
                redirectsLeft: configuration.maxRedirects, on: eventLoop, logger: logger)
    }

    private static func attempt(
        _ configuration: ISCSISessionConfiguration, host: String, port: Int, redirectsLeft: Int,
        on eventLoop: any EventLoop, logger: Logger
    ) -> EventLoopFuture<LoggedInConnection> {
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
                        LoggedInConnection(channel: channel, handler: bound, parameters: parameters, tsih: tsih))
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
            core.value.execute(PendingCommand(command: command, lun: lun, promise: promise))
        } else {
            let core = self.core
            eventLoop.execute { core.value.execute(PendingCommand(command: command, lun: lun, promise: promise)) }
        }
        return promise.futureResult
    }

    /// The counters of every connection the session has had, its recoveries and its command window now.
    public func statistics() -> EventLoopFuture<ISCSISessionStatistics> {
        let core = self.core
        return eventLoop.submit { core.value.statistics() }
    }

    /// Installs the check run after every re-login before queued commands go out (nil: none).
    public func setReloginCheck(_ check: ReloginCheck?) {
        let core = self.core
        eventLoop.execute { core.value.reloginCheck = check }
    }

    /// Waits for outstanding commands, then logs out (reason: close the session) and closes the connection.
    /// A recovering session stops recovering; its queued commands fail with `.sessionClosed`.
    public func logout() -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        let core = self.core
        eventLoop.execute { core.value.logout(promise: promise) }
        return promise.futureResult
    }

    /// Closes the connection without logging out; outstanding commands fail with `connectionClosed`.
    public func close() -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        let core = self.core
        eventLoop.execute { core.value.close(promise: promise) }
        return promise.futureResult
    }

    /// Stops waiting for a recovering session: its queued commands fail now, as they would at the replacement
    /// timeout, and so do new ones until the target is back (reconnecting goes on). Returns how many queued
    /// commands failed (0 when the session is not recovering). For a system that shuts down while its target
    /// is unreachable: held writes fail at once instead of holding the unmount up.
    public func expireRecovery(reason: String) -> EventLoopFuture<Int> {
        let promise = eventLoop.makePromise(of: Int.self)
        let core = self.core
        eventLoop.execute { promise.succeed(core.value.expireRecovery(reason: reason)) }
        return promise.futureResult
    }

    /// Drops the current connection as if the network had failed (tests, and an operator's "recover now").
    public func dropConnection() {
        let core = self.core
        eventLoop.execute { core.value.dropConnection() }
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
        // RFC 7143 §7.4.1: discovery sessions need no recovery; a failed one is simply repeated.
        configuration.recoveryEnabled = false
        return connect(configuration, on: eventLoop, logger: logger).flatMap { session in
            let promise = session.eventLoop.makePromise(of: ByteBuffer.self)
            let core = session.core
            session.eventLoop.execute { core.value.sendText(SendTargets.requestKeys("All"), promise: promise) }
            return promise.futureResult.flatMapThrowing { text -> [DiscoveredTarget] in
                try SendTargets.parse(text)
            }.flatMap { targets in
                session.logout().map { targets }.flatMapErrorThrowing { _ in targets }
            }.flatMapError { error in
                session.close().flatMapThrowing { throw error }
            }
        }
    }
}

/// What the session is doing, for logs, status output and tests.
public struct SessionStatus: Sendable {
    public enum State: Sendable, Hashable {
        case connected
        /// Reconnecting; `expired` once the replacement timeout passed (commands fail meanwhile).
        case recovering(expired: Bool)
        case closed
    }
    public var parameters: OperationalParameters
    public var tsih: UInt16
    public var state: State
    /// Successful recoveries so far.
    public var recoveries: Int
    /// While recovering: when the connection was lost (seconds since 1970), login attempts so far, and why
    /// the connection was lost or the last attempt failed.
    public var recoveringSince: Double? = nil
    public var recoveryAttempts = 0
    public var lastError: String? = nil
}

/// A logged-in connection.
struct LoggedInConnection: Sendable {
    var channel: any Channel
    var handler: NIOLoopBound<ISCSIConnectionHandler>
    var parameters: OperationalParameters
    var tsih: UInt16
}

/// A transport that reaches one connection only (the relogin check runs on it before the queue is released).
final class ConnectionTransport: SCSITransport, Sendable {
    let eventLoop: any EventLoop
    private let handler: NIOLoopBound<ISCSIConnectionHandler>

    init(_ connection: LoggedInConnection) {
        eventLoop = connection.channel.eventLoop
        handler = connection.handler
    }

    func execute(_ command: SCSICommand, lun: LogicalUnitNumber) -> EventLoopFuture<SCSICommandResult> {
        let promise = eventLoop.makePromise(of: SCSICommandResult.self)
        let handler = self.handler
        eventLoop.execute { handler.value.submit(command, lun: lun, promise: promise) }
        return promise.futureResult
    }
}
