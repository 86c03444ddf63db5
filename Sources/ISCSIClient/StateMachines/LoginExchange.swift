import ISCSIProtocol
import NIOCore

/// One Login Request to send: stages, T bit and text (RFC 7143 §11.12).
struct LoginStep: Sendable {
    var transit: Bool
    var currentStage: UInt8
    var nextStage: UInt8
    var text: ByteBuffer
}

/// What a login exchange asks the connection to do next.
enum LoginResult: Sendable {
    case send(LoginStep)
    /// Full feature phase reached (or, for discovery, the login is complete).
    case complete(SessionParameters, tsih: UInt16)
    /// RFC 7143 §11.13.5 Status-Class 1: log in at another address.
    case redirect(host: String, port: Int)
}

/// Drives the text part of a login; the connection handler owns PDU numbering (ITT, CmdSN, StatSN).
protocol LoginExchange: Sendable {
    mutating func start() -> LoginStep
    mutating func receive(_ response: ISCSIPDU.LoginResponse) throws(ISCSISessionError) -> LoginResult
}

/// Security-free login straight into operational negotiation (CSG=1 → NSG=3), proposing
/// `configuration.proposal`. Used until the login branch's LoginStateMachine (CHAP, full negotiation)
/// is wired in.
/// TODO(pdu-client): replace with ISCSIProtocol.LoginStateMachine.
struct BasicLogin: LoginExchange {
    let configuration: ISCSISessionConfiguration
    private var sentKeys = false

    init(configuration: ISCSISessionConfiguration) { self.configuration = configuration }

    private var discovery: Bool { configuration.targetName == nil }

    private func proposalKeys() -> BasicTextKeys {
        let p = configuration.proposal
        var keys: [(String, String)] = [("InitiatorName", configuration.initiatorName)]
        if let alias = configuration.initiatorAlias { keys.append(("InitiatorAlias", alias)) }
        if let target = configuration.targetName {
            keys.append(("TargetName", target))
            keys.append(("SessionType", "Normal"))
        } else {
            keys.append(("SessionType", "Discovery"))
        }
        keys.append(("HeaderDigest", p.digests.header ? "CRC32C,None" : "None"))
        keys.append(("DataDigest", p.digests.data ? "CRC32C,None" : "None"))
        keys.append(("MaxRecvDataSegmentLength", String(p.initiatorMaxRecvDataSegmentLength)))
        if !discovery {
            keys += [
                ("MaxConnections", "1"),
                ("InitialR2T", p.initialR2T ? "Yes" : "No"),
                ("ImmediateData", p.immediateData ? "Yes" : "No"),
                ("MaxBurstLength", String(p.maxBurstLength)),
                ("FirstBurstLength", String(p.firstBurstLength)),
                ("MaxOutstandingR2T", String(p.maxOutstandingR2T)),
                ("DataPDUInOrder", p.dataPDUInOrder ? "Yes" : "No"),
                ("DataSequenceInOrder", p.dataSequenceInOrder ? "Yes" : "No"),
            ]
        }
        keys += [
            ("DefaultTime2Wait", String(p.defaultTime2Wait)),
            ("DefaultTime2Retain", String(p.defaultTime2Retain)),
            ("ErrorRecoveryLevel", String(p.errorRecoveryLevel)),
        ]
        return BasicTextKeys(keys)
    }

    mutating func start() -> LoginStep {
        sentKeys = true
        return LoginStep(transit: true, currentStage: 1, nextStage: 3, text: proposalKeys().encode())
    }

    mutating func receive(_ response: ISCSIPDU.LoginResponse) throws(ISCSISessionError) -> LoginResult {
        let keys = try BasicTextKeys.parse(response.data)
        switch response.statusClass {
        case 0: break
        case 1:
            guard let address = keys["TargetAddress"], let (host, port) = Self.parseTargetAddress(address) else {
                throw .loginFailed(statusClass: 1, statusDetail: response.statusDetail, reason: "redirect without TargetAddress")
            }
            return .redirect(host: host, port: port)
        default:
            throw .loginFailed(statusClass: response.statusClass, statusDetail: response.statusDetail, reason: "target refused login")
        }
        guard response.transit, response.nextStage == 3 else {
            // The target wants another round in this stage: answer with no new keys.
            return .send(LoginStep(transit: true, currentStage: 1, nextStage: 3, text: ByteBuffer()))
        }
        return .complete(try negotiated(from: keys), tsih: response.tsih)
    }

    /// Results per RFC 7143 §13: the target's answer carries the negotiated value.
    private func negotiated(from keys: BasicTextKeys) throws(ISCSISessionError) -> SessionParameters {
        var result = SessionParameters()
        let ours = configuration.proposal
        result.initiatorMaxRecvDataSegmentLength = ours.initiatorMaxRecvDataSegmentLength
        func number(_ key: String, _ fallback: Int) throws(ISCSISessionError) -> Int {
            guard let text = keys[key] else { return fallback }
            guard let v = Int(text), v >= 0 else { throw .loginFailed(statusClass: 0, statusDetail: 0, reason: "bad \(key)") }
            return v
        }
        func bool(_ key: String, _ fallback: Bool) -> Bool {
            guard let text = keys[key] else { return fallback }
            return text == "Yes"
        }
        result.digests = DigestSettings(header: keys["HeaderDigest"] == "CRC32C", data: keys["DataDigest"] == "CRC32C")
        // RFC 7143 §13.12: declarative; 8192 when the target does not declare it.
        result.targetMaxRecvDataSegmentLength = try number("MaxRecvDataSegmentLength", 8192)
        result.maxBurstLength = try number("MaxBurstLength", min(ours.maxBurstLength, 262_144))
        result.firstBurstLength = try number("FirstBurstLength", min(ours.firstBurstLength, 65_536))
        result.initialR2T = bool("InitialR2T", true)
        result.immediateData = bool("ImmediateData", ours.immediateData)
        result.maxOutstandingR2T = try number("MaxOutstandingR2T", 1)
        result.dataPDUInOrder = bool("DataPDUInOrder", true)
        result.dataSequenceInOrder = bool("DataSequenceInOrder", true)
        result.errorRecoveryLevel = try number("ErrorRecoveryLevel", 0)
        result.defaultTime2Wait = try number("DefaultTime2Wait", 2)
        result.defaultTime2Retain = try number("DefaultTime2Retain", 20)
        let limits = (512...16_777_215)
        guard limits.contains(result.targetMaxRecvDataSegmentLength), limits.contains(result.maxBurstLength),
            limits.contains(result.firstBurstLength), result.firstBurstLength <= result.maxBurstLength,
            result.maxOutstandingR2T >= 1
        else {
            throw .loginFailed(statusClass: 0, statusDetail: 0, reason: "negotiated values out of range")
        }
        return result
    }

    /// RFC 7143 §13.8: `domainname[:port][,portal-group-tag]`, IPv6 in brackets.
    static func parseTargetAddress(_ text: String) -> (String, Int)? {
        var address = Substring(text)
        if let comma = address.lastIndex(of: ",") { address = address[..<comma] }
        if address.hasPrefix("[") {
            guard let close = address.firstIndex(of: "]") else { return nil }
            let host = String(address[address.index(after: address.startIndex)..<close])
            let rest = address[address.index(after: close)...]
            if rest.isEmpty { return (host, 3260) }
            guard rest.hasPrefix(":"), let port = Int(rest.dropFirst()), (1...65535).contains(port) else { return nil }
            return (host, port)
        }
        let parts = address.split(separator: ":", omittingEmptySubsequences: false)
        if parts.count == 1 { return (String(parts[0]), 3260) }
        guard parts.count == 2, let port = Int(parts[1]), (1...65535).contains(port), !parts[0].isEmpty else { return nil }
        return (String(parts[0]), port)
    }
}
