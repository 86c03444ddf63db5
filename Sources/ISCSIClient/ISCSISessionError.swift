import ISCSIProtocol

/// Session-level failures: a command's future fails with one of these when it could not be delivered or
/// answered. SCSI statuses (CHECK CONDITION ...) are not errors: they come back in `SCSICommandResult`.
public enum ISCSISessionError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The TCP connection closed or failed before the task completed.
    case connectionClosed
    /// The target broke the protocol; the connection was dropped.
    case protocolViolation(String)
    /// A PDU could not be decoded; the connection was dropped.
    case malformedPDU(ISCSIPDUError)
    /// Login failed: refused by the target (RFC 7143 §11.13.5), authentication or negotiation failure.
    case login(LoginError)
    /// Too many login redirects.
    case tooManyRedirects
    /// The operation did not finish in time.
    case timeout(String)
    /// The target rejected the command's PDU (RFC 7143 §11.17).
    case rejected(reason: UInt8)
    /// The SCSI Response had Response != 0 (RFC 7143 §11.4.3: target failure).
    case targetFailure(response: UInt8)
    /// The session is logging out or closed; no new commands are accepted.
    case sessionClosed
    /// The command cannot be expressed (e.g. transfer too long).
    case invalidCommand(String)
    /// The target asked the session to end (Async Message).
    case targetRequestedLogout
    /// The session could not be recovered within the replacement timeout (open-iscsi
    /// node.session.timeo.replacement_timeout); queued and new commands fail until it comes back.
    case replacementTimeout(seconds: Int64)
    /// After a re-login the LUN is not the one first opened (VPD 83h/80h or geometry differ): the session
    /// stopped for good so that nothing is written to a different LUN.
    case identityMismatch(String)

    public var description: String {
        switch self {
        case .connectionClosed: "iSCSI connection closed"
        case .protocolViolation(let s): "iSCSI protocol violation by target: \(s)"
        case .malformedPDU(let e): "malformed PDU from target: \(e)"
        case .login(let error): "\(error)"
        case .tooManyRedirects: "too many login redirects"
        case .timeout(let what): "timed out: \(what)"
        case .rejected(let reason): "target rejected the PDU (reason 0x\(String(reason, radix: 16)))"
        case .targetFailure(let r): "target failure (response 0x\(String(r, radix: 16)))"
        case .sessionClosed: "iSCSI session is closed"
        case .invalidCommand(let s): "invalid command: \(s)"
        case .targetRequestedLogout: "target requested logout"
        case .replacementTimeout(let s): "iSCSI session not recovered within the replacement timeout (\(s) s)"
        case .identityMismatch(let s): "LUN identity changed after re-login, session stopped: \(s)"
        }
    }
}
