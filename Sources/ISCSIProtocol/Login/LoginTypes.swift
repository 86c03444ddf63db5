import NIOCore

/// A login stage code as carried in the CSG/NSG fields (RFC 7143 §11.12.3): 0 SecurityNegotiation,
/// 1 LoginOperationalNegotiation, 3 FullFeaturePhase; 2 is reserved. An open struct so that any wire value
/// can be represented; the state machine rejects the reserved one.
public struct LoginStage: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt8

    public init(rawValue: UInt8) { self.rawValue = rawValue & 0x03 }

    public static let securityNegotiation = LoginStage(rawValue: 0)
    public static let loginOperationalNegotiation = LoginStage(rawValue: 1)
    public static let fullFeaturePhase = LoginStage(rawValue: 3)

    public var description: String {
        switch rawValue {
        case 0: "SecurityNegotiation"
        case 1: "LoginOperationalNegotiation"
        case 3: "FullFeaturePhase"
        default: "reserved(\(rawValue))"
        }
    }
}

/// What a login needs to know.
public struct LoginConfiguration: Sendable {
    public var initiatorName: String
    public var initiatorAlias: String?
    /// nil for a discovery session.
    public var targetName: String?
    public var sessionType: SessionType
    /// nil: offer AuthMethod=None only.
    public var chap: CHAPCredentials?
    /// CHAP algorithms allowed, offered strongest first (default MD5 only). RFC 7143 §12.1.3 requires
    /// initiators to always offer MD5; leave `.md5` in the list unless the target is known to support more.
    public var chapAlgorithms: [CHAPAlgorithm]
    public var proposal: SessionParameterProposal
    public var textLimits: TextLimits
    /// CHAP challenges this initiator sent on other connections recently (see
    /// `LoginStateMachine.sentCHAPChallenge`). A target challenge equal to one of them is a reflection attack
    /// (RFC 7143 §9.2.1 example: a rogue target replays our challenge from connection 1 on connection 2 to
    /// obtain the answer) and fails the login with `.chapChallengeReflected`.
    public var previouslySentCHAPChallenges: [[UInt8]] = []

    public init(initiatorName: String, initiatorAlias: String? = nil, targetName: String?,
                sessionType: SessionType? = nil, chap: CHAPCredentials? = nil,
                chapAlgorithms: [CHAPAlgorithm] = [.md5], proposal: SessionParameterProposal = .init(),
                textLimits: TextLimits = .default) {
        self.initiatorName = initiatorName
        self.initiatorAlias = initiatorAlias
        self.targetName = targetName
        self.sessionType = sessionType ?? (targetName == nil ? .discovery : .normal)
        self.chap = chap
        self.chapAlgorithms = chapAlgorithms
        self.proposal = proposal
        self.textLimits = textLimits
    }
}

/// One Login Request for the client to send: the header bits and the keys for the data segment
/// (`keys.encoded()`). The client fills ISID, TSIH, CID, CmdSN, ExpStatSN, versions and the ITT.
public struct LoginRequestStep: Sendable, Hashable, CustomStringConvertible {
    public var csg: LoginStage
    public var nsg: LoginStage
    public var transit: Bool
    public var `continue`: Bool
    public var keys: TextKeyValues

    public init(csg: LoginStage, nsg: LoginStage, transit: Bool, continue: Bool = false, keys: TextKeyValues) {
        self.csg = csg
        self.nsg = nsg
        self.transit = transit
        self.continue = `continue`
        self.keys = keys
    }

    /// NSG is only meaningful with T=1; the wire field should be 0 otherwise (RFC 7143 §11.12.3).
    public var wireNSG: LoginStage { transit ? nsg : LoginStage(rawValue: 0) }

    /// `description` redacts CHAP_R (see `TextKeyValues`).
    public var description: String {
        "LoginRequest(CSG=\(csg), NSG=\(nsg), T=\(transit ? 1 : 0), C=\(self.continue ? 1 : 0), keys=\(keys))"
    }
}

/// The parts of a Login Response the state machine needs; the client fills it from the PDU.
public struct LoginResponseSummary: Sendable {
    public var statusClass: UInt8
    public var statusDetail: UInt8
    public var transit: Bool
    public var `continue`: Bool
    public var csg: LoginStage
    public var nsg: LoginStage
    public var tsih: UInt16
    /// The raw data segment (without padding). Key=value pairs may span PDUs when `continue` is set
    /// (RFC 7143 §6.1), so decoding happens once the whole text has arrived.
    public var text: ByteBuffer

    public init(statusClass: UInt8, statusDetail: UInt8, transit: Bool, continue: Bool, csg: LoginStage,
                nsg: LoginStage, tsih: UInt16, text: ByteBuffer) {
        self.statusClass = statusClass
        self.statusDetail = statusDetail
        self.transit = transit
        self.continue = `continue`
        self.csg = csg
        self.nsg = nsg
        self.tsih = tsih
        self.text = text
    }

    /// Convenience for a response whose keys are already known (tests, fake targets).
    public init(statusClass: UInt8 = 0, statusDetail: UInt8 = 0, transit: Bool, continue: Bool = false,
                csg: LoginStage, nsg: LoginStage, tsih: UInt16 = 0, keys: TextKeyValues) {
        self.init(statusClass: statusClass, statusDetail: statusDetail, transit: transit, continue: `continue`,
                  csg: csg, nsg: nsg, tsih: tsih, text: keys.encoded())
    }

    public var status: LoginStatus { LoginStatus(statusClass: statusClass, statusDetail: statusDetail) }
}

/// What the client does next.
public enum LoginAction: Sendable, Hashable {
    /// Send this Login Request.
    case send(LoginRequestStep)
    /// The target accepted the Final-Response: the connection is in Full Feature Phase.
    case complete(OperationalParameters, tsih: UInt16)
    /// Status-Class 1: close this connection and log in again at `address` (`host[:port]` as given by the
    /// target in TargetAddress; see `TargetPortalAddress(parsing:)`). `temporary` is false for 0x0102.
    case redirect(address: String, temporary: Bool)
}
