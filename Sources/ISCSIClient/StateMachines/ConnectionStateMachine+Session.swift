import ISCSIProtocol
import NIOCore

// MARK: - NOP-In and Async Message (RFC 7143 §11.19, §11.9)

extension ConnectionStateMachine {
    /// RFC 7143 §11.19: answer a target ping (TTT set) with a NOP-Out; a NOP-In with our ITT answers our ping.
    mutating func receiveNOPIn(_ nop: ISCSIPDU.NOPIn, _ ff: inout FullFeature) {
        if nop.initiatorTaskTag == Self.pingITT { ff.keepAlive?.pingAnswered() }
        guard nop.targetTransferTag != reservedTaskTag else { return }
        var out = ISCSIPDU.NOPOut()
        out.immediate = true
        out.lun = nop.lun
        out.initiatorTaskTag = reservedTaskTag
        out.targetTransferTag = nop.targetTransferTag
        out.cmdSN = ff.window.immediateCmdSN
        out.expStatSN = ff.window.expStatSN
        emit(.send(OutboundPDU(header: out.pdu.header, data: nop.data)))
    }

    /// RFC 7143 §11.9.1.
    mutating func receiveAsyncMessage(_ message: ISCSIPDU.AsyncMessage, _ ff: inout FullFeature) {
        switch message.event {
        case .logoutRequested:
            logger.notice("target requested logout", metadata: ["iscsi.seconds": "\(message.parameter3)"])
            recordCloseReason(.targetRequestedLogout)
            switch ff.logout {
            case .none:
                beginLogout(Logout(promise: nil, requestedByTarget: true), &ff)
            case .draining(var logout):
                logout.requestedByTarget = true
                ff.logout = .draining(logout)
            case .requested(var logout):
                logout.requestedByTarget = true
                ff.logout = .requested(logout)
            case .done:
                break
            }
        case .connectionWillDrop, .sessionWillDrop:
            // RFC 7143 §11.9.1: Parameter2 is Time2Wait, the seconds to wait before reconnecting.
            logger.warning("target will drop the connection", metadata: [
                "iscsi.event": "\(message.event.rawValue)", "iscsi.time2wait": "\(message.parameter2)",
            ])
            recordTime2Wait(.seconds(Int64(min(message.parameter2, 3600))))
            recordCloseReason(.connectionClosed)
        default:
            logger.info("async message", metadata: ["iscsi.event": "\(message.event.rawValue)"])
        }
    }
}

// MARK: - Logout (RFC 7143 §11.14, §11.15)

extension ConnectionStateMachine {
    /// Stops taking commands, lets the outstanding ones finish, then logs out (reason: close the session).
    mutating func beginLogout(promise: EventLoopPromise<Void>) {
        guard let storage = takeFullFeature() else {
            emit(.completeLogout(promise, .failure(closeReason ?? .sessionClosed)))
            return
        }
        defer { store(storage) }
        switch storage.value.logout {
        case .none:
            beginLogout(Logout(promise: promise, requestedByTarget: false), &storage.value)
        case .draining(var logout):
            adopt(promise, into: &logout)
            storage.value.logout = .draining(logout)
        case .requested(var logout):
            adopt(promise, into: &logout)
            storage.value.logout = .requested(logout)
        case .done:
            emit(.completeLogout(promise, .failure(closeReason ?? .sessionClosed)))
        }
    }

    /// A logout is under way already: `promise` completes with it.
    private mutating func adopt(_ promise: EventLoopPromise<Void>, into logout: inout Logout) {
        if let existing = logout.promise {
            emit(.cascadeLogout(from: existing, to: promise))
        } else {
            logout.promise = promise
        }
    }

    private mutating func beginLogout(_ logout: Logout, _ ff: inout FullFeature) {
        ff.logout = .draining(logout)
        emit(.armTimer(.logout, configuration.logoutTimeout))
        if ff.tasks.isEmpty && ff.pending.isEmpty && ff.text == nil { sendLogoutIfDraining(&ff) }
    }

    mutating func sendLogoutIfDraining(_ ff: inout FullFeature) {
        guard case .draining(let logout) = ff.logout else { return }
        ff.logout = .requested(logout)
        var request = ISCSIPDU.LogoutRequest()
        request.immediate = true
        request.reason = .closeSession
        request.initiatorTaskTag = Self.logoutITT
        request.cmdSN = ff.window.immediateCmdSN
        request.expStatSN = ff.window.expStatSN
        emit(.send(OutboundPDU(header: request.pdu.header)))
        emit(.scheduleFlush)
    }

    mutating func receiveLogoutResponse(_ response: ISCSIPDU.LogoutResponse, _ ff: inout FullFeature) throws(ISCSISessionError) {
        guard case .requested(let logout) = ff.logout, response.initiatorTaskTag == Self.logoutITT else {
            throw .protocolViolation("unexpected Logout Response")
        }
        emit(.cancelTimer(.logout))
        ff.logout = .done(held: logout.held)
        if let promise = logout.promise {
            emit(.completeLogout(promise, response.response == 0 ? .success(()) : .failure(.protocolViolation("logout response \(response.response)"))))
        }
        emit(.close)
    }
}

// MARK: - Timers: login, logout, keep-alive, command timeouts (RFC 7143 §7.11, §11.5)

extension ConnectionStateMachine {
    mutating func timerFired(_ timer: ConnectionTimer, now: NIODeadline) {
        switch timer {
        case .login:
            counters.timeoutErrors &+= 1
            fail(.timeout("login"))
        case .logout:
            counters.timeoutErrors &+= 1
            fail(.timeout("logout"))
        case .keepAlive: keepAliveTick(now: now)
        case .commandTimeout: commandTimeoutTick(now: now)
        }
    }

    /// The ticks run while commands may flow: logged in, or draining for a logout.
    /// Taken first and put back when no tick is due: a reference bound from `state` while taking would keep
    /// the payload shared, and `takeFullFeature()` would copy it.
    private mutating func takeFullFeatureForTick() -> FullFeatureStorage? {
        guard let storage = takeFullFeature() else { return nil }
        switch storage.value.logout {
        case .none, .draining: return storage
        case .requested, .done:
            store(storage)
            return nil
        }
    }

    private mutating func keepAliveTick(now: NIODeadline) {
        guard let storage = takeFullFeatureForTick() else { return }
        guard var keepAlive = storage.value.keepAlive else {
            store(storage)
            return
        }
        let onTick = keepAlive.tick(now: now, lastReceive: lastReceive)
        storage.value.keepAlive = keepAlive
        switch onTick {
        case .wait:
            break
        case .sendPing:
            var out = ISCSIPDU.NOPOut()
            out.immediate = true
            out.initiatorTaskTag = Self.pingITT
            out.targetTransferTag = reservedTaskTag
            out.cmdSN = storage.value.window.immediateCmdSN
            out.expStatSN = storage.value.window.expStatSN
            emit(.send(OutboundPDU(header: out.pdu.header)))
            emit(.flush)
        case .timedOut:
            counters.timeoutErrors &+= 1
            store(storage)
            logger.error("NOP-Out ping timed out, dropping connection")
            fail(.timeout("NOP-Out ping"))
            return
        }
        store(storage)
        emit(.armTimer(.keepAlive, keepAlive.tickInterval))
    }

    private mutating func commandTimeoutTick(now: NIODeadline) {
        guard let storage = takeFullFeatureForTick() else { return }
        guard let ladder = storage.value.ladder else {
            store(storage)
            return
        }
        do throws(ISCSISessionError) {
            if ladder.inFlight != nil {
                if let function = ladder.expiredFunction(now: now) {
                    logger.warning("task management function timed out", metadata: ["iscsi.tmf": "\(function.step)"])
                    try escalate(victim: function.victim, lun: function.lun, &storage.value, now: now)
                }
            } else if let (itt, task) = Self.oldestTask(storage.value.tasks), ladder.commandExpired(sentAt: task.sentAt, now: now) {
                counters.timeoutErrors &+= 1
                logger.warning(
                    "command timed out",
                    metadata: ["iscsi.itt": "0x\(String(itt, radix: 16))", "scsi.cdb": "\(task.original.command.cdb)"])
                try escalate(victim: itt, lun: task.lun, &storage.value, now: now)
            }
        } catch {
            store(storage)
            fail(error)
            return
        }
        store(storage)
        emit(.armTimer(.commandTimeout, ladder.tickInterval))
    }

    private static func oldestTask(_ tasks: TaskTable<SCSITask>) -> (UInt32, SCSITask)? {
        var oldest: (UInt32, SCSITask)?
        tasks.forEach { itt, task in
            if oldest == nil || task.sentAt < oldest!.1.sentAt { oldest = (itt, task) }
        }
        return oldest
    }

    /// Takes the ladder's next step for the command `victim`: ABORT TASK, LOGICAL UNIT RESET, then dropping
    /// the connection (throws: session recovery re-issues everything).
    private mutating func escalate(victim: UInt32, lun: UInt64, _ ff: inout FullFeature, now: NIODeadline) throws(ISCSISessionError) {
        guard let step = ff.ladder?.escalate(victim: victim, lun: lun, now: now) else { return }
        let function: ISCSIPDU.TaskManagementFunction
        switch step {
        case .abortTask: function = .abortTask
        case .logicalUnitReset: function = .logicalUnitReset
        case .connectionRecovery:
            if let slot = ff.tasks.slot(for: victim) { ff.tasks.modify(slot: slot) { $0.original.timeoutRecoveries += 1 } }
            logger.error("command still unanswered after ABORT TASK and LOGICAL UNIT RESET, dropping the connection")
            throw .timeout("command (after ABORT TASK and LOGICAL UNIT RESET)")
        }
        var request = ISCSIPDU.TaskManagementRequest()
        request.immediate = true
        request.function = function
        request.lun = lun
        request.initiatorTaskTag = Self.taskManagementITT
        request.cmdSN = ff.window.immediateCmdSN
        request.expStatSN = ff.window.expStatSN
        if step == .abortTask, let slot = ff.tasks.slot(for: victim), let task = ff.tasks[slot: slot] {
            // RFC 7143 §11.5.2, §11.5.3: the task's ITT and CmdSN.
            request.referencedTaskTag = victim
            request.refCmdSN = task.cmdSN
        }
        logger.warning("sending task management function", metadata: ["iscsi.tmf": "\(step)", "scsi.lun": "\(lun)"])
        emit(.send(OutboundPDU(header: request.pdu.header)))
        emit(.flush)
    }

    /// RFC 7143 §11.6.1: 0 function complete, 1 task does not exist: the aborted (or reset) tasks are gone
    /// at the target and are re-issued here; anything else escalates at once.
    mutating func receiveTaskManagementResponse(
        _ response: ISCSIPDU.TaskManagementResponse, _ ff: inout FullFeature, now: NIODeadline
    ) throws(ISCSISessionError) {
        let onResponse = response.initiatorTaskTag == Self.taskManagementITT ? ff.ladder?.receiveResponse(response.response) : nil
        let function: CommandTimeoutLadder.Function
        switch onResponse {
        case nil, .unsolicited?:
            logger.debug("unsolicited task management response ignored")
            return
        case .refused(let refused)?:
            logger.warning("task management function refused", metadata: ["iscsi.tmf": "\(refused.step)", "iscsi.response": "\(response.response)"])
            try escalate(victim: refused.victim, lun: refused.lun, &ff, now: now)
            return
        case .completed(let completed)?:
            function = completed
        }
        var reissue: [SCSITask] = []
        switch function.step {
        case .abortTask:
            if let slot = ff.tasks.slot(for: function.victim), let task = ff.tasks.remove(slot: slot) { reissue.append(task) }
        case .logicalUnitReset:
            // RFC 7143 §11.5.1 / SAM: a LU reset aborts every task of the LU.
            reissue = ff.tasks.removeAll { $0.lun == function.lun }
        case .connectionRecovery:
            break
        }
        reissue.sort { $0.sequence < $1.sequence }
        for task in reissue.reversed() { ff.pending.prepend(task.original) }
        if !reissue.isEmpty {
            logger.notice("re-issuing commands after \(function.step)", metadata: ["count": "\(reissue.count)"])
        }
    }
}
