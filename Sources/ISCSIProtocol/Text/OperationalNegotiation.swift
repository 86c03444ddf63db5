/// Negotiation of the RFC 7143 §13 operational keys from the initiator's side (one login).
///
/// Usage: `initialOffer()` gives the keys of the first LoginOperationalNegotiation request; every response's
/// keys go through `process(_:stage:)`, which records answers and declarations and returns the initiator's
/// answers to keys the target offered on its own; `finish()` yields the effective `OperationalParameters`.
/// Every key is handled by its own rule (list, minimum, maximum, AND, OR, declarative) and every failure
/// names the key.
public struct OperationalNegotiation: Sendable {
    public let proposal: SessionParameterProposal
    public let sessionType: SessionType
    public private(set) var parameters: OperationalParameters
    /// Keys the initiator proposed and the target has not answered yet, with the proposed value.
    private var awaitingAnswer: [String: String] = [:]
    /// Keys concluded (answered, or offered by the target and answered by us).
    private var concluded: Set<String> = []

    public init(proposal: SessionParameterProposal, sessionType: SessionType) {
        self.proposal = proposal
        self.sessionType = sessionType
        self.parameters = OperationalParameters(sessionType: sessionType)
    }

    /// The result function of a numerical key (RFC 7143 §13 "Result function").
    enum NumericFunction { case minimum, maximum }
    /// The result function of a boolean key.
    enum BooleanFunction { case and, or }

    enum Rule {
        case digest(WritableKeyPath<OperationalParameters, ISCSIDigest>, ours: [ISCSIDigest])
        case number(WritableKeyPath<OperationalParameters, Int>, range: ClosedRange<Int>, NumericFunction, ours: Int)
        case boolean(WritableKeyPath<OperationalParameters, Bool>, BooleanFunction, ours: Bool)
        case taskReporting
    }

    static let segmentRange = 512...16_777_215
    /// RFC 7143 §13: keys whose "Irrelevant when: SessionType=Discovery" (and RFC 7144 §7.1.1 for
    /// iSCSIProtocolLevel).
    static let irrelevantForDiscovery: Set<String> = [
        "MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength",
        "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder", "TaskReporting", "iSCSIProtocolLevel",
    ]
    static let securityKeys: Set<String> = ["AuthMethod", "CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"]
    static let initiatorOnlyKeys: Set<String> = ["InitiatorName", "InitiatorAlias", "SessionType", "TargetName"]
    /// RFC 7143 §13.25: obsolete marker keys are answered with Reject, never NotUnderstood.
    static let obsoleteKeys: Set<String> = ["IFMarker", "OFMarker", "IFMarkInt", "OFMarkInt"]
    static let reservedConstants: Set<String> = [TextValue.reject, TextValue.irrelevant, TextValue.notUnderstood]

    func rule(for key: String) -> Rule? {
        let p = proposal
        switch key {
        case "HeaderDigest": return .digest(\.headerDigest, ours: p.headerDigests)
        case "DataDigest": return .digest(\.dataDigest, ours: p.dataDigests)
        case "MaxConnections": return .number(\.maxConnections, range: 1...65535, .minimum, ours: p.maxConnections)
        case "InitialR2T": return .boolean(\.initialR2T, .or, ours: p.initialR2T)
        case "ImmediateData": return .boolean(\.immediateData, .and, ours: p.immediateData)
        case "MaxBurstLength":
            return .number(\.maxBurstLength, range: Self.segmentRange, .minimum, ours: p.maxBurstLength)
        case "FirstBurstLength":
            return .number(\.firstBurstLength, range: Self.segmentRange, .minimum, ours: p.firstBurstLength)
        case "DefaultTime2Wait": return .number(\.defaultTime2Wait, range: 0...3600, .maximum, ours: p.defaultTime2Wait)
        case "DefaultTime2Retain":
            return .number(\.defaultTime2Retain, range: 0...3600, .minimum, ours: p.defaultTime2Retain)
        case "MaxOutstandingR2T":
            return .number(\.maxOutstandingR2T, range: 1...65535, .minimum, ours: p.maxOutstandingR2T)
        case "DataPDUInOrder": return .boolean(\.dataPDUInOrder, .or, ours: p.dataPDUInOrder)
        case "DataSequenceInOrder": return .boolean(\.dataSequenceInOrder, .or, ours: p.dataSequenceInOrder)
        case "ErrorRecoveryLevel":
            // RFC 7143 §13.21: ErrorRecoveryLevel MUST be 0 for Discovery sessions.
            return .number(\.errorRecoveryLevel, range: 0...2, .minimum,
                           ours: sessionType == .discovery ? 0 : p.errorRecoveryLevel)
        case "iSCSIProtocolLevel":
            return .number(\.iSCSIProtocolLevel, range: 0...31, .minimum, ours: p.iSCSIProtocolLevel ?? 1)
        case "TaskReporting": return .taskReporting
        default: return nil
        }
    }

    // MARK: Offer

    /// The keys of the first LoginOperationalNegotiation request, in open-iscsi's order. Declares
    /// MaxRecvDataSegmentLength; for Discovery sessions only the keys relevant there are sent.
    public mutating func initialOffer() -> TextKeyValues {
        let p = proposal
        var keys = TextKeyValues()
        func offer(_ key: String, _ value: String) {
            keys.append(key, value)
            awaitingAnswer[key] = value
        }
        offer("HeaderDigest", p.headerDigests.map(\.rawValue).joined(separator: ","))
        offer("DataDigest", p.dataDigests.map(\.rawValue).joined(separator: ","))
        offer("DefaultTime2Wait", String(p.defaultTime2Wait))
        offer("DefaultTime2Retain", String(p.defaultTime2Retain))
        offer("ErrorRecoveryLevel", String(sessionType == .discovery ? 0 : p.errorRecoveryLevel))
        if sessionType == .normal {
            offer("InitialR2T", TextValue.format(p.initialR2T))
            offer("ImmediateData", TextValue.format(p.immediateData))
            offer("MaxBurstLength", String(p.maxBurstLength))
            offer("FirstBurstLength", String(p.firstBurstLength))
            offer("MaxOutstandingR2T", String(p.maxOutstandingR2T))
            offer("MaxConnections", String(p.maxConnections))
            offer("DataPDUInOrder", TextValue.format(p.dataPDUInOrder))
            offer("DataSequenceInOrder", TextValue.format(p.dataSequenceInOrder))
            if let level = p.iSCSIProtocolLevel { offer("iSCSIProtocolLevel", String(level)) }
        }
        // Declarative (§13.12): takes effect as declared, no answer expected.
        keys.append("MaxRecvDataSegmentLength", String(p.maxRecvDataSegmentLength))
        parameters.initiatorMaxRecvDataSegmentLength = p.maxRecvDataSegmentLength
        return keys
    }

    // MARK: Responses

    /// Applies one response's keys. Returns the answers the initiator owes for keys the target offered.
    /// In the SecurityNegotiation stage only the Any-Stage declaratives (TargetAlias, TargetPortalGroupTag,
    /// TargetAddress) and extension keys are accepted here; the caller handles AuthMethod and CHAP_* itself
    /// and must not pass them in.
    public mutating func process(_ keys: TextKeyValues, stage: LoginStage) throws(LoginError) -> TextKeyValues {
        var replies = TextKeyValues()
        for pair in keys {
            try process(pair.key, pair.value, stage: stage, replies: &replies)
        }
        return replies
    }

    private mutating func process(_ key: String, _ value: String, stage: LoginStage,
                                  replies: inout TextKeyValues) throws(LoginError) {
        let operational = stage == .loginOperationalNegotiation
        switch key {
        case "TargetAlias":
            // §13.6: declarative, Any-Stage, iSCSI-local-name-value.
            parameters.targetAlias = value
        case "TargetPortalGroupTag":
            // §13.9: 16-bit binary-value, declarative, Any-Stage.
            guard let tag = TextValue.parseNumber(value), tag <= UInt64(UInt16.max) else {
                throw .violation(key, "TargetPortalGroupTag '\(value.prefix(32))' is not a 16-bit value")
            }
            parameters.targetPortalGroupTag = UInt16(tag)
        case "TargetAddress":
            // §13.8: declarative, may be repeated.
            parameters.targetAddresses.append(value)
        case "MaxRecvDataSegmentLength":
            // §13.12: declarative per direction; the target's value limits what the initiator sends.
            guard operational else { throw .violation(key, "operational key sent in the \(stage) stage") }
            guard let length = TextValue.parseNumber(value), Self.segmentRange.contains(Int(clamping: length)) else {
                throw .violation(key, "MaxRecvDataSegmentLength '\(value.prefix(32))' is outside 512...16777215")
            }
            parameters.targetMaxRecvDataSegmentLength = Int(length)
        case _ where Self.initiatorOnlyKeys.contains(key):
            throw .violation(key, "the target sent \(key), which only an initiator may send during login")
        case _ where Self.securityKeys.contains(key):
            throw .violation(key, "security key \(key) sent in the \(stage) stage")
        case "SendTargets":
            throw .violation(key, "SendTargets is only valid in Full Feature Phase")
        case _ where Self.obsoleteKeys.contains(key):
            // §13.25: answer the obsolete marker keys with Reject.
            guard operational else { throw .violation(key, "operational key sent in the \(stage) stage") }
            guard !Self.reservedConstants.contains(value) else {
                throw .violation(key, "\(key)=\(value) answers a key that was never proposed")
            }
            guard !concluded.contains(key) else { throw .violation(key, "\(key) negotiated twice") }
            concluded.insert(key)
            replies.append(key, TextValue.reject)
        default:
            if let rule = rule(for: key) {
                guard operational else { throw .violation(key, "operational key sent in the \(stage) stage") }
                try negotiate(key, value, rule: rule, replies: &replies)
            } else {
                // Extension (X-, X#) or unknown key. §6.2: "the answer for a key that is not understood MUST be
                // key=NotUnderstood". A reserved constant here would answer something never proposed.
                guard !Self.reservedConstants.contains(value) else {
                    throw .violation(key, "\(key)=\(value) answers a key that was never proposed")
                }
                guard !concluded.contains(key) else { throw .violation(key, "\(key) sent twice") }
                concluded.insert(key)
                replies.append(key, TextValue.notUnderstood)
            }
        }
    }

    private mutating func negotiate(_ key: String, _ value: String, rule: Rule,
                                    replies: inout TextKeyValues) throws(LoginError) {
        if let proposed = awaitingAnswer.removeValue(forKey: key) {
            concluded.insert(key)
            try applyAnswer(key, value, proposed: proposed, rule: rule)
            return
        }
        // §6.3: "An attempt to renegotiate/redeclare parameters not specifically allowed MUST be detected ...
        // if detected by the initiator, the initiator MUST drop the connection."
        guard !concluded.contains(key) else { throw .violation(key, "the target renegotiated \(key)") }
        concluded.insert(key)
        // §6.2: reserved constants MUST NOT be used as proposed values.
        guard !Self.reservedConstants.contains(value) else {
            throw .violation(key, "\(key)=\(value) answers a key that was never proposed")
        }
        if sessionType == .discovery, Self.irrelevantForDiscovery.contains(key) {
            replies.append(key, TextValue.irrelevant)
            return
        }
        replies.append(key, answerOffer(key, value, rule: rule))
    }

    /// The target proposed `key=value`: select per the key's rule (we are the acceptor).
    private mutating func answerOffer(_ key: String, _ value: String, rule: Rule) -> String {
        switch rule {
        case .digest(let path, let ours):
            // §6.2.1: respond with the first value in the originator's list that we support.
            for item in TextValue.parseList(value) {
                if let digest = ISCSIDigest(rawValue: item), ours.contains(digest) {
                    parameters[keyPath: path] = digest
                    return digest.rawValue
                }
            }
            return TextValue.reject
        case .number(let path, let range, let function, let ours):
            // §6.2.2: "Proposing a value not admissible ... MAY be answered with the constant Reject".
            guard let theirs = TextValue.parseNumber(value), range.contains(Int(clamping: theirs)) else {
                return TextValue.reject
            }
            let result = function == .minimum ? min(Int(theirs), ours) : max(Int(theirs), ours)
            parameters[keyPath: path] = result
            return String(result)
        case .boolean(let path, let function, let ours):
            guard let theirs = TextValue.parseBoolean(value) else { return TextValue.reject }
            let result = function == .and ? (theirs && ours) : (theirs || ours)
            parameters[keyPath: path] = result
            return TextValue.format(result)
        case .taskReporting:
            // §13.23: only RFC3720 semantics are implemented.
            if TextValue.parseList(value).contains("RFC3720") {
                parameters.taskReporting = "RFC3720"
                return "RFC3720"
            }
            return TextValue.reject
        }
    }

    /// The target answered our proposal `proposed` with `value`.
    private mutating func applyAnswer(_ key: String, _ value: String, proposed: String,
                                      rule: Rule) throws(LoginError) {
        switch value {
        case TextValue.reject, TextValue.irrelevant:
            // §6.2: "If the acceptor sends "Reject" as an answer, the negotiated key is left at its current
            // value (or default if no value was set)." Irrelevant concludes without a change as well.
            try checkDefaultAcceptable(key, rule: rule, answer: value)
            return
        case TextValue.notUnderstood:
            // §6.2: NotUnderstood for a key of RFC 7143 is a protocol error; for later keys it concludes the
            // negotiation and the feature is not used (RFC 7144 §7.1.1 for iSCSIProtocolLevel).
            guard key == "iSCSIProtocolLevel" else {
                throw .violation(key, "the target answered NotUnderstood to \(key), which RFC 7143 requires")
            }
            parameters.iSCSIProtocolLevel = 0
            return
        default:
            break
        }
        switch rule {
        case .digest(let path, let ours):
            // §6.2.1: "The selection of a value not proposed MUST be handled by the originator as a protocol
            // error."
            guard let digest = ISCSIDigest(rawValue: value), ours.contains(digest) else {
                throw .violation(key, "the target selected \(key)=\(value.prefix(32)), which was not offered")
            }
            parameters[keyPath: path] = digest
        case .number(let path, let range, let function, let ours):
            // §6.2.2: "The selection, by the acceptor, of a value not admissible under the selection rules is
            // considered a protocol error."
            guard let answer = TextValue.parseNumber(value), range.contains(Int(clamping: answer)) else {
                throw .violation(key, "\(key)=\(value.prefix(32)) is not a number in \(range.lowerBound)...\(range.upperBound)")
            }
            let selected = Int(answer)
            switch function {
            case .minimum where selected > ours:
                throw .violation(key, "\(key)=\(selected) exceeds the offered \(ours) (result function Minimum)")
            case .maximum where selected < ours:
                throw .violation(key, "\(key)=\(selected) is below the offered \(ours) (result function Maximum)")
            default:
                parameters[keyPath: path] = selected
            }
        case .boolean(let path, let function, let ours):
            guard let answer = TextValue.parseBoolean(value) else {
                throw .violation(key, "\(key)=\(value.prefix(32)) is not Yes or No")
            }
            // §13 "AND": offered No must give No; "OR": offered Yes must give Yes.
            switch function {
            case .and where !ours && answer:
                throw .violation(key, "\(key)=Yes after the initiator offered No (result function AND)")
            case .or where ours && !answer:
                throw .violation(key, "\(key)=No after the initiator offered Yes (result function OR)")
            default:
                parameters[keyPath: path] = answer
            }
        case .taskReporting:
            guard TextValue.parseList(proposed).contains(value) else {
                throw .violation(key, "the target selected \(key)=\(value.prefix(32)), which was not offered")
            }
            parameters.taskReporting = value
        }
    }

    /// After Reject/Irrelevant or no answer the default applies; a digest list without None cannot accept it.
    private func checkDefaultAcceptable(_ key: String, rule: Rule, answer: String) throws(LoginError) {
        if case .digest(_, let ours) = rule, !ours.contains(.none) {
            throw LoginError(.negotiationFailed, key: key,
                             "the target answered \(answer) to \(key)=\(ours.map(\.rawValue).joined(separator: ",")) and running without a digest is not allowed")
        }
    }

    /// True when every proposal has an answer.
    public var isComplete: Bool { awaitingAnswer.isEmpty }

    /// The effective parameters. Unanswered proposals keep their defaults, except the Boolean cases in which
    /// RFC 7143 §6.2.2 makes the answer optional ("AND" with No offered gives No, "OR" with Yes gives Yes).
    /// FirstBurstLength is clamped to MaxBurstLength (§13.14 integrity rule; the initiator MAY check it).
    public func finish() throws(LoginError) -> OperationalParameters {
        var result = parameters
        for (key, _) in awaitingAnswer.sorted(by: { $0.key < $1.key }) {
            guard let rule = rule(for: key) else { continue }
            switch rule {
            case .boolean(let path, .and, ours: false): result[keyPath: path] = false
            case .boolean(let path, .or, ours: true): result[keyPath: path] = true
            case .digest: try checkDefaultAcceptable(key, rule: rule, answer: "nothing")
            default: break
            }
        }
        result.firstBurstLength = min(result.firstBurstLength, result.maxBurstLength)
        return result
    }
}
