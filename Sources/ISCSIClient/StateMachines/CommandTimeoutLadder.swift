import NIOCore

/// Per-command timeouts on one connection (RFC 7143 §7.11 SCSI timeouts, §11.5 task management): a
/// command unanswered for `commandTimeout` gets ABORT TASK, then LOGICAL UNIT RESET, then its connection
/// is dropped (`TimeoutEscalation`); each task management function has `taskManagementTimeout` to answer.
/// One function at a time. Pure: the caller ticks it and reports answers and completions.
struct CommandTimeoutLadder {
    /// A task management function sent for a timed-out command.
    struct Function: Equatable {
        var step: TimeoutEscalation.Step
        var sentAt: NIODeadline
        /// The timed-out command's ITT and LUN.
        var victim: UInt32
        var lun: UInt64
    }

    let commandTimeout: TimeAmount
    let taskManagementTimeout: TimeAmount
    private var escalation = TimeoutEscalation()
    private(set) var inFlight: Function?

    init(commandTimeout: TimeAmount, taskManagementTimeout: TimeAmount) {
        self.commandTimeout = commandTimeout
        self.taskManagementTimeout = taskManagementTimeout
    }

    /// How often to look: a quarter of the shorter of the two timeouts.
    var tickInterval: TimeAmount { .tickInterval(commandTimeout, taskManagementTimeout, parts: 4) }

    /// The function in flight that has not been answered in time, if any.
    func expiredFunction(now: NIODeadline) -> Function? {
        guard let function = inFlight, now - function.sentAt > taskManagementTimeout else { return nil }
        return function
    }

    /// Whether a command sent at `sentAt` has timed out (only asked while no function is in flight).
    func commandExpired(sentAt: NIODeadline, now: NIODeadline) -> Bool { now - sentAt > commandTimeout }

    /// The next step for the command `victim`: a function to send (now in flight), or the connection.
    mutating func escalate(victim: UInt32, lun: UInt64, now: NIODeadline) -> TimeoutEscalation.Step {
        let step = escalation.escalate()
        switch step {
        case .abortTask, .logicalUnitReset:
            inFlight = Function(step: step, sentAt: now, victim: victim, lun: lun)
        case .connectionRecovery:
            inFlight = nil
        }
        return step
    }

    enum OnResponse: Equatable {
        /// No function is in flight: a stray response, ignored.
        case unsolicited
        /// RFC 7143 §11.6.1: 0 function complete, 1 task does not exist: the function's tasks are gone at
        /// the target.
        case completed(Function)
        /// Any other response: the ladder's next step is due at once.
        case refused(Function)
    }

    mutating func receiveResponse(_ response: UInt8) -> OnResponse {
        guard let function = inFlight else { return .unsolicited }
        inFlight = nil
        return response == 0 || response == 1 ? .completed(function) : .refused(function)
    }

    /// A command completed: with no function in flight, the next timeout starts over at ABORT TASK.
    mutating func commandCompleted() {
        if inFlight == nil { escalation.reset() }
    }
}
