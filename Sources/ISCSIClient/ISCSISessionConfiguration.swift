import ISCSIProtocol
import NIOCore

/// What to connect to and what to propose. Defaults follow open-iscsi's iscsid.conf.
public struct ISCSISessionConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// Nil for a discovery session.
    public var targetName: String?
    public var initiatorName: String
    public var initiatorAlias: String?
    /// 48-bit ISID (RFC 7143 §11.12.5), random format (T = 10b) by default.
    public var isid: UInt64
    /// CHAP credentials; nil logs in with AuthMethod=None.
    public var chap: CHAPCredentials?
    /// CHAP algorithms offered, strongest first; a target that rejects them all gets a retry with MD5.
    public var chapAlgorithms: [CHAPAlgorithm]
    /// Why the authentication in effect is not what the configuration's `authmethod` said (open-iscsi's
    /// rule: CHAP whenever a password is set), for the log; never holds a secret.
    public var authNote: String?
    /// Operational keys we propose (RFC 7143 §13).
    public var proposal: SessionParameterProposal
    /// Commands in flight at most (open-iscsi node.session.queue_depth); more wait in a queue.
    public var queueDepth: Int
    public var loginTimeout: TimeAmount
    public var logoutTimeout: TimeAmount
    /// Idle time before a NOP-Out ping; nil disables pings (open-iscsi noop_out_interval).
    public var noopOutInterval: TimeAmount?
    /// Time to wait for the NOP-In answer before dropping the connection (open-iscsi noop_out_timeout).
    public var noopOutTimeout: TimeAmount
    /// Login redirects followed at most (RFC 7143 §11.13.5, Status-Class 1).
    public var maxRedirects: Int
    /// Reconnect and re-issue unanswered commands when the connection is lost (session recovery,
    /// RFC 7143 §7.1.4.4). Off: a lost connection fails everything outstanding and ends the session.
    public var recoveryEnabled: Bool
    /// How long commands wait for a recovering session before they fail (open-iscsi
    /// node.session.timeo.replacement_timeout, default 120 s). Reconnecting goes on afterwards.
    public var replacementTimeout: TimeAmount
    /// Longest pause between reconnect attempts.
    public var maxReconnectDelay: TimeAmount
    /// A command unanswered this long starts the escalation ABORT TASK → LOGICAL UNIT RESET → session
    /// recovery (`TimeoutEscalation`); nil: never (the replacement timeout still bounds a dead session).
    public var commandTimeout: TimeAmount?
    /// How long each task management function may take before the next step (open-iscsi
    /// node.session.err_timeo.abort_timeout / lu_reset_timeout).
    public var taskManagementTimeout: TimeAmount
    /// A command that has timed out through the whole ladder (its connection dropped for it) this many
    /// times fails with a timeout instead of being re-issued again: a target that never answers one command
    /// cannot hold it (and its NBD client) for ever. The SCSI midlayer gives up after its retries the same way.
    public var maxTimeoutRecoveries = 3
    /// Busy-poll the event loop for up to this many microseconds before it sleeps (0: never), with an
    /// adaptive window (`BusyPollPolicy`). Lowers queue-depth-1 latency by keeping the thread awake
    /// between a request and its answer, at the price of CPU time spent polling.
    public var busyPollMicroseconds = 0
    /// Told about login failures, recoveries and identity mismatches as they happen (metrics); called on the
    /// session's event loop, must not block. Never given a secret.
    public var eventHandler: (@Sendable (ISCSISessionEvent) -> Void)? = nil

    public init(
        host: String,
        port: Int = 3260,
        targetName: String?,
        initiatorName: String,
        initiatorAlias: String? = nil,
        isid: UInt64 = ISCSISessionConfiguration.randomISID(),
        chap: CHAPCredentials? = nil,
        chapAlgorithms: [CHAPAlgorithm] = [.md5],
        proposal: SessionParameterProposal = SessionParameterProposal(),
        queueDepth: Int = 128,
        loginTimeout: TimeAmount = .seconds(15),
        logoutTimeout: TimeAmount = .seconds(15),
        noopOutInterval: TimeAmount? = .seconds(5),
        noopOutTimeout: TimeAmount = .seconds(5),
        maxRedirects: Int = 5,
        recoveryEnabled: Bool = true,
        replacementTimeout: TimeAmount = .seconds(120),
        maxReconnectDelay: TimeAmount = .seconds(4),
        commandTimeout: TimeAmount? = .seconds(30),
        taskManagementTimeout: TimeAmount = .seconds(15)
    ) {
        self.host = host
        self.port = port
        self.targetName = targetName
        self.initiatorName = initiatorName
        self.initiatorAlias = initiatorAlias
        self.isid = isid
        self.chap = chap
        self.chapAlgorithms = chapAlgorithms
        self.proposal = proposal
        self.queueDepth = queueDepth
        self.loginTimeout = loginTimeout
        self.logoutTimeout = logoutTimeout
        self.noopOutInterval = noopOutInterval
        self.noopOutTimeout = noopOutTimeout
        self.maxRedirects = maxRedirects
        self.recoveryEnabled = recoveryEnabled
        self.replacementTimeout = replacementTimeout
        self.maxReconnectDelay = maxReconnectDelay
        self.commandTimeout = commandTimeout
        self.taskManagementTimeout = taskManagementTimeout
    }

    /// RFC 7143 §11.12.5 "Random" format: T = 10b, A reserved, B and C a random 24-bit value, D a
    /// random 16-bit qualifier.
    public static func randomISID() -> UInt64 {
        let random = UInt64.random(in: 0..<(1 << 24))
        let qualifier = UInt64.random(in: 0..<(1 << 16))
        return (0x80 << 40) | (random << 16) | qualifier
    }

    /// The authentication a login uses, for status output: "None", "CHAP" or "CHAP (mutual)".
    public var authSummary: String {
        guard let chap else { return "None" }
        return chap.mutual == nil ? "CHAP" : "CHAP (mutual)"
    }

    /// The login state machine's configuration.
    public var loginConfiguration: LoginConfiguration {
        LoginConfiguration(
            initiatorName: initiatorName, initiatorAlias: initiatorAlias, targetName: targetName,
            chap: chap, chapAlgorithms: chapAlgorithms, proposal: proposal
        )
    }
}
