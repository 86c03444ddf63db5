/// Exit statuses, iscsiadm's where scripts look at them (open-iscsi include/iscsi_err.h). The control
/// protocol carries them as numbers, so a CLI and a daemon of different versions agree.
enum ExitStatus: Int32, Sendable, Codable {
    case success = 0
    /// ISCSI_ERR: anything else.
    case failure = 1
    /// ISCSI_ERR_IDBM: the node records could not be read.
    case recordDatabase = 6
    /// ISCSI_ERR_INVAL: a malformed request.
    case invalidRequest = 7
    /// ISCSI_ERR_SESS_EXISTS: nothing new was logged in, a session was already there.
    case sessionExists = 15
    /// ISCSI_ERR_ISCSID_NOTCONN: the daemon is stopping.
    case daemonUnavailable = 20
    /// ISCSI_ERR_NO_OBJS_FOUND: no records or sessions matched.
    case noObjectsFound = 21
    /// ISCSI_ERR_LOGIN_AUTH_FAILED: iscsi-nbd returns it for every failed login (as it always has).
    case loginFailed = 24
}

/// An error that prints `iscsi-nbd: MESSAGE` and exits with a specific status.
struct ExitCodeError: Error, CustomStringConvertible {
    var status: ExitStatus
    var message: String
    var description: String { message }
}
