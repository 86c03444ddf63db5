import struct Foundation.Date
import ISCSIProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// The session's recovery engine; lives on the event loop.
final class SessionCore {
    private enum State {
        case connected(LoggedInConnection)
        case recovering
        case closed
    }

    private let configuration: ISCSISessionConfiguration
    private let eventLoop: any EventLoop
    private let logger: Logger
    private let closePromise: EventLoopPromise<Void>
    private let published: NIOLockedValueBox<SessionStatus>
    private var state: State = .recovering
    /// Commands waiting for the session to come back, in submission order.
    private var queue = CircularBuffer<PendingCommand>(initialCapacity: 16)
    private var lostAt: NIODeadline?
    private var replacementExpired = false
    private var replacementTimer: Scheduled<Void>?
    private var reconnectTimer: Scheduled<Void>?
    private var attempt = 0
    private var time2Wait: TimeAmount = .seconds(2)
    private var errorRecoveryLevel = 0
    private var tsih: UInt16 = 0
    private var closeError: ISCSISessionError?
    var reloginCheck: ReloginCheck?
    /// The counters of the connections the session had before the current one.
    private var retired = ISCSIPDUCounters()
    private var reloginAttempts = 0
    private var lastRecovery: ISCSISessionStatistics.RecoveryRecord?

    init(
        configuration: ISCSISessionConfiguration, eventLoop: any EventLoop, logger: Logger,
        closePromise: EventLoopPromise<Void>, published: NIOLockedValueBox<SessionStatus>
    ) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.closePromise = closePromise
        self.published = published
    }

    /// Makes `connection` the session's connection; its loss comes back to `lost`.
    func install(_ connection: LoggedInConnection) {
        state = .connected(connection)
        time2Wait = .seconds(Int64(max(0, min(connection.parameters.defaultTime2Wait, 3600))))
        errorRecoveryLevel = connection.parameters.errorRecoveryLevel
        tsih = connection.tsih
        connection.handler.value.connectionLostSink = { [self] error, commands, hint in
            self.lost(connection: connection, error: error, commands: commands, time2WaitHint: hint)
        }
        published.withLockedValue {
            $0.parameters = connection.parameters
            $0.tsih = connection.tsih
            $0.state = .connected
        }
    }

    func execute(_ command: PendingCommand) {
        switch state {
        case .connected(let connection):
            connection.handler.value.submit(command)
        case .recovering:
            if replacementExpired {
                command.promise.fail(ISCSISessionError.replacementTimeout(seconds: configuration.replacementTimeout.seconds))
            } else {
                queue.append(command)
            }
        case .closed:
            command.promise.fail(closeError ?? ISCSISessionError.sessionClosed)
        }
    }

    func statistics() -> ISCSISessionStatistics {
        var pdus = retired
        var window: ISCSICommandWindowSnapshot?
        if case .connected(let connection) = state {
            pdus = pdus + connection.handler.value.counters
            window = connection.handler.value.windowSnapshot
        }
        let recoveries = published.withLockedValue { $0.recoveries }
        return ISCSISessionStatistics(
            pdus: pdus, recoveries: recoveries, reloginAttempts: reloginAttempts, lastRecovery: lastRecovery, window: window)
    }

    /// Keeps what a connection counted once it is no longer the session's.
    private func retire(_ connection: LoggedInConnection) {
        retired = retired + connection.handler.value.counters
    }

    func sendText(_ keys: TextKeyValues, promise: EventLoopPromise<ByteBuffer>) {
        guard case .connected(let connection) = state else {
            promise.fail(closeError ?? ISCSISessionError.sessionClosed)
            return
        }
        connection.handler.value.sendText(keys, promise: promise)
    }

    // MARK: - Recovery

    private func lost(connection: LoggedInConnection, error: ISCSISessionError, commands: [PendingCommand], time2WaitHint: TimeAmount?) {
        guard case .connected(let current) = state, current.channel === connection.channel else {
            // Not the session's connection any more (closing): nothing to recover.
            for command in commands { command.promise.fail(closeError ?? error) }
            return
        }
        guard configuration.recoveryEnabled else {
            for command in commands { command.promise.fail(error) }
            finish(error)
            return
        }
        retire(connection)
        state = .recovering
        let lostAtWallClock = Date().timeIntervalSince1970
        let reason = "\(error)"
        lastRecovery = ISCSISessionStatistics.RecoveryRecord(lostAt: lostAtWallClock, reason: reason, durationSeconds: nil)
        configuration.eventHandler?(.recoveryStarted(reason: reason))
        published.withLockedValue {
            $0.state = .recovering(expired: false)
            $0.recoveringSince = lostAtWallClock
            $0.recoveryAttempts = 0
            $0.lastError = reason
        }
        // Re-issued commands go first, in their original order; anything queued meanwhile follows.
        var reissue = CircularBuffer<PendingCommand>(initialCapacity: commands.count + queue.count)
        reissue.append(contentsOf: commands)
        reissue.append(contentsOf: queue)
        queue = reissue
        lostAt = eventLoop.now
        attempt = 0
        replacementExpired = false
        logger.log(
            level: error == .targetRequestedLogout ? .notice : .warning,
            error == .targetRequestedLogout ? "logged out at the target's request, reconnecting" : "iSCSI connection lost, recovering the session",
            metadata: [
                "error": "\(reason)", "reissue": "\(commands.count)",
                "replacement_timeout_s": "\(configuration.replacementTimeout.seconds)",
            ])
        replacementTimer?.cancel()
        replacementTimer = eventLoop.assumeIsolated().scheduleTask(in: configuration.replacementTimeout) { [self] in
            self.replacementTimedOut()
        }
        scheduleReconnect(time2WaitHint: time2WaitHint)
    }

    private func scheduleReconnect(time2WaitHint: TimeAmount? = nil) {
        let backoff = ReconnectBackoff(time2Wait: time2WaitHint ?? time2Wait, maximum: configuration.maxReconnectDelay)
        let delay = backoff.delay(beforeAttempt: attempt)
        reconnectTimer = eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in
            self.reconnect()
        }
    }

    private func reconnect() {
        guard case .recovering = state else { return }
        attempt += 1
        reloginAttempts += 1
        published.withLockedValue { $0.recoveryAttempts = attempt }
        // RFC 7143 §6.3.5: same ISID (the configuration's), TSIH 0.
        let plan = SessionRecoveryLogin.decide(errorRecoveryLevel: errorRecoveryLevel, isid: configuration.isid, tsih: tsih)
        logger.debug("reconnecting", metadata: ["attempt": "\(attempt)", "login": "\(plan)"])
        ISCSISession.login(configuration, on: eventLoop, logger: logger).hop(to: eventLoop).assumeIsolated().whenComplete {
            [self] result in
            switch result {
            case .success(let connection):
                guard case .recovering = self.state else {
                    connection.channel.close(promise: nil)
                    return
                }
                self.verify(connection)
            case .failure(let error):
                guard case .recovering = self.state else { return }
                self.configuration.eventHandler?(.loginFailed(reason: LoginFailureReason(error)))
                self.published.withLockedValue { $0.lastError = "reconnect attempt \(self.attempt): \(error)" }
                // One line per attempt at most, quieter after the first few.
                let level: Logger.Level = self.attempt <= 3 || self.attempt % 10 == 0 ? .warning : .debug
                self.logger.log(level: level, "reconnect failed", metadata: ["error": "\(error)", "attempt": "\(self.attempt)"])
                self.scheduleReconnect()
            }
        }
    }

    private func verify(_ connection: LoggedInConnection) {
        guard let check = reloginCheck else {
            resume(connection)
            return
        }
        check(ConnectionTransport(connection)).hop(to: eventLoop).assumeIsolated().whenComplete { [self] result in
            guard case .recovering = self.state else {
                connection.channel.close(promise: nil)
                return
            }
            switch result {
            case .success:
                if connection.handler.value.isInFullFeaturePhase {
                    self.resume(connection)
                } else {
                    self.logger.warning("connection lost during the re-login check")
                    connection.channel.close(promise: nil)
                    self.scheduleReconnect()
                }
            case .failure(let error):
                if let sessionError = error as? ISCSISessionError, case .identityMismatch = sessionError {
                    self.configuration.eventHandler?(.identityMismatch)
                    connection.channel.close(promise: nil)
                    self.logger.critical(
                        "the LUN changed identity across the reconnect; stopping the session so nothing is written to a different LUN",
                        metadata: ["error": "\(sessionError)"])
                    self.finish(sessionError)
                } else {
                    self.logger.warning("re-login check failed, reconnecting", metadata: ["error": "\(error)"])
                    connection.channel.close(promise: nil)
                    self.scheduleReconnect()
                }
            }
        }
    }

    private func resume(_ connection: LoggedInConnection) {
        replacementTimer?.cancel()
        replacementTimer = nil
        let elapsed = lostAt.map { eventLoop.now - $0 } ?? .zero
        let commands = queue
        queue.removeAll()
        logger.notice(
            "iSCSI session recovered",
            metadata: [
                "after_ms": "\(elapsed.nanoseconds / 1_000_000)", "attempts": "\(attempt)",
                "reissue": "\(commands.count)", "iscsi.tsih": "\(connection.tsih)",
            ])
        replacementExpired = false
        lostAt = nil
        let seconds = Double(elapsed.nanoseconds) / 1e9
        lastRecovery?.durationSeconds = seconds
        configuration.eventHandler?(.recovered(seconds: seconds))
        published.withLockedValue {
            $0.recoveries += 1
            $0.recoveringSince = nil
            $0.lastError = nil
        }
        install(connection)
        // Through `execute`: should the new connection drop meanwhile, the rest queue again.
        for command in commands { execute(command) }
    }

    private func replacementTimedOut() {
        _ = expire(because: "not recovered within the replacement timeout")
    }

    func expireRecovery(reason: String) -> Int {
        replacementTimer?.cancel()
        return expire(because: reason)
    }

    /// Fails the queued commands and every new one while the session stays down; returns how many failed.
    private func expire(because reason: String) -> Int {
        guard case .recovering = state, !replacementExpired else { return 0 }
        replacementExpired = true
        published.withLockedValue { $0.state = .recovering(expired: true) }
        let failed = queue
        queue.removeAll()
        logger.error(
            "iSCSI session \(reason): failing \(failed.count) queued and all new requests with EIO until the target is back; still reconnecting",
            metadata: ["replacement_timeout_s": "\(configuration.replacementTimeout.seconds)"])
        let error = ISCSISessionError.replacementTimeout(seconds: configuration.replacementTimeout.seconds)
        for command in failed { command.promise.fail(error) }
        return failed.count
    }

    /// Ends the session for good: timers off, queue failed, `closeFuture` completed.
    private func finish(_ error: ISCSISessionError) {
        if closeError == nil { closeError = error }
        if case .connected(let connection) = state {
            connection.handler.value.connectionLostSink = nil
            retire(connection)
        }
        state = .closed
        published.withLockedValue { $0.state = .closed }
        replacementTimer?.cancel()
        reconnectTimer?.cancel()
        let failed = queue
        queue.removeAll()
        for command in failed { command.promise.fail(closeError ?? error) }
        closePromise.succeed(())
    }

    // MARK: - Ending

    func logout(promise: EventLoopPromise<Void>) {
        switch state {
        case .connected(let connection):
            connection.handler.value.connectionLostSink = nil
            let inner = eventLoop.makePromise(of: Void.self)
            connection.handler.value.beginLogout(promise: inner)
            let channel = connection.channel
            finish(.sessionClosed)
            inner.futureResult.always { _ in channel.close(promise: nil) }.cascade(to: promise)
        case .recovering:
            finish(.sessionClosed)
            promise.succeed(())
        case .closed:
            promise.succeed(())
        }
    }

    func close(promise: EventLoopPromise<Void>) {
        if case .connected(let connection) = state {
            connection.handler.value.connectionLostSink = nil
            finish(.connectionClosed)
            connection.channel.close().flatMapErrorThrowing { _ in () }.cascade(to: promise)
            return
        }
        if case .recovering = state { finish(.sessionClosed) }
        promise.succeed(())
    }

    func dropConnection() {
        if case .connected(let connection) = state { connection.channel.close(promise: nil) }
    }
}

@available(*, unavailable)
extension SessionCore: Sendable {}

extension TimeAmount {
    /// Whole seconds, rounded up.
    var seconds: Int64 { (nanoseconds + 999_999_999) / 1_000_000_000 }
}
