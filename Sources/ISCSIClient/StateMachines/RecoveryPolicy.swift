import SCSI
import NIOCore

/// When to try reconnecting after a lost connection (pure; tested on its own).
///
/// RFC 7143 §13.15 DefaultTime2Wait: "the minimum time, in seconds, to wait before attempting an explicit/
/// implicit logout or an active task reassignment after an unexpected connection termination". The first
/// attempt waits Time2Wait (the negotiated DefaultTime2Wait, or the Time2Wait of the target's Async Message,
/// RFC 7143 §11.9.1); later attempts back off exponentially from `step`, capped at `maximum`.
public struct ReconnectBackoff: Sendable, Hashable {
    public var time2Wait: TimeAmount
    public var step: TimeAmount
    public var maximum: TimeAmount

    public init(time2Wait: TimeAmount = .seconds(2), step: TimeAmount = .milliseconds(250), maximum: TimeAmount = .seconds(4)) {
        self.time2Wait = max(time2Wait, .zero)
        self.step = max(step, .milliseconds(1))
        self.maximum = max(maximum, self.step)
    }

    /// The delay before attempt `n` (0 = the first attempt after the loss).
    public func delay(beforeAttempt n: Int) -> TimeAmount {
        if n <= 0 { return time2Wait }
        let shift = min(n - 1, 30)
        let grown = step.nanoseconds.multipliedReportingOverflow(by: Int64(1) << shift)
        if grown.overflow { return maximum }
        return min(.nanoseconds(grown.partialValue), maximum)
    }
}

/// How the session logs in again after losing its connection.
public enum SessionRecoveryLogin: Sendable, Hashable {
    /// RFC 7143 §6.3.5: same ISID, TSIH 0: the target implicitly logs out the old session (terminating its
    /// tasks) and a new session takes its place. The only form open at ErrorRecoveryLevel 0 (§7.1.5: level 0
    /// is session recovery, §7.1.4.4), and the only one for a session whose target restarted.
    case sessionReinstatement(isid: UInt64)
    /// RFC 7143 §6.3.4: same ISID, TSIH and CID: the target logs out the old connection. Needs
    /// ErrorRecoveryLevel 2 for task reassignment; below that the old tasks are terminated anyway, so this
    /// client never uses it (listed for the decision's completeness).
    case connectionReinstatement(isid: UInt64, tsih: UInt16, cid: UInt16)

    /// The login to use after a connection loss. At ERL 0 and 1 tasks cannot be reassigned (§6.3.4), so the
    /// session is reinstated and every unanswered command is re-issued by the initiator.
    public static func decide(errorRecoveryLevel: Int, isid: UInt64, tsih: UInt16, cid: UInt16 = 0) -> SessionRecoveryLogin {
        // We negotiate ErrorRecoveryLevel=0 (and never implement task reassignment), so even a target that
        // somehow answered 2 gets session reinstatement: correct at every level (§7.14 option c).
        _ = (errorRecoveryLevel, tsih, cid)
        return .sessionReinstatement(isid: isid)
    }

    /// The TSIH the Login Request carries.
    public var loginTSIH: UInt16 {
        switch self {
        case .sessionReinstatement: 0
        case .connectionReinstatement(_, let tsih, _): tsih
        }
    }
}

/// How often the initial login is retried (open-iscsi node.session.initial_login_retry_max), and whether
/// to keep going in the background afterwards (automatic nodes; open-iscsi issue #304).
public struct LoginRetryPolicy: Sendable {
    /// Attempts after the first; nil retries forever (until `shouldContinue` says stop).
    public var retries: Int?
    public var backoff: ReconnectBackoff
    /// Asked before every retry; return false to give up (e.g. the daemon is stopping).
    public var shouldContinue: @Sendable () -> Bool

    public init(retries: Int?, backoff: ReconnectBackoff = ReconnectBackoff(time2Wait: .milliseconds(500)),
                shouldContinue: @escaping @Sendable () -> Bool = { true }) {
        self.retries = retries.map { max(0, $0) }
        self.backoff = backoff
        self.shouldContinue = shouldContinue
    }

    /// One attempt, no retry.
    public static let once = LoginRetryPolicy(retries: 0)

    /// Whether a failed login is worth retrying: transient failures (TCP refused, timeouts, target
    /// temporarily unavailable, RFC 7143 §11.13.5 status class 3) are; a refused authentication or a
    /// missing target (class 2) is not, unless the caller retries forever (the target may be fixed later).
    public static func isTransient(_ error: any Error) -> Bool {
        guard let session = error as? ISCSISessionError else { return true }
        switch session {
        case .login(let login):
            if case .rejectedByTarget(let status) = login.kind { return status.statusClass != 2 }
            switch login.kind {
            case .targetAuthenticationFailed, .authenticationMethodRejected, .invalidConfiguration,
                .identicalCHAPSecrets, .chapChallengeReflected:
                return false
            default: return true
            }
        case .invalidCommand, .identityMismatch: return false
        default: return true
        }
    }
}

/// The escalation ladder for a command that has not been answered within its timeout (RFC 7143 §7.11 SCSI
/// timeouts; open-iscsi's abort → LU reset → session recovery): ABORT TASK, then LOGICAL UNIT RESET
/// (RFC 7143 §11.5.1), then dropping the connection (session recovery, §7.1.4.4). Pure.
public struct TimeoutEscalation: Sendable, Hashable {
    public enum Step: Sendable, Hashable {
        case abortTask
        case logicalUnitReset
        case connectionRecovery
    }

    public private(set) var next: Step = .abortTask

    public init() {}

    /// The command (or the task management function sent for it) timed out again: the step to take.
    public mutating func escalate() -> Step {
        let step = next
        switch next {
        case .abortTask: next = .logicalUnitReset
        case .logicalUnitReset: next = .connectionRecovery
        case .connectionRecovery: break
        }
        return step
    }

    /// The TMF answered "function complete" / "task does not exist": the command is settled; a later timeout
    /// starts over at ABORT TASK.
    public mutating func reset() { next = .abortTask }
}

/// The queue depth actually used: halved on TASK SET FULL or BUSY (SAM-5: the target's task set is full
/// or it is busy; the command itself is retried by the block layer after a back-off), grown back by one
/// after `growAfter` GOOD completions in a row, never above the configured depth nor below 1. Pure.
public struct AdaptiveQueueDepth: Sendable, Hashable {
    public let maximum: Int
    public private(set) var current: Int
    public let growAfter: Int
    private var goodInARow = 0

    public init(maximum: Int, growAfter: Int = 64) {
        self.maximum = max(1, maximum)
        self.current = self.maximum
        self.growAfter = max(1, growAfter)
    }

    /// Records a completion's SCSI status; returns true when `current` changed.
    public mutating func record(_ status: SCSIStatus) -> Bool {
        if status == .taskSetFull || status == .busy {
            goodInARow = 0
            let lowered = max(1, current / 2)
            defer { current = lowered }
            return lowered != current
        }
        guard status == .good, current < maximum else { return false }
        goodInARow += 1
        if goodInARow >= growAfter {
            goodInARow = 0
            current += 1
            return true
        }
        return false
    }
}
