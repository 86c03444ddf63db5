/// Status-Class and Status-Detail of a Login Response (RFC 7143 §11.13.5).
public struct LoginStatus: Sendable, Hashable, CustomStringConvertible {
    public var statusClass: UInt8
    public var statusDetail: UInt8

    public init(statusClass: UInt8, statusDetail: UInt8) {
        self.statusClass = statusClass
        self.statusDetail = statusDetail
    }

    public init(code: UInt16) {
        self.init(statusClass: UInt8(code >> 8), statusDetail: UInt8(code & 0xff))
    }

    /// The two bytes as one code, e.g. 0x0201.
    public var code: UInt16 { UInt16(statusClass) << 8 | UInt16(statusDetail) }

    public static let success = LoginStatus(code: 0x0000)
    public static let targetMovedTemporarily = LoginStatus(code: 0x0101)
    public static let targetMovedPermanently = LoginStatus(code: 0x0102)
    public static let initiatorError = LoginStatus(code: 0x0200)
    public static let authenticationFailure = LoginStatus(code: 0x0201)
    public static let authorizationFailure = LoginStatus(code: 0x0202)
    public static let notFound = LoginStatus(code: 0x0203)
    public static let targetRemoved = LoginStatus(code: 0x0204)
    public static let unsupportedVersion = LoginStatus(code: 0x0205)
    public static let tooManyConnections = LoginStatus(code: 0x0206)
    public static let missingParameter = LoginStatus(code: 0x0207)
    public static let cannotIncludeInSession = LoginStatus(code: 0x0208)
    public static let sessionTypeNotSupported = LoginStatus(code: 0x0209)
    public static let sessionDoesNotExist = LoginStatus(code: 0x020a)
    public static let invalidDuringLogin = LoginStatus(code: 0x020b)
    public static let targetError = LoginStatus(code: 0x0300)
    public static let serviceUnavailable = LoginStatus(code: 0x0301)
    public static let outOfResources = LoginStatus(code: 0x0302)

    /// RFC 7143 §11.13.5: Status-Class 3 (target error) "The initiator may retry the same Login Request
    /// later"; class 2 "should not be tried again".
    public var isRetryable: Bool { statusClass == 3 }

    /// A human-readable explanation (§11.13.5 table).
    public var message: String {
        switch code {
        case 0x0000: return "login is proceeding"
        case 0x0101: return "target moved temporarily"
        case 0x0102: return "target moved permanently"
        case 0x0200: return "initiator error"
        case 0x0201: return "authentication failed: the initiator could not be authenticated, or target authentication is not supported"
        case 0x0202: return "authorization failure: the initiator is not allowed access to this target"
        case 0x0203: return "target not found at this address"
        case 0x0204: return "target removed, no forwarding address"
        case 0x0205: return "unsupported iSCSI version"
        case 0x0206: return "too many connections on this session"
        case 0x0207: return "missing parameter (e.g. InitiatorName or TargetName)"
        case 0x0208: return "target cannot include this connection in the session"
        case 0x0209: return "session type not supported by the target or not for this initiator"
        case 0x020a: return "session does not exist (attempt to add a connection to a non-existent session)"
        case 0x020b: return "invalid request type during login"
        case 0x0300: return "target hardware or software error"
        case 0x0301: return "iSCSI service or target currently unavailable"
        case 0x0302: return "target is out of resources"
        default:
            switch statusClass {
            case 1: return "redirection (unknown detail)"
            case 2: return "initiator error (unknown detail)"
            case 3: return "target error (unknown detail)"
            default: return "unknown status class"
            }
        }
    }

    public var description: String {
        "0x" + String(code, radix: 16).leftPadded(to: 4) + " (" + message + ")"
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// Why a login failed. Messages never contain CHAP secrets or responses.
public struct LoginError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// The target answered with a non-zero Status-Class other than redirection (§11.13.5).
        case rejectedByTarget(LoginStatus)
        /// The target refused the offered CHAP algorithms (CHAP_A=Reject, or a value not offered), or
        /// failed the authentication after a non-MD5 algorithm was chosen. Restart the login on a new
        /// connection with `LoginConfiguration.chapAlgorithms = [.md5]` (see `retryCHAPAlgorithms`).
        case chapAlgorithmRejected
        /// The target does not accept any authentication method we offered, or wants authentication
        /// while no CHAP credentials are configured.
        case authenticationMethodRejected
        /// Mutual CHAP: the target's CHAP_N/CHAP_R did not verify, or it did not send them.
        case targetAuthenticationFailed
        /// The target sent back our own CHAP challenge (RFC 7143 §9.2.1 reflection attack).
        case chapChallengeReflected
        /// Mutual CHAP configured with the same secret in both directions (RFC 7143 §9.2.1).
        case identicalCHAPSecrets
        /// The configuration is unusable (message says why).
        case invalidConfiguration
        /// The target broke a login rule (§6, §11.13, §13); `key` names the key when there is one.
        case protocolViolation
        /// A negotiation ended with a value the initiator cannot run with (e.g. a required digest refused).
        case negotiationFailed
        /// A text data segment could not be decoded.
        case malformedText
    }

    public var kind: Kind
    /// The text key involved, if any.
    public var key: String?
    public var message: String

    public init(_ kind: Kind, key: String? = nil, _ message: String) {
        self.kind = kind
        self.key = key
        self.message = message
    }

    /// For `.chapAlgorithmRejected`, the algorithms to retry with ([.md5], which RFC 7143 §12.1.3 requires
    /// every target to implement).
    public var retryCHAPAlgorithms: [CHAPAlgorithm]? {
        kind == .chapAlgorithmRejected ? [.md5] : nil
    }

    /// A failure that trying again with the same configuration cannot fix: the target refused the login
    /// with an initiator error (Status-Class 2, which RFC 7143 §11.13.5 says "should not be tried again":
    /// authentication or authorization failed, target not found or removed), or the credentials or
    /// configuration do not work (mutual CHAP failed, no method in common, identical secrets).
    public var isPermanent: Bool {
        switch kind {
        case .rejectedByTarget(let status): return status.statusClass == 2
        case .authenticationMethodRejected, .targetAuthenticationFailed, .chapChallengeReflected,
             .identicalCHAPSecrets, .invalidConfiguration, .negotiationFailed:
            return true
        case .chapAlgorithmRejected, .protocolViolation, .malformedText:
            return false
        }
    }

    /// The target's login status, for `.rejectedByTarget`.
    public var status: LoginStatus? {
        if case .rejectedByTarget(let status) = kind { return status }
        return nil
    }

    public var description: String {
        if let key { return "iSCSI login failed: \(message) [key \(key)]" }
        return "iSCSI login failed: \(message)"
    }

    static func violation(_ key: String?, _ message: String) -> LoginError {
        LoginError(.protocolViolation, key: key, message)
    }
}
