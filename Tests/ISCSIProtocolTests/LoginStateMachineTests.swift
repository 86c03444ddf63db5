import Foundation
import ISCSIProtocol
import NIOCore
import Testing

/// Login transcripts: the target says X, the initiator sends Y.
@Suite struct LoginStateMachineTests {
    static let initiator = "iqn.2026-01.test:initiator"
    static let target = "iqn.2026-01.test:target"

    /// A deterministic random source: challenges are 0xa0, 0xa1, ...; identifiers 0xaa.
    static let fixedRandom = CHAPRandomSource { count in
        count == 1 ? [0xaa] : (0..<count).map { UInt8(truncatingIfNeeded: 0xa0 + $0) }
    }

    static func machine(chap: CHAPCredentials? = nil, algorithms: [CHAPAlgorithm] = [.md5],
                        proposal: SessionParameterProposal = .init(), targetName: String? = target,
                        random: CHAPRandomSource = fixedRandom,
                        configure: (inout LoginConfiguration) -> Void = { _ in }) throws -> LoginStateMachine {
        var configuration = LoginConfiguration(initiatorName: initiator, initiatorAlias: "host1",
                                               targetName: targetName, chap: chap, chapAlgorithms: algorithms,
                                               proposal: proposal)
        configure(&configuration)
        return try LoginStateMachine(configuration: configuration, random: random)
    }

    static func security(transit: Bool, _ keys: TextKeyValues, continue: Bool = false) -> LoginResponseSummary {
        LoginResponseSummary(transit: transit, continue: `continue`, csg: .securityNegotiation,
                             nsg: transit ? .loginOperationalNegotiation : .securityNegotiation, keys: keys)
    }

    static func operational(transit: Bool, _ keys: TextKeyValues, tsih: UInt16 = 0) -> LoginResponseSummary {
        LoginResponseSummary(transit: transit, csg: .loginOperationalNegotiation,
                             nsg: transit ? .fullFeaturePhase : .loginOperationalNegotiation, tsih: tsih, keys: keys)
    }

    static func failure(_ code: UInt16, _ keys: TextKeyValues = [:]) -> LoginResponseSummary {
        LoginResponseSummary(statusClass: UInt8(code >> 8), statusDetail: UInt8(code & 0xff), transit: false,
                             csg: .securityNegotiation, nsg: .securityNegotiation, keys: keys)
    }

    static let operationalAnswers: TextKeyValues = [
        "HeaderDigest": "None", "DataDigest": "None", "DefaultTime2Wait": "2", "DefaultTime2Retain": "0",
        "ErrorRecoveryLevel": "0", "InitialR2T": "No", "ImmediateData": "Yes", "MaxBurstLength": "1048576",
        "FirstBurstLength": "262144", "MaxOutstandingR2T": "1", "MaxConnections": "1", "DataPDUInOrder": "Yes",
        "DataSequenceInOrder": "Yes", "MaxRecvDataSegmentLength": "65536",
    ]

    static func request(_ action: LoginAction, sourceLocation: SourceLocation = #_sourceLocation) -> LoginRequestStep? {
        guard case .send(let step) = action else {
            Issue.record("expected a request, got \(action)", sourceLocation: sourceLocation)
            return nil
        }
        return step
    }

    /// Drives the operational stage to completion and checks the result.
    static func finishOperational(_ machine: inout LoginStateMachine, after action: LoginAction) throws
        -> OperationalParameters
    {
        let step = try #require(request(action))
        #expect(step.csg == .loginOperationalNegotiation)
        #expect(step.nsg == .fullFeaturePhase)
        #expect(step.transit)
        #expect(step.keys["MaxRecvDataSegmentLength"] == "262144")
        let done = try machine.receive(operational(transit: true, operationalAnswers, tsih: 0x1234))
        guard case .complete(let parameters, let tsih) = done else {
            Issue.record("expected completion, got \(done)")
            throw LoginError(.protocolViolation, "not complete")
        }
        #expect(tsih == 0x1234)
        return parameters
    }

    // MARK: - No authentication

    @Test func loginWithoutAuthentication() throws {
        var machine = try Self.machine()
        let first = machine.start()
        #expect(first.csg == .securityNegotiation)
        #expect(first.nsg == .loginOperationalNegotiation)
        #expect(first.transit)
        #expect(!first.continue)
        #expect(first.keys == ["InitiatorName": Self.initiator, "InitiatorAlias": "host1", "SessionType": "Normal",
                               "TargetName": Self.target, "AuthMethod": "None"])
        let action = try machine.receive(Self.security(transit: true, ["AuthMethod": "None",
                                                                        "TargetPortalGroupTag": "1"]))
        let parameters = try Self.finishOperational(&machine, after: action)
        #expect(parameters.targetPortalGroupTag == 1)
        #expect(parameters.initialR2T == false)
        #expect(parameters.maxBurstLength == 1_048_576)
        #expect(parameters.targetMaxRecvDataSegmentLength == 65536)
        #expect(parameters.initiatorMaxRecvDataSegmentLength == 262144)
        // Nothing is accepted after completion.
        #expect(throws: LoginError.self) { try machine.receive(Self.operational(transit: true, [:])) }
    }

    @Test func targetThatDoesNotTransitAtOnceGetsAnotherTransitRequest() throws {
        var machine = try Self.machine()
        _ = machine.start()
        let again = try #require(Self.request(try machine.receive(Self.security(transit: false, ["AuthMethod": "None"]))))
        #expect(again.csg == .securityNegotiation && again.transit && again.keys.isEmpty)
        let action = try machine.receive(Self.security(transit: true, [:]))
        _ = try Self.finishOperational(&machine, after: action)
    }

    @Test func discoverySession() throws {
        var machine = try Self.machine(targetName: nil)
        let first = machine.start()
        #expect(first.keys["SessionType"] == "Discovery")
        #expect(first.keys["TargetName"] == nil)
        let step = try #require(Self.request(try machine.receive(Self.security(transit: true, ["AuthMethod": "None"]))))
        #expect(step.keys["MaxBurstLength"] == nil)
        #expect(step.keys["HeaderDigest"] == "None")
        let done = try machine.receive(Self.operational(transit: true, ["HeaderDigest": "None", "DataDigest": "None",
                                                                        "MaxRecvDataSegmentLength": "32768"]))
        guard case .complete(let parameters, _) = done else { throw LoginError(.protocolViolation, "\(done)") }
        #expect(parameters.sessionType == .discovery)
        #expect(parameters.targetMaxRecvDataSegmentLength == 32768)
    }

    @Test func targetRequiringAuthenticationWithoutCredentials() throws {
        var machine = try Self.machine()
        _ = machine.start()
        #expect {
            _ = try machine.receive(Self.security(transit: false, ["AuthMethod": "Reject"]))
        } throws: { error in
            let error = error as? LoginError
            return error?.kind == .authenticationMethodRejected
                && error?.message.contains("no CHAP credentials") == true
        }
    }

    @Test func targetSelectingCHAPWhenOnlyNoneOffered() throws {
        var machine = try Self.machine()
        _ = machine.start()
        #expect {
            _ = try machine.receive(Self.security(transit: false, ["AuthMethod": "CHAP"]))
        } throws: { ($0 as? LoginError)?.kind == .authenticationMethodRejected }
    }

    // MARK: - CHAP

    static let oneWay = CHAPCredentials(username: "alice", secret: "secretsecret")
    static let mutual = CHAPCredentials(username: "alice", secret: "secretsecret",
                                        mutual: .init(username: "target", secret: "targetsecret99"))

    /// Runs AuthMethod and CHAP_A and returns the request carrying CHAP_R.
    static func chapResponse(_ machine: inout LoginStateMachine, algorithm: String = "5", identifier: String = "1",
                             challenge: String = TextValue.hexConstant(Array(UInt8(0)..<16)),
                             expectedOffer: String = "5") throws -> LoginRequestStep {
        let first = machine.start()
        #expect(!first.transit)
        let chapA = try #require(request(try machine.receive(security(transit: false, ["AuthMethod": "CHAP",
                                                                                      "TargetPortalGroupTag": "1"]))))
        #expect(chapA.keys == TextKeyValues([("CHAP_A", expectedOffer)]))
        #expect(!chapA.transit)
        return try #require(request(try machine.receive(security(transit: false, TextKeyValues([
            ("CHAP_A", algorithm), ("CHAP_I", identifier), ("CHAP_C", challenge),
        ])))))
    }

    @Test func oneWayCHAPMD5() throws {
        var machine = try Self.machine(chap: Self.oneWay)
        #expect(machine.start().keys["AuthMethod"] == "CHAP,None")
        machine = try Self.machine(chap: Self.oneWay)
        let response = try Self.chapResponse(&machine)
        // hashlib.md5(bytes([1]) + b"secretsecret" + bytes(range(16))).hexdigest()
        #expect(response.keys == ["CHAP_N": "alice", "CHAP_R": "0x226dc576c33f04ff9c3a200ffe35f442"])
        #expect(response.transit && response.nsg == .loginOperationalNegotiation)
        let action = try machine.receive(Self.security(transit: true, [:]))
        _ = try Self.finishOperational(&machine, after: action)
    }

    @Test func base64ChallengeIsAccepted() throws {
        var machine = try Self.machine(chap: Self.oneWay)
        let response = try Self.chapResponse(&machine, challenge: "0bAAECAwQFBgcICQoLDA0ODw==")
        #expect(response.keys["CHAP_R"] == "0x226dc576c33f04ff9c3a200ffe35f442")
    }

    @Test func targetMayChooseNoneWhenOneWayCHAPIsOffered() throws {
        var machine = try Self.machine(chap: Self.oneWay)
        _ = machine.start()
        let step = try #require(Self.request(try machine.receive(Self.security(transit: false, ["AuthMethod": "None"]))))
        #expect(step.transit && step.keys.isEmpty)
    }

    @Test func mutualCHAPSuccess() throws {
        var machine = try Self.machine(chap: Self.mutual)
        #expect(machine.start().keys["AuthMethod"] == "CHAP")
        machine = try Self.machine(chap: Self.mutual)
        let response = try Self.chapResponse(&machine)
        #expect(response.keys["CHAP_R"] == "0x226dc576c33f04ff9c3a200ffe35f442")
        #expect(response.keys["CHAP_I"] == "170")
        #expect(response.keys["CHAP_C"] == TextValue.hexConstant(Array(UInt8(0xa0)..<0xb0)))
        #expect(machine.sentCHAPChallenge == Array(UInt8(0xa0)..<0xb0))
        // hashlib.md5(bytes([0xaa]) + b"targetsecret99" + bytes(range(0xa0, 0xb0))).hexdigest()
        let action = try machine.receive(Self.security(transit: true, [
            "CHAP_N": "target", "CHAP_R": "0x4e3cfbe072e8412c40918666e983359f",
        ]))
        _ = try Self.finishOperational(&machine, after: action)
    }

    static let targetFailures: [(TextKeyValues, String?)] = [
        (["CHAP_N": "target", "CHAP_R": "0x4e3cfbe072e8412c40918666e983359e"], "CHAP_R"),  // wrong
        (["CHAP_N": "other", "CHAP_R": "0x4e3cfbe072e8412c40918666e983359f"], "CHAP_N"),  // wrong name
        (["CHAP_N": "target", "CHAP_R": "0x4e3cfbe0"], "CHAP_R"),  // truncated
        (["CHAP_N": "target", "CHAP_R": "nothex"], "CHAP_R"),
        ([:], nil),  // target did not authenticate at all
    ]

    @Test(arguments: 0..<5)
    func mutualCHAPTargetFails(index: Int) throws {
        let (keys, key) = Self.targetFailures[index]
        var machine = try Self.machine(chap: Self.mutual)
        _ = try Self.chapResponse(&machine)
        #expect {
            _ = try machine.receive(Self.security(transit: true, keys))
        } throws: { error in
            let error = error as? LoginError
            return error?.kind == .targetAuthenticationFailed && error?.key == key
                && error?.description.contains("targetsecret99") == false
        }
    }

    @Test func mutualCHAPInitiatorFailsAtTarget() throws {
        var machine = try Self.machine(chap: Self.mutual)
        _ = try Self.chapResponse(&machine)
        #expect {
            _ = try machine.receive(Self.failure(0x0201))
        } throws: { error in
            let error = error as? LoginError
            return error?.status == .authenticationFailure && error?.message.contains("authentication failed") == true
        }
    }

    @Test func targetAnsweringWithInitiatorSecretIsRefused() throws {
        var machine = try Self.machine(chap: Self.mutual)
        _ = try Self.chapResponse(&machine)
        // The response our own secret gives for our challenge: the target reuses the initiator's secret.
        let mirrored = CHAP.response(algorithm: .md5, identifier: 0xaa, secret: Array("secretsecret".utf8),
                                     challenge: Array(UInt8(0xa0)..<0xb0))
        #expect {
            _ = try machine.receive(Self.security(transit: true, [
                "CHAP_N": "target", "CHAP_R": TextValue.hexConstant(mirrored),
            ]))
        } throws: { ($0 as? LoginError)?.kind == .identicalCHAPSecrets }
    }

    @Test func identicalSecretsRefusedUpFront() {
        let credentials = CHAPCredentials(username: "a", secret: "same-secret-1", mutual: .init(username: "t", secret: "same-secret-1"))
        #expect {
            _ = try Self.machine(chap: credentials)
        } throws: { error in
            let error = error as? LoginError
            return error?.kind == .identicalCHAPSecrets && error?.description.contains("same-secret-1") == false
        }
    }

    @Test func ourChallengeNeverEqualsTheTargetChallenge() throws {
        // The random source first returns exactly the target's challenge; the machine must draw again.
        let calls = Counter()
        let random = CHAPRandomSource { count in
            if count == 1 { return [7] }
            return calls.next() == 0 ? Array(UInt8(0)..<UInt8(count)) : Array(repeating: 0x55, count: count)
        }
        var machine = try Self.machine(chap: Self.mutual, random: random)
        let response = try Self.chapResponse(&machine)
        #expect(response.keys["CHAP_C"] == TextValue.hexConstant(Array(repeating: UInt8(0x55), count: 16)))
    }

    @Test func reflectedChallengeFromAnotherConnectionIsRefused() throws {
        var machine = try Self.machine(chap: Self.oneWay) {
            $0.previouslySentCHAPChallenges = [Array(UInt8(0)..<16)]
        }
        #expect {
            _ = try Self.chapResponse(&machine)
        } throws: { ($0 as? LoginError)?.kind == .chapChallengeReflected }
    }

    @Test func malformedCHAPChallenges() throws {
        for (keys, key) in [
            (TextKeyValues([("CHAP_A", "5"), ("CHAP_I", "256"), ("CHAP_C", "0x00")]), "CHAP_I"),
            (TextKeyValues([("CHAP_A", "5"), ("CHAP_I", "x"), ("CHAP_C", "0x00")]), "CHAP_I"),
            (TextKeyValues([("CHAP_A", "5"), ("CHAP_I", "1")]), "CHAP_C"),
            (TextKeyValues([("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x" + String(repeating: "00", count: 1025))]), "CHAP_C"),
            (TextKeyValues([("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0xgg")]), "CHAP_C"),
            (TextKeyValues([("CHAP_A", "6"), ("CHAP_I", "1"), ("CHAP_C", "0x00")]), "CHAP_A"),  // not offered
            (TextKeyValues([("CHAP_I", "1"), ("CHAP_C", "0x00")]), "CHAP_A"),
            (TextKeyValues([("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x00"), ("MaxBurstLength", "512")]), "MaxBurstLength"),
        ] as [(TextKeyValues, String)] {
            var machine = try Self.machine(chap: Self.oneWay)
            _ = machine.start()
            _ = try machine.receive(Self.security(transit: false, ["AuthMethod": "CHAP"]))
            #expect(performing: { _ = try machine.receive(Self.security(transit: false, keys)) },
                    throws: { ($0 as? LoginError)?.key == key })
        }
    }

    // MARK: - Algorithms

    @Test func algorithmsAreOfferedStrongestFirst() throws {
        var machine = try Self.machine(chap: Self.oneWay, algorithms: [.md5, .sha1, .sha3_256, .sha256, .md5])
        _ = machine.start()
        let step = try #require(Self.request(try machine.receive(Self.security(transit: false, ["AuthMethod": "CHAP"]))))
        #expect(step.keys["CHAP_A"] == "8,7,6,5")
    }

    @Test func algorithmRejectedSuggestsMD5Retry() throws {
        var machine = try Self.machine(chap: Self.oneWay, algorithms: [.sha256, .md5])
        _ = machine.start()
        _ = try machine.receive(Self.security(transit: false, ["AuthMethod": "CHAP"]))
        #expect {
            _ = try machine.receive(Self.security(transit: false, ["CHAP_A": "Reject"]))
        } throws: { error in
            let error = error as? LoginError
            return error?.kind == .chapAlgorithmRejected && error?.retryCHAPAlgorithms == [.md5]
        }
        // A login reject while the algorithm list is pending means the same.
        machine = try Self.machine(chap: Self.oneWay, algorithms: [.sha256, .md5])
        _ = machine.start()
        _ = try machine.receive(Self.security(transit: false, ["AuthMethod": "CHAP"]))
        #expect(performing: { _ = try machine.receive(Self.failure(0x0200)) },
                throws: { ($0 as? LoginError)?.kind == .chapAlgorithmRejected })
    }

    @Test func md5OnlyRejectionIsFinal() throws {
        var machine = try Self.machine(chap: Self.oneWay)
        _ = machine.start()
        _ = try machine.receive(Self.security(transit: false, ["AuthMethod": "CHAP"]))
        #expect {
            _ = try machine.receive(Self.security(transit: false, ["CHAP_A": "Reject"]))
        } throws: { ($0 as? LoginError)?.kind == .authenticationMethodRejected }
    }

    @Test func sha256WithA32ByteChallenge() throws {
        var machine = try Self.machine(chap: Self.oneWay, algorithms: [.sha256, .md5])
        let challenge = Array(UInt8(0)..<32)
        let response = try Self.chapResponse(&machine, algorithm: "7", challenge: TextValue.hexConstant(challenge),
                                             expectedOffer: "7,5")
        let expected = CHAP.response(algorithm: .sha256, identifier: 1, secret: Array("secretsecret".utf8),
                                     challenge: challenge)
        #expect(response.keys["CHAP_R"] == TextValue.hexConstant(expected))
        #expect(expected.count == 32)
    }

    /// tgt treats CHAP_A=7 as SHA-1 and sends 25...49 byte challenges.
    @Test func tgtSevenMeansSHA1() throws {
        var machine = try Self.machine(chap: Self.oneWay, algorithms: [.sha256, .md5])
        let response = try Self.chapResponse(&machine, algorithm: "7", identifier: "3",
                                             challenge: TextValue.hexConstant(Array(UInt8(0)..<25)),
                                             expectedOffer: "7,5")
        // hashlib.sha1(bytes([3]) + b"secretsecret" + bytes(range(25))).hexdigest()
        #expect(response.keys["CHAP_R"] == "0xf178a2e9f01509849c1772a175b0e0c57235456b")
        // If the guess was wrong the target refuses the response: retry with MD5.
        #expect(performing: { _ = try machine.receive(Self.failure(0x0201)) },
                throws: { ($0 as? LoginError)?.kind == .chapAlgorithmRejected })
    }

    @Test func mutualCHAPWithTgtSHA1() throws {
        var machine = try Self.machine(chap: Self.mutual, algorithms: [.sha256, .md5])
        let response = try Self.chapResponse(&machine, algorithm: "7", identifier: "3",
                                             challenge: TextValue.hexConstant(Array(UInt8(0)..<25)),
                                             expectedOffer: "7,5")
        // Our challenge is as long as the SHA-1 digest.
        let ourChallengeText = try #require(response.keys["CHAP_C"])
        let ours = try #require(TextValue.decodeBinary(ourChallengeText))
        #expect(ours.count == 20)
        let targetAnswer = CHAP.response(algorithm: .sha1, identifier: 0xaa, secret: Array("targetsecret99".utf8),
                                         challenge: ours)
        let action = try machine.receive(Self.security(transit: true, [
            "CHAP_N": "target", "CHAP_R": TextValue.hexConstant(targetAnswer),
        ]))
        _ = try Self.finishOperational(&machine, after: action)
    }

    // MARK: - Continue bit

    @Test func continuedResponseIsAccumulated() throws {
        var machine = try Self.machine()
        _ = machine.start()
        var part1 = Self.security(transit: false, [:], continue: true)
        part1.text = ByteBuffer(string: "TargetPortalGroupTag=1\0AuthMeth")
        let fetch = try #require(Self.request(try machine.receive(part1)))
        #expect(fetch.keys.isEmpty)
        #expect(fetch.csg == .securityNegotiation)
        #expect(!fetch.continue)
        var part2 = Self.security(transit: true, [:])
        part2.text = ByteBuffer(string: "od=None\0")
        let action = try machine.receive(part2)
        let parameters = try Self.finishOperational(&machine, after: action)
        #expect(parameters.targetPortalGroupTag == 1)
    }

    @Test func continueWithTransitIsAViolation() throws {
        var machine = try Self.machine()
        _ = machine.start()
        var response = Self.security(transit: true, ["AuthMethod": "None"], continue: true)
        response.continue = true
        #expect(throws: LoginError.self) { try machine.receive(response) }
    }

    @Test func oversizedContinuedTextIsRefused() throws {
        var machine = try Self.machine { $0.textLimits = TextLimits(maxTotalBytes: 1024) }
        _ = machine.start()
        var part = Self.security(transit: false, [:], continue: true)
        part.text = ByteBuffer(string: "TargetAlias=" + String(repeating: "a", count: 600))
        _ = try machine.receive(part)
        #expect(performing: { _ = try machine.receive(part) },
                throws: { ($0 as? LoginError)?.kind == .malformedText })
    }

    // MARK: - Operational stage

    @Test func targetOffersInOperationalStageAreAnswered() throws {
        var machine = try Self.machine()
        _ = machine.start()
        _ = try machine.receive(Self.security(transit: true, ["AuthMethod": "None"]))
        var partial = Self.operationalAnswers
        partial.append("X-com.example.tweak", "on")
        partial.append("TaskReporting", "RFC3720")
        let replies = try #require(Self.request(try machine.receive(Self.operational(transit: false, partial))))
        #expect(replies.transit)
        #expect(replies.keys == ["X-com.example.tweak": "NotUnderstood", "TaskReporting": "RFC3720"])
        let done = try machine.receive(Self.operational(transit: true, [:], tsih: 9))
        guard case .complete(let parameters, tsih: 9) = done else { throw LoginError(.protocolViolation, "\(done)") }
        #expect(parameters.maxBurstLength == 1_048_576)
    }

    @Test func finalResponseMustNotCarryOffers() throws {
        var machine = try Self.machine()
        _ = machine.start()
        _ = try machine.receive(Self.security(transit: true, ["AuthMethod": "None"]))
        #expect {
            _ = try machine.receive(Self.operational(transit: true, ["X-com.example.tweak": "on"]))
        } throws: { ($0 as? LoginError)?.key == "X-com.example.tweak" }
    }

    @Test func endlessNegotiationIsCut() throws {
        var machine = try Self.machine()
        _ = machine.start()
        _ = try machine.receive(Self.security(transit: true, ["AuthMethod": "None"]))
        #expect(throws: LoginError.self) {
            for _ in 0..<100 { _ = try machine.receive(Self.operational(transit: false, [:])) }
        }
    }

    // MARK: - Header rules

    @Test func headerViolations() throws {
        // T=1 while the request had T=0.
        var machine = try Self.machine(chap: Self.oneWay)
        _ = machine.start()
        #expect(throws: LoginError.self) { try machine.receive(Self.security(transit: true, ["AuthMethod": "CHAP"])) }
        // CSG mismatch.
        machine = try Self.machine()
        _ = machine.start()
        #expect(throws: LoginError.self) { try machine.receive(Self.operational(transit: true, [:])) }
        // A jump to FullFeaturePhase the initiator did not ask for.
        machine = try Self.machine()
        _ = machine.start()
        #expect(throws: LoginError.self) {
            try machine.receive(LoginResponseSummary(transit: true, csg: .securityNegotiation, nsg: .fullFeaturePhase,
                                                     keys: ["AuthMethod": "None"]))
        }
        // Reserved stage code.
        machine = try Self.machine()
        _ = machine.start()
        #expect(throws: LoginError.self) {
            try machine.receive(LoginResponseSummary(transit: true, csg: .securityNegotiation,
                                                     nsg: LoginStage(rawValue: 2), keys: ["AuthMethod": "None"]))
        }
        // Duplicate key in one response.
        machine = try Self.machine()
        _ = machine.start()
        var duplicate = Self.security(transit: true, [:])
        duplicate.text = ByteBuffer(string: "AuthMethod=None\0AuthMethod=None\0")
        #expect(performing: { _ = try machine.receive(duplicate) },
                throws: { ($0 as? LoginError)?.key == "AuthMethod" })
        // A response before start().
        machine = try Self.machine()
        #expect(throws: LoginError.self) { try machine.receive(Self.security(transit: true, [:])) }
    }

    // MARK: - Status

    @Test func redirects() throws {
        var machine = try Self.machine()
        _ = machine.start()
        #expect(try machine.receive(Self.failure(0x0101, ["TargetAddress": "10.0.0.2:3261"]))
            == .redirect(address: "10.0.0.2:3261", temporary: true))
        machine = try Self.machine()
        _ = machine.start()
        #expect(try machine.receive(Self.failure(0x0102, ["TargetAddress": "[2001:db8::1]"]))
            == .redirect(address: "[2001:db8::1]", temporary: false))
        machine = try Self.machine()
        _ = machine.start()
        #expect(performing: { _ = try machine.receive(Self.failure(0x0101)) },
                throws: { ($0 as? LoginError)?.key == "TargetAddress" })
    }

    @Test(arguments: [
        (UInt16(0x0200), "initiator error"), (0x0201, "authentication failed"), (0x0202, "not allowed"),
        (0x0203, "not found"), (0x0204, "removed"), (0x0205, "version"), (0x0206, "too many connections"),
        (0x0207, "missing parameter"), (0x0208, "cannot include"), (0x0209, "session type not supported"),
        (0x020a, "session does not exist"), (0x020b, "invalid request type during login"),
        (0x0300, "target hardware or software error"), (0x0301, "unavailable"), (0x0302, "out of resources"),
        (0x0299, "initiator error (unknown detail)"), (0x0377, "target error (unknown detail)"),
        (0x0500, "unknown status class"),
    ])
    func statusMessages(code: UInt16, text: String) throws {
        var machine = try Self.machine()
        _ = machine.start()
        #expect {
            _ = try machine.receive(Self.failure(code))
        } throws: { error in
            guard let error = error as? LoginError, case .rejectedByTarget(let status) = error.kind else { return false }
            return status.code == code && error.description.contains(text)
                && error.description.contains(String(format: "0x%04x", code))
                && error.isPermanent == (code >> 8 == 2)
        }
        #expect(LoginStatus(code: code).isRetryable == (code >> 8 == 3))
    }

    // MARK: - Configuration

    @Test func invalidConfigurations() {
        #expect(throws: LoginError.self) { try Self.machine(targetName: "") }
        #expect(throws: LoginError.self) {
            try LoginStateMachine(configuration: LoginConfiguration(initiatorName: "", targetName: nil))
        }
        #expect(throws: LoginError.self) { try Self.machine(proposal: .init(maxBurstLength: 100)) }
        #expect(throws: LoginError.self) { try Self.machine(chap: Self.oneWay, algorithms: []) }
        #expect(throws: LoginError.self) { try Self.machine(chap: CHAPCredentials(username: "", secret: "x")) }
    }

    @Test func requestDescriptionRedactsCHAPResponse() throws {
        var machine = try Self.machine(chap: Self.oneWay)
        let response = try Self.chapResponse(&machine)
        #expect(!response.description.contains("226dc576"))
    }
}

/// A thread-safe call counter for the random source.
final class Counter: @unchecked Sendable {
    // SAFETY: `value` is only accessed under `lock`.
    private let lock = NSLock()
    private var value = 0

    func next() -> Int {
        lock.lock()
        defer { lock.unlock() }
        value += 1
        return value - 1
    }
}
