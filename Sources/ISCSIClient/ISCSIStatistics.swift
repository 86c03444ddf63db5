import ISCSIProtocol
import NIOCore

/// What one connection sent and received, in the terms of open-iscsi's `iscsiadm -m session -s` ("iSCSI
/// SNMP": PDUs by opcode, data octets, digest and timeout errors). The connection's handler keeps it on its
/// event loop as plain integers (no atomics, no locks: one array increment per PDU); the session adds up its
/// connections when asked.
public struct ISCSIPDUCounters: Sendable, Hashable {
    /// PDUs written, by opcode (`Opcode.rawValue`, 6 bits).
    public private(set) var sent = [UInt64](repeating: 0, count: 64)
    /// PDUs received (framed, before they were checked), by opcode.
    public private(set) var received = [UInt64](repeating: 0, count: 64)
    /// Data segment bytes written (iscsiadm's txdata_octets; headers, padding and digests not counted).
    public private(set) var txDataOctets: UInt64 = 0
    /// Data segment bytes received (rxdata_octets).
    public private(set) var rxDataOctets: UInt64 = 0
    /// PDUs whose header or data digest did not match (the connection is dropped for each).
    public internal(set) var digestErrors: UInt64 = 0
    /// Timeouts that failed something: a login, a logout, a NOP-Out ping, a command that went unanswered.
    public internal(set) var timeoutErrors: UInt64 = 0

    public init() {}

    mutating func countSent(_ opcode: Opcode, dataLength: Int) {
        sent[Int(opcode.rawValue)] &+= 1
        txDataOctets &+= UInt64(dataLength)
    }

    mutating func countReceived(_ opcode: Opcode, dataLength: Int) {
        received[Int(opcode.rawValue)] &+= 1
        rxDataOctets &+= UInt64(dataLength)
    }

    public func sent(_ opcode: Opcode) -> UInt64 { sent[Int(opcode.rawValue)] }
    public func received(_ opcode: Opcode) -> UInt64 { received[Int(opcode.rawValue)] }

    /// The sum of two connections' counters (a session's history and its current connection).
    public static func + (a: ISCSIPDUCounters, b: ISCSIPDUCounters) -> ISCSIPDUCounters {
        var sum = a
        for i in 0..<64 {
            sum.sent[i] &+= b.sent[i]
            sum.received[i] &+= b.received[i]
        }
        sum.txDataOctets &+= b.txDataOctets
        sum.rxDataOctets &+= b.rxDataOctets
        sum.digestErrors &+= b.digestErrors
        sum.timeoutErrors &+= b.timeoutErrors
        return sum
    }

    /// open-iscsi's "iSCSI SNMP" block, in its order and with its names.
    public var iscsiadmRows: [(String, UInt64)] {
        [
            ("txdata_octets", txDataOctets), ("rxdata_octets", rxDataOctets),
            ("noptx_pdus", sent(.nopOut)), ("scsicmd_pdus", sent(.scsiCommand)),
            ("tmfcmd_pdus", sent(.taskManagementRequest)), ("login_pdus", sent(.loginRequest)),
            ("text_pdus", sent(.textRequest)), ("dataout_pdus", sent(.dataOut)),
            ("logout_pdus", sent(.logoutRequest)), ("snack_pdus", sent(.snackRequest)),
            ("noprx_pdus", received(.nopIn)), ("scsirsp_pdus", received(.scsiResponse)),
            ("tmfrsp_pdus", received(.taskManagementResponse)), ("textrsp_pdus", received(.textResponse)),
            ("datain_pdus", received(.dataIn)), ("logoutrsp_pdus", received(.logoutResponse)),
            ("r2t_pdus", received(.readyToTransfer)), ("async_pdus", received(.asyncMessage)),
            ("rjt_pdus", received(.reject)),
            ("digest_err", digestErrors), ("timeout_err", timeoutErrors),
        ]
    }
}

/// The CmdSN window and queue depth of a connection in the full feature phase, as it is now. These values
/// are made only here (their memberwise initializers stay internal; tests use `@testable import`).
public struct ISCSICommandWindowSnapshot: Sendable, Hashable {
    /// Commands the initiator lets in flight at once now (lowered on TASK SET FULL / BUSY, grown back).
    public var queueDepth: Int
    /// Commands sent and not answered.
    public var outstanding: Int
    /// Commands waiting for the window or a task slot.
    public var queued: Int
    /// The next CmdSN, ExpCmdSN and MaxCmdSN (RFC 7143 §4.2.2.1).
    public var cmdSN: UInt32
    public var expCmdSN: UInt32
    public var maxCmdSN: UInt32
    /// Commands the target accepts now: MaxCmdSN - CmdSN + 1 (0 when closed).
    public var window: Int
}

/// A session's counters: those of every connection it has had, its recoveries, and where its command window
/// stands. Taken on the session's event loop (`ISCSISession.statistics()`).
public struct ISCSISessionStatistics: Sendable, Hashable {
    public var pdus: ISCSIPDUCounters
    /// Recoveries completed: lost connections replaced by a new login (RFC 7143 §7.1.4.4).
    public var recoveries: Int
    /// Logins attempted while recovering, successful or not.
    public var reloginAttempts: Int
    /// The last recovery: when the connection was lost (seconds since 1970), why, and how long it took
    /// (nil while it is still under way).
    public var lastRecovery: RecoveryRecord?
    /// Nil while no connection is in the full feature phase.
    public var window: ISCSICommandWindowSnapshot?

    public struct RecoveryRecord: Sendable, Hashable {
        public var lostAt: Double
        public var reason: String
        public var durationSeconds: Double?
    }
}

/// What a session reports as it happens, for counters that must not miss an event between two looks
/// (`ISCSISessionConfiguration.eventHandler`). Called on the session's event loop; must not block.
public enum ISCSISessionEvent: Sendable {
    /// A login failed (first login, a retry, or a re-login while recovering).
    case loginFailed(reason: LoginFailureReason)
    /// The connection was lost and recovery started.
    case recoveryStarted(reason: String)
    /// A recovery completed after this long.
    case recovered(seconds: Double)
    /// The LUN answered with another identity after a re-login: the session stopped.
    case identityMismatch
}

/// Why a login failed, in a few stable words (a metric label: no free text, never a secret).
public enum LoginFailureReason: String, Sendable, CaseIterable {
    case authentication
    case authorization
    case targetNotFound = "target_not_found"
    case targetUnavailable = "target_unavailable"
    case refused
    case timeout
    case connection
    case redirects
    case protocolError = "protocol"

    public init(_ error: any Error) {
        guard let error = error as? ISCSISessionError else {
            self = .connection
            return
        }
        switch error {
        case .login(let login):
            if let status = login.status {
                switch (status.statusClass, status.statusDetail) {
                case (2, 1): self = .authentication
                case (2, 2): self = .authorization
                case (2, 3), (2, 4): self = .targetNotFound
                case (3, _): self = .targetUnavailable
                default: self = .refused
                }
            } else {
                switch login.kind {
                case .targetAuthenticationFailed, .chapChallengeReflected, .identicalCHAPSecrets,
                     .authenticationMethodRejected, .chapAlgorithmRejected:
                    self = .authentication
                case .rejectedByTarget, .invalidConfiguration, .protocolViolation, .negotiationFailed, .malformedText:
                    self = .protocolError
                }
            }
        case .timeout: self = .timeout
        case .tooManyRedirects: self = .redirects
        case .connectionClosed: self = .connection
        default: self = .protocolError
        }
    }
}
