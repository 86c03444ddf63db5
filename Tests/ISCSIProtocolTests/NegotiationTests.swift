import ISCSIProtocol
import Testing

/// Table tests of the RFC 7143 §13 key rules, one negotiation at a time.
@Suite struct NegotiationTests {
    private func normal(_ proposal: SessionParameterProposal = .init()) -> OperationalNegotiation {
        var negotiation = OperationalNegotiation(proposal: proposal, sessionType: .normal)
        _ = negotiation.initialOffer()
        return negotiation
    }

    private func answer(_ keys: TextKeyValues, proposal: SessionParameterProposal = .init())
        throws(LoginError) -> OperationalParameters
    {
        var negotiation = normal(proposal)
        let replies = try negotiation.process(keys, stage: .loginOperationalNegotiation)
        #expect(replies.isEmpty)
        return try negotiation.finish()
    }

    @Test func normalOfferUsesOpenISCSIDefaults() {
        var negotiation = OperationalNegotiation(proposal: .init(), sessionType: .normal)
        let offer = negotiation.initialOffer()
        #expect(offer == [
            "HeaderDigest": "None", "DataDigest": "None", "DefaultTime2Wait": "2", "DefaultTime2Retain": "0",
            "ErrorRecoveryLevel": "0", "InitialR2T": "No", "ImmediateData": "Yes", "MaxBurstLength": "16776192",
            "FirstBurstLength": "262144", "MaxOutstandingR2T": "1", "MaxConnections": "1", "DataPDUInOrder": "Yes",
            "DataSequenceInOrder": "Yes", "MaxRecvDataSegmentLength": "262144",
        ])
        #expect(negotiation.parameters.initiatorMaxRecvDataSegmentLength == 262144)
    }

    @Test func discoveryOfferOnlyHasRelevantKeys() {
        var negotiation = OperationalNegotiation(
            proposal: .init(headerDigests: [.crc32c, .none], errorRecoveryLevel: 2), sessionType: .discovery)
        let offer = negotiation.initialOffer()
        #expect(offer.keys == ["HeaderDigest", "DataDigest", "DefaultTime2Wait", "DefaultTime2Retain",
                               "ErrorRecoveryLevel", "MaxRecvDataSegmentLength"])
        #expect(offer["HeaderDigest"] == "CRC32C,None")
        // §13.21: ErrorRecoveryLevel MUST be 0 for Discovery sessions.
        #expect(offer["ErrorRecoveryLevel"] == "0")
    }

    @Test func typicalTargetAnswers() throws {
        let params = try answer([
            "HeaderDigest": "None", "DataDigest": "None", "DefaultTime2Wait": "2", "DefaultTime2Retain": "0",
            "ErrorRecoveryLevel": "0", "InitialR2T": "Yes", "ImmediateData": "Yes", "MaxBurstLength": "262144",
            "FirstBurstLength": "65536", "MaxOutstandingR2T": "1", "MaxConnections": "1", "DataPDUInOrder": "Yes",
            "DataSequenceInOrder": "Yes", "MaxRecvDataSegmentLength": "8192", "TargetAlias": "disk",
            "TargetPortalGroupTag": "1",
        ])
        #expect(params.initialR2T)
        #expect(params.immediateData)
        #expect(params.maxBurstLength == 262144)
        #expect(params.firstBurstLength == 65536)
        #expect(params.defaultTime2Retain == 0)
        #expect(params.targetMaxRecvDataSegmentLength == 8192)
        #expect(params.initiatorMaxRecvDataSegmentLength == 262144)
        #expect(params.targetAlias == "disk")
        #expect(params.targetPortalGroupTag == 1)
        #expect(params.unsolicitedDataLimit == 65536)
    }

    /// (proposal tweak, key, answer, expected check) for admissible answers.
    @Test(arguments: [
        ("MaxBurstLength", "65536", 65536),
        ("MaxBurstLength", "512", 512),
        ("FirstBurstLength", "0x1000", 4096),
        ("DefaultTime2Wait", "3600", 3600),
        ("DefaultTime2Retain", "0", 0),
        ("MaxOutstandingR2T", "1", 1),
        ("MaxConnections", "1", 1),
        ("ErrorRecoveryLevel", "0", 0),
    ])
    func admissibleNumericAnswers(key: String, value: String, expected: Int) throws {
        let params = try answer(TextKeyValues([(key, value)]))
        let actual: Int
        switch key {
        case "MaxBurstLength": actual = params.maxBurstLength
        case "FirstBurstLength": actual = params.firstBurstLength
        case "DefaultTime2Wait": actual = params.defaultTime2Wait
        case "DefaultTime2Retain": actual = params.defaultTime2Retain
        case "MaxOutstandingR2T": actual = params.maxOutstandingR2T
        case "MaxConnections": actual = params.maxConnections
        default: actual = params.errorRecoveryLevel
        }
        #expect(actual == expected)
    }

    /// Answers that break the key's result function or range: protocol error naming the key.
    @Test(arguments: [
        ("MaxBurstLength", "16776193"),  // Minimum: above the offer
        ("MaxBurstLength", "511"),  // below the range
        ("MaxBurstLength", "lots"),
        ("FirstBurstLength", "262145"),
        ("DefaultTime2Wait", "1"),  // Maximum: below the offer
        ("DefaultTime2Wait", "3601"),
        ("DefaultTime2Retain", "1"),
        ("MaxOutstandingR2T", "0"),
        ("MaxOutstandingR2T", "2"),
        ("MaxConnections", "2"),
        ("ErrorRecoveryLevel", "1"),
        ("DataPDUInOrder", "No"),  // OR: offered Yes must stay Yes
        ("DataSequenceInOrder", "Maybe"),
        ("HeaderDigest", "CRC32C"),  // not offered
        ("DataDigest", "Bogus"),
        ("MaxConnections", "NotUnderstood"),  // RFC 7143 keys must be understood
        ("MaxRecvDataSegmentLength", "100"),
        ("MaxRecvDataSegmentLength", "16777216"),
        ("TargetPortalGroupTag", "65536"),
        ("InitiatorName", "iqn.bogus"),  // initiator-only key from the target
        ("AuthMethod", "None"),  // security key in the operational stage
        ("SendTargets", "All"),
        ("X-com.example.thing", "Reject"),  // reserved constant answering something never proposed
    ])
    func inadmissibleAnswers(key: String, value: String) {
        #expect {
            _ = try answer(TextKeyValues([(key, value)]))
        } throws: { error in
            guard let error = error as? LoginError else { return false }
            return error.kind == .protocolViolation && error.key == key
        }
    }

    @Test func booleanFunctions() throws {
        // OR (InitialR2T): offered No, either answer is admissible.
        #expect(try answer(["InitialR2T": "No"]).initialR2T == false)
        #expect(try answer(["InitialR2T": "Yes"]).initialR2T == true)
        // AND (ImmediateData): offered Yes, either answer.
        #expect(try answer(["ImmediateData": "No"]).immediateData == false)
        // AND with No offered: answering Yes is a protocol error; the answer is optional (result No).
        let noImmediate = SessionParameterProposal(immediateData: false)
        #expect(throws: LoginError.self) { try answer(["ImmediateData": "Yes"], proposal: noImmediate) }
        #expect(try answer([:], proposal: noImmediate).immediateData == false)
        // OR with Yes offered: optional answer, result Yes.
        #expect(try answer([:], proposal: .init(initialR2T: true)).initialR2T == true)
        // An unanswered InitialR2T=No stays at the default Yes.
        #expect(try answer([:]).initialR2T == true)
    }

    @Test func digestLists() throws {
        let both = SessionParameterProposal(headerDigests: [.crc32c, .none], dataDigests: [.crc32c, .none])
        let params = try answer(["HeaderDigest": "CRC32C", "DataDigest": "None"], proposal: both)
        #expect(params.headerDigest == .crc32c)
        #expect(params.dataDigest == .none)
        // Reject leaves the default None: fine when None was offered...
        #expect(try answer(["HeaderDigest": "Reject"], proposal: both).headerDigest == .none)
        // ...a failure when the configuration requires a digest.
        let required = SessionParameterProposal(headerDigests: [.crc32c])
        #expect {
            _ = try answer(["HeaderDigest": "Reject"], proposal: required)
        } throws: { ($0 as? LoginError)?.kind == .negotiationFailed }
        #expect {
            _ = try answer([:], proposal: required)
        } throws: { ($0 as? LoginError)?.key == "HeaderDigest" }
        #expect(ISCSIDigest.parseList("CRC32C, None") == [.crc32c, .none])
        #expect(ISCSIDigest.parseList("crc32c") == [.crc32c])
        #expect(ISCSIDigest.parseList("MD5") == nil)
        #expect(ISCSIDigest.parseList("") == nil)
    }

    @Test func rejectAndIrrelevantKeepDefaults() throws {
        let params = try answer(["FirstBurstLength": "Irrelevant", "MaxBurstLength": "Reject",
                                 "ImmediateData": "Reject"])
        #expect(params.firstBurstLength == 65536)
        #expect(params.maxBurstLength == 262144)
        #expect(params.immediateData == true)
    }

    @Test func protocolLevelNotUnderstoodMeansZero() throws {
        let params = try answer(["iSCSIProtocolLevel": "NotUnderstood"], proposal: .init(iSCSIProtocolLevel: 1))
        #expect(params.iSCSIProtocolLevel == 0)
        #expect(try answer(["iSCSIProtocolLevel": "1"], proposal: .init(iSCSIProtocolLevel: 1)).iSCSIProtocolLevel == 1)
        #expect(throws: LoginError.self) {
            try answer(["iSCSIProtocolLevel": "2"], proposal: .init(iSCSIProtocolLevel: 1))
        }
    }

    @Test func firstBurstIsClampedToMaxBurst() throws {
        let params = try answer(["MaxBurstLength": "65536", "FirstBurstLength": "262144"])
        #expect(params.maxBurstLength == 65536)
        #expect(params.firstBurstLength == 65536)
    }

    @Test func targetOffersAreAnsweredByTheirRule() throws {
        var negotiation = normal(.init(headerDigests: [.crc32c, .none]))
        let replies = try negotiation.process([
            "TaskReporting": "ResponseFence,RFC3720", "X-com.example.feature": "1", "X#Thing": "a",
            "IFMarker": "No", "OFMarkInt": "1~65535", "iSCSIProtocolLevel": "2",
        ], stage: .loginOperationalNegotiation)
        #expect(replies == [
            "TaskReporting": "RFC3720", "X-com.example.feature": "NotUnderstood", "X#Thing": "NotUnderstood",
            "IFMarker": "Reject", "OFMarkInt": "Reject", "iSCSIProtocolLevel": "1",
        ])
        #expect(negotiation.parameters.iSCSIProtocolLevel == 1)
    }

    @Test func targetOfferWithoutCommonValueIsRejected() throws {
        var negotiation = OperationalNegotiation(proposal: .init(), sessionType: .normal)
        // Nothing proposed yet: these are offers from the target.
        let replies = try negotiation.process([
            "HeaderDigest": "CRC32C", "MaxBurstLength": "100", "InitialR2T": "Perhaps", "TaskReporting": "FastAbort",
            "DefaultTime2Wait": "10", "MaxConnections": "4", "DataDigest": "X-unknown,None",
        ], stage: .loginOperationalNegotiation)
        #expect(replies == [
            "HeaderDigest": "Reject", "MaxBurstLength": "Reject", "InitialR2T": "Reject", "TaskReporting": "Reject",
            "DefaultTime2Wait": "10", "MaxConnections": "1", "DataDigest": "None",
        ])
        #expect(negotiation.parameters.defaultTime2Wait == 10)
    }

    @Test func discoverySessionAnswersIrrelevant() throws {
        var negotiation = OperationalNegotiation(proposal: .init(), sessionType: .discovery)
        _ = negotiation.initialOffer()
        let replies = try negotiation.process(["MaxBurstLength": "65536", "HeaderDigest": "None"],
                                              stage: .loginOperationalNegotiation)
        #expect(replies == ["MaxBurstLength": "Irrelevant"])
    }

    @Test func renegotiationIsAProtocolError() throws {
        var negotiation = normal()
        _ = try negotiation.process(["MaxBurstLength": "65536"], stage: .loginOperationalNegotiation)
        #expect {
            _ = try negotiation.process(["MaxBurstLength": "65536"], stage: .loginOperationalNegotiation)
        } throws: { ($0 as? LoginError)?.key == "MaxBurstLength" }
    }

    @Test func operationalKeysAreNotAllowedInSecurityStage() throws {
        var negotiation = OperationalNegotiation(proposal: .init(), sessionType: .normal)
        #expect(try negotiation.process(["TargetAlias": "a", "TargetPortalGroupTag": "7",
                                         "TargetAddress": "10.0.0.1:3260,7"],
                                        stage: .securityNegotiation).isEmpty)
        #expect(negotiation.parameters.targetPortalGroupTag == 7)
        #expect(negotiation.parameters.targetAddresses == ["10.0.0.1:3260,7"])
        for key in ["MaxBurstLength", "MaxRecvDataSegmentLength", "IFMarker"] {
            #expect(throws: LoginError.self) {
                _ = try negotiation.process(TextKeyValues([(key, "65536")]), stage: .securityNegotiation)
            }
        }
    }

    @Test func proposalValidation() {
        #expect(SessionParameterProposal().validationProblem() == nil)
        #expect(SessionParameterProposal(maxBurstLength: 65536, firstBurstLength: 262144).validationProblem() != nil)
        #expect(SessionParameterProposal(maxRecvDataSegmentLength: 100).validationProblem() != nil)
        #expect(SessionParameterProposal(errorRecoveryLevel: 3).validationProblem() != nil)
        #expect(SessionParameterProposal(headerDigests: []).validationProblem() != nil)
        #expect(SessionParameterProposal(iSCSIProtocolLevel: 2).validationProblem() != nil)
    }
}
