import NIOCore

/// The initiator side of the iSCSI Login Phase (RFC 7143 §6.3, §11.12, §11.13, §12.1.3) for one connection.
///
/// A value type with no IO: `start()` gives the first request; every Login Response goes to `receive(_:)`,
/// which returns the next request, the completed parameters, or a redirect, or throws a `LoginError`.
///
/// Flow (what open-iscsi does, accepted by tgt and LIO):
/// 1. SecurityNegotiation: the first request carries InitiatorName, InitiatorAlias, SessionType, TargetName
///    and `AuthMethod=None` (T=1, NSG=LoginOperationalNegotiation), or with CHAP configured
///    `AuthMethod=CHAP,None` (`CHAP` alone for mutual CHAP, so the target cannot skip proving itself) with T=0.
///    CHAP then runs CHAP_A → CHAP_A/CHAP_I/CHAP_C → CHAP_N/CHAP_R[/CHAP_I/CHAP_C] (T=1) → [CHAP_N/CHAP_R].
/// 2. LoginOperationalNegotiation: the §13 keys (`OperationalNegotiation`) with T=1, NSG=FullFeaturePhase;
///    target offers are answered until the target sets T=1.
/// Responses with C=1 are accumulated and fetched with empty requests (§6.2) before they are interpreted.
public struct LoginStateMachine: Sendable {
    /// Hard cap on Login Requests (RFC 7143 §6.2 asks to allow at least six exchanges).
    public static let maxExchanges = 32

    private enum AuthPhase: Sendable {
        /// Sent AuthMethod; waiting for the target's selection.
        case offeredAuthMethod(offered: [String])
        /// Sent CHAP_A; waiting for CHAP_A/CHAP_I/CHAP_C.
        case sentCHAPAlgorithms(offered: [CHAPAlgorithm])
        /// Sent CHAP_N/CHAP_R (and our challenge for mutual CHAP) with T=1.
        case sentCHAPResponse(CHAPExchange)
        /// Authentication is over (or None was chosen); waiting for the target to allow the transition.
        case authenticated
    }

    /// What is needed to check the target's side of a CHAP exchange.
    private struct CHAPExchange: Sendable {
        var algorithm: CHAPAlgorithm
        var hash: CHAPHash
        /// Mutual CHAP: the identifier and challenge we sent.
        var ourIdentifier: UInt8?
        var ourChallenge: [UInt8]?
    }

    private enum State: Sendable {
        /// `start()` not called yet.
        case idle
        /// A SecurityNegotiation request is outstanding.
        case security(AuthPhase)
        /// A LoginOperationalNegotiation request is outstanding.
        case operational
        /// Login completed, redirected or failed: nothing more is accepted.
        case finished
    }

    public let configuration: LoginConfiguration
    private let random: CHAPRandomSource
    private var state: State = .idle
    private var negotiation: OperationalNegotiation
    private var lastRequest: LoginRequestStep?
    /// Text of a C-bit series being accumulated.
    private var pendingText: ByteBuffer?
    private var exchanges = 0
    /// The challenge sent to the target for mutual CHAP, once sent. Keep recent ones and pass them in
    /// `LoginConfiguration.previouslySentCHAPChallenges` of later logins to detect reflection.
    public private(set) var sentCHAPChallenge: [UInt8]?

    /// Validates the configuration: names present, proposal in range, CHAP credentials usable and, for
    /// mutual CHAP, different secrets per direction (RFC 7143 §9.2.1: "Any CHAP secret used for initiator
    /// authentication MUST NOT be configured for authentication of any target").
    public init(configuration: LoginConfiguration, random: CHAPRandomSource = .system) throws(LoginError) {
        self.configuration = configuration
        self.random = random
        self.negotiation = OperationalNegotiation(proposal: configuration.proposal,
                                                  sessionType: configuration.sessionType)
        if configuration.initiatorName.isEmpty {
            throw LoginError(.invalidConfiguration, key: "InitiatorName", "the initiator name is empty")
        }
        if configuration.sessionType == .normal, (configuration.targetName ?? "").isEmpty {
            throw LoginError(.invalidConfiguration, key: "TargetName", "a normal session needs a target name")
        }
        if let problem = configuration.proposal.validationProblem() {
            throw LoginError(.invalidConfiguration, problem)
        }
        if let chap = configuration.chap {
            if chap.username.isEmpty || chap.secret.isEmpty {
                throw LoginError(.invalidConfiguration, "CHAP needs a non-empty username and secret")
            }
            if configuration.chapAlgorithms.isEmpty {
                throw LoginError(.invalidConfiguration, key: "CHAP_A", "no CHAP algorithm allowed")
            }
            if let mutual = chap.mutual {
                if mutual.username.isEmpty || mutual.secret.isEmpty {
                    throw LoginError(.invalidConfiguration, "mutual CHAP needs a non-empty target username and secret")
                }
                if mutual.secret == chap.secret {
                    throw LoginError(.identicalCHAPSecrets,
                                     "mutual CHAP is configured with the same secret for the initiator and the target (RFC 7143 §9.2.1 forbids it)")
                }
            }
        }
    }

    /// The parameters negotiated so far (declarations such as TargetPortalGroupTag included).
    public var parameters: OperationalParameters { negotiation.parameters }

    // MARK: - Events

    /// The first Login Request.
    public mutating func start() -> LoginRequestStep {
        precondition(lastRequest == nil, "LoginStateMachine.start() called twice")
        var keys = TextKeyValues()
        keys.append("InitiatorName", configuration.initiatorName)
        if let alias = configuration.initiatorAlias, !alias.isEmpty { keys.append("InitiatorAlias", alias) }
        keys.append("SessionType", configuration.sessionType.rawValue)
        if configuration.sessionType == .normal, let target = configuration.targetName {
            keys.append("TargetName", target)
        }
        let offered: [String]
        if let chap = configuration.chap {
            offered = chap.mutual == nil ? ["CHAP", "None"] : ["CHAP"]
        } else {
            offered = ["None"]
        }
        keys.append("AuthMethod", offered.joined(separator: ","))
        state = .security(.offeredAuthMethod(offered: offered))
        // With only None offered there is nothing more to say in this stage: ask for the transition now.
        return record(LoginRequestStep(csg: .securityNegotiation, nsg: .loginOperationalNegotiation,
                                       transit: offered == ["None"], keys: keys))
    }

    /// Handles one Login Response.
    public mutating func receive(_ response: LoginResponseSummary) throws(LoginError) -> LoginAction {
        do {
            return try handle(response)
        } catch {
            state = .finished
            throw error
        }
    }

    private mutating func handle(_ response: LoginResponseSummary) throws(LoginError) -> LoginAction {
        guard let request = lastRequest else { throw .violation(nil, "Login Response before any Login Request") }
        switch state {
        case .idle, .finished:
            throw .violation(nil, "unexpected Login Response: the login is over")
        case .security, .operational:
            break
        }

        // Status first: on a reject the T, CSG and NSG fields are reserved (§6.3.1).
        switch response.statusClass {
        case 0:
            break
        case 1:
            return try redirect(response)
        default:
            throw rejection(response.status)
        }

        // §11.13.7: "A Login Response with the C bit set to 1 MUST have the T bit set to 0."
        if response.continue && response.transit {
            throw .violation(nil, "Login Response with both C and T set (RFC 7143 §11.13.7)")
        }
        // §6.3: a response belongs to the stage of the request it answers.
        if response.csg != request.csg {
            throw .violation(nil, "Login Response CSG \(response.csg) does not match the request's \(request.csg)")
        }
        // §11.13.6: "the T bit MUST NOT be set to 1 if the T bit in the request was set to 0."
        if response.transit && !request.transit {
            throw .violation(nil, "the target set T=1 although the initiator did not ask for a transition")
        }
        if response.transit {
            // §6.3: "The selected NSG MUST NOT exceed the value stated by the initiator", and only the
            // transitions of the §6.3 table exist.
            let valid: Bool
            switch request.csg {
            case .securityNegotiation:
                valid = response.nsg == .loginOperationalNegotiation
                    || (response.nsg == .fullFeaturePhase && request.nsg == .fullFeaturePhase)
            default:
                valid = response.nsg == .fullFeaturePhase
            }
            guard valid else {
                throw .violation(nil, "invalid stage transition from \(request.csg) to \(response.nsg)")
            }
        }

        // Accumulate a C-bit series (§6.1 LTDS); fetch the rest with an empty request (§6.2).
        var text = pendingText ?? ByteBuffer()
        var chunk = response.text
        guard text.readableBytes + chunk.readableBytes <= configuration.textLimits.maxTotalBytes else {
            throw LoginError(.malformedText, "the target's login text exceeds \(configuration.textLimits.maxTotalBytes) bytes")
        }
        text.writeBuffer(&chunk)
        if response.continue {
            pendingText = text
            return try send(LoginRequestStep(csg: request.csg, nsg: request.nsg, transit: request.transit,
                                             keys: TextKeyValues()))
        }
        pendingText = nil
        let keys: TextKeyValues
        do {
            keys = try TextKeyValues.decode(text, limits: configuration.textLimits, duplicates: .login)
        } catch {
            throw LoginError(error.kind == .duplicateKey ? .protocolViolation : .malformedText, key: error.key,
                             error.description)
        }

        switch state {
        case .security(let phase):
            return try security(phase, response: response, keys: keys)
        case .operational:
            return try operational(response: response, keys: keys)
        case .idle, .finished:
            throw .violation(nil, "unexpected Login Response")
        }
    }

    // MARK: - SecurityNegotiation

    private mutating func security(_ phase: AuthPhase, response: LoginResponseSummary,
                                   keys: TextKeyValues) throws(LoginError) -> LoginAction {
        // Split security keys from the rest (declaratives, extension keys) which the negotiation handles.
        var securityKeys = TextKeyValues()
        var otherKeys = TextKeyValues()
        for pair in keys {
            if OperationalNegotiation.securityKeys.contains(pair.key) {
                securityKeys.append(pair.key, pair.value)
            } else {
                otherKeys.append(pair.key, pair.value)
            }
        }
        var replies = try negotiation.process(otherKeys, stage: .securityNegotiation)

        switch phase {
        case .offeredAuthMethod(let offered):
            try expectOnly(["AuthMethod"], in: securityKeys)
            let selected: String
            if let value = securityKeys["AuthMethod"] {
                selected = value
            } else if offered == ["None"] && response.transit {
                // Lenient: a target that transits without answering AuthMethod=None did not authenticate.
                selected = "None"
            } else {
                throw .violation("AuthMethod", "the target did not answer AuthMethod")
            }
            switch selected {
            case TextValue.reject:
                if configuration.chap == nil {
                    throw LoginError(.authenticationMethodRejected, key: "AuthMethod",
                                     "the target requires authentication but no CHAP credentials are configured")
                }
                throw LoginError(.authenticationMethodRejected, key: "AuthMethod",
                                 "the target accepts none of the offered authentication methods (\(offered.joined(separator: ",")))")
            case _ where !offered.contains(selected):
                // §6.2.1: a value not proposed is a protocol error.
                if selected == "None" || configuration.chap == nil {
                    throw LoginError(.authenticationMethodRejected, key: "AuthMethod",
                                     "the target selected AuthMethod=\(selected.prefix(32)), which was not offered (offered \(offered.joined(separator: ",")))")
                }
                throw .violation("AuthMethod", "the target selected AuthMethod=\(selected.prefix(32)), which was not offered")
            case "None":
                return try finishSecurity(response: response, replies: replies)
            default:  // "CHAP"
                guard !response.transit else {
                    throw .violation("AuthMethod", "the target selected CHAP and ended the stage at once")
                }
                let algorithms = offeredAlgorithms
                replies.append("CHAP_A", algorithms.map { String($0.rawValue) }.joined(separator: ","))
                state = .security(.sentCHAPAlgorithms(offered: algorithms))
                return try send(LoginRequestStep(csg: .securityNegotiation, nsg: .loginOperationalNegotiation,
                                                 transit: false, keys: replies))
            }

        case .sentCHAPAlgorithms(let offered):
            guard !response.transit else {
                throw .violation("CHAP_A", "the target ended the security stage without a CHAP challenge")
            }
            try expectOnly(["CHAP_A", "CHAP_I", "CHAP_C"], in: securityKeys)
            guard let algorithmText = securityKeys["CHAP_A"] else {
                throw .violation("CHAP_A", "the target did not answer CHAP_A")
            }
            if algorithmText == TextValue.reject {
                throw algorithmRejection("the target rejected CHAP_A=\(offered.map { String($0.rawValue) }.joined(separator: ","))")
            }
            guard let number = TextValue.parseNumber(algorithmText), number <= 255,
                let algorithm = CHAPAlgorithm(rawValue: UInt8(number)), offered.contains(algorithm)
            else {
                throw .violation("CHAP_A", "the target selected CHAP_A=\(algorithmText.prefix(16)), which was not offered")
            }
            guard let identifierText = securityKeys["CHAP_I"] else {
                throw .violation("CHAP_I", "the target did not send CHAP_I")
            }
            guard let identifier = TextValue.parseNumber(identifierText), identifier <= 255 else {
                throw .violation("CHAP_I", "CHAP_I=\(identifierText.prefix(16)) is not in 0...255")
            }
            guard let challengeText = securityKeys["CHAP_C"] else {
                throw .violation("CHAP_C", "the target did not send CHAP_C")
            }
            // §12.1.3: C is a binary-value whose binary length MUST NOT exceed 1024 bytes.
            guard let challenge = TextValue.decodeBinary(challengeText, maxBytes: 1024), !challenge.isEmpty else {
                throw .violation("CHAP_C", "CHAP_C is not a hex or base64 binary value of 1 to 1024 bytes")
            }
            guard let chap = configuration.chap else {
                throw .violation("CHAP_A", "CHAP keys received although CHAP was not offered")
            }
            // §9.2.1: a challenge we sent ourselves must never be answered (reflection).
            if configuration.previouslySentCHAPChallenges.contains(challenge) {
                throw LoginError(.chapChallengeReflected, key: "CHAP_C",
                                 "the target sent a CHAP challenge this initiator issued itself (reflection attack)")
            }
            let hash = Self.hash(for: algorithm, challengeLength: challenge.count)
            let answer = CHAP.response(hash: hash, identifier: UInt8(identifier), secret: Array(chap.secret.utf8),
                                       challenge: challenge)
            replies.append("CHAP_N", chap.username)
            replies.append("CHAP_R", TextValue.hexConstant(answer))
            var exchange = CHAPExchange(algorithm: algorithm, hash: hash)
            if chap.mutual != nil {
                // §9.2.1: "Originators MUST NOT reuse the CHAP challenge sent by the responder for the other
                // direction": draw until different (a collision is astronomically unlikely).
                let length = max(16, hash.digestLength)
                var ours = random.bytes(length)
                var attempts = 0
                while ours == challenge || ours.count != length
                    || configuration.previouslySentCHAPChallenges.contains(ours)
                {
                    attempts += 1
                    guard attempts < 8 else {
                        throw LoginError(.invalidConfiguration, "the random source cannot produce a fresh CHAP challenge")
                    }
                    ours = random.bytes(length)
                }
                let ourIdentifier = random.bytes(1).first ?? 0
                exchange.ourIdentifier = ourIdentifier
                exchange.ourChallenge = ours
                sentCHAPChallenge = ours
                replies.append("CHAP_I", String(ourIdentifier))
                replies.append("CHAP_C", TextValue.hexConstant(ours))
            }
            state = .security(.sentCHAPResponse(exchange))
            return try send(LoginRequestStep(csg: .securityNegotiation, nsg: .loginOperationalNegotiation,
                                             transit: true, keys: replies))

        case .sentCHAPResponse(let exchange):
            try expectOnly(["CHAP_N", "CHAP_R"], in: securityKeys)
            if let mutual = configuration.chap?.mutual, let ourChallenge = exchange.ourChallenge,
                let ourIdentifier = exchange.ourIdentifier
            {
                guard let name = securityKeys["CHAP_N"], let responseText = securityKeys["CHAP_R"] else {
                    throw LoginError(.targetAuthenticationFailed,
                                     "the target did not authenticate itself (no CHAP_N/CHAP_R for mutual CHAP)")
                }
                guard name == mutual.username else {
                    throw LoginError(.targetAuthenticationFailed, key: "CHAP_N",
                                     "the target authenticated as \"\(name.prefix(64))\", expected \"\(mutual.username)\"")
                }
                guard let received = TextValue.decodeBinary(responseText, maxBytes: 1024) else {
                    throw LoginError(.targetAuthenticationFailed, key: "CHAP_R", "the target's CHAP_R is not a binary value")
                }
                let expected = CHAP.response(hash: exchange.hash, identifier: ourIdentifier,
                                             secret: Array(mutual.secret.utf8), challenge: ourChallenge)
                // §9.2.1: a response equal to what we would compute with our own secret means the same secret
                // is used in both directions: authentication failure.
                let mirrored = CHAP.response(hash: exchange.hash, identifier: ourIdentifier,
                                             secret: Array((configuration.chap?.secret ?? "").utf8),
                                             challenge: ourChallenge)
                if CHAP.constantTimeEqual(received, mirrored) {
                    throw LoginError(.identicalCHAPSecrets, key: "CHAP_R",
                                     "the target answered with the initiator's own secret (RFC 7143 §9.2.1)")
                }
                guard CHAP.constantTimeEqual(received, expected) else {
                    throw LoginError(.targetAuthenticationFailed, key: "CHAP_R",
                                     "the target's CHAP response is wrong (mutual CHAP failed: the target did not prove the configured secret)")
                }
            }
            // One-way CHAP: a stray CHAP_N/CHAP_R is ignored.
            return try finishSecurity(response: response, replies: replies)

        case .authenticated:
            guard securityKeys.isEmpty else {
                throw .violation(securityKeys.keys.first, "security key after authentication finished")
            }
            return try finishSecurity(response: response, replies: replies)
        }
    }

    /// Authentication is done: move to LoginOperationalNegotiation once the target allows it.
    private mutating func finishSecurity(response: LoginResponseSummary,
                                         replies: TextKeyValues) throws(LoginError) -> LoginAction {
        if response.transit {
            if let key = replies.keys.first {
                throw .violation(key, "the target ended the stage while sending \(key), which needs an answer")
            }
            // NSG was checked: it is LoginOperationalNegotiation (we never ask for more from this stage).
            state = .operational
            let offer = negotiation.initialOffer()
            return try send(LoginRequestStep(csg: .loginOperationalNegotiation, nsg: .fullFeaturePhase,
                                             transit: true, keys: offer))
        }
        // §6.3.3: keep T=1 (even in empty requests) until the target answers with T=1.
        state = .security(.authenticated)
        return try send(LoginRequestStep(csg: .securityNegotiation, nsg: .loginOperationalNegotiation,
                                         transit: true, keys: replies))
    }

    private func expectOnly(_ allowed: Set<String>, in keys: TextKeyValues) throws(LoginError) {
        if let unexpected = keys.first(where: { !allowed.contains($0.key) }) {
            throw .violation(unexpected.key, "\(unexpected.key) is not expected at this point of the security negotiation")
        }
    }

    /// The configured algorithms, strongest first (§12.1.3 "in order of preference").
    private var offeredAlgorithms: [CHAPAlgorithm] {
        var unique: [CHAPAlgorithm] = []
        for algorithm in configuration.chapAlgorithms where !unique.contains(algorithm) { unique.append(algorithm) }
        return unique.sorted { $0.strength > $1.strength }
    }

    /// The hash behind a selected CHAP_A (see `CHAPAlgorithm` for tgt's "7 = SHA-1").
    static func hash(for algorithm: CHAPAlgorithm, challengeLength: Int) -> CHAPHash {
        if algorithm == .sha256 && challengeLength != 32 { return .sha1 }
        return CHAPHash(algorithm)
    }

    /// Whether retrying with MD5 alone could help: MD5 is allowed and something stronger was tried.
    private var canFallBackToMD5: Bool {
        configuration.chapAlgorithms.contains(.md5) && configuration.chapAlgorithms.contains { $0 != .md5 }
    }

    private func algorithmRejection(_ message: String) -> LoginError {
        if canFallBackToMD5 {
            return LoginError(.chapAlgorithmRejected, key: "CHAP_A", message + "; retry with CHAP_A=5 (MD5)")
        }
        return LoginError(.authenticationMethodRejected, key: "CHAP_A", message)
    }

    private func rejection(_ status: LoginStatus) -> LoginError {
        if status.statusClass == 2, canFallBackToMD5 {
            switch state {
            case .security(.sentCHAPAlgorithms):
                return algorithmRejection("the target refused the CHAP algorithm list: login status \(status)")
            case .security(.sentCHAPResponse(let exchange)) where exchange.algorithm != .md5:
                return algorithmRejection("the target refused the \(exchange.algorithm) CHAP response: login status \(status)")
            default:
                break
            }
        }
        return LoginError(.rejectedByTarget(status), "the target rejected the login: \(status)")
    }

    // MARK: - LoginOperationalNegotiation

    private mutating func operational(response: LoginResponseSummary,
                                      keys: TextKeyValues) throws(LoginError) -> LoginAction {
        let replies = try negotiation.process(keys, stage: .loginOperationalNegotiation)
        if response.transit {
            // §6.3: "Targets MUST NOT submit parameters that require an additional initiator Login Request in
            // a Login Response with the T bit set to 1."
            if let key = replies.keys.first {
                throw .violation(key, "the target ended the login while offering \(key), which needs an answer")
            }
            let parameters = try negotiation.finish()
            state = .finished
            return .complete(parameters, tsih: response.tsih)
        }
        return try send(LoginRequestStep(csg: .loginOperationalNegotiation, nsg: .fullFeaturePhase, transit: true,
                                         keys: replies))
    }

    // MARK: - Redirect

    private mutating func redirect(_ response: LoginResponseSummary) throws(LoginError) -> LoginAction {
        // §11.13.5: "All of the redirection Status-Class responses MUST return one or more text key
        // parameters of the type "TargetAddress"".
        var text = pendingText ?? ByteBuffer()
        var chunk = response.text
        text.writeBuffer(&chunk)
        let keys: TextKeyValues
        do {
            keys = try TextKeyValues.decode(text, limits: configuration.textLimits, duplicates: .allow)
        } catch {
            throw LoginError(.malformedText, key: error.key, error.description)
        }
        guard let address = keys["TargetAddress"], !address.isEmpty else {
            throw .violation("TargetAddress", "redirection \(response.status) without a TargetAddress")
        }
        state = .finished
        return .redirect(address: address, temporary: response.statusDetail != 0x02)
    }

    // MARK: - Helpers

    private mutating func send(_ step: LoginRequestStep) throws(LoginError) -> LoginAction {
        guard exchanges < Self.maxExchanges else {
            throw .violation(nil, "login did not finish within \(Self.maxExchanges) exchanges")
        }
        return .send(record(step))
    }

    private mutating func record(_ step: LoginRequestStep) -> LoginRequestStep {
        exchanges += 1
        lastRequest = step
        return step
    }
}
