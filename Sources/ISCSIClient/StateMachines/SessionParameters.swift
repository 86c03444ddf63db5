import ISCSIProtocol

/// The negotiated values the full feature phase needs (RFC 7143 §13), seen from the initiator.
public struct SessionParameters: Hashable, Sendable {
    /// HeaderDigest / DataDigest = CRC32C (RFC 7143 §13.1).
    public var digests: DigestSettings
    /// What we declared: the largest data segment the target may send us (RFC 7143 §13.12).
    public var initiatorMaxRecvDataSegmentLength: Int
    /// What the target declared: the largest data segment we may send it.
    public var targetMaxRecvDataSegmentLength: Int
    /// RFC 7143 §13.13.
    public var maxBurstLength: Int
    /// RFC 7143 §13.14.
    public var firstBurstLength: Int
    /// RFC 7143 §13.10.
    public var initialR2T: Bool
    /// RFC 7143 §13.11.
    public var immediateData: Bool
    /// RFC 7143 §13.17.
    public var maxOutstandingR2T: Int
    /// RFC 7143 §13.18, §13.19.
    public var dataPDUInOrder: Bool
    public var dataSequenceInOrder: Bool
    /// RFC 7143 §13.20.
    public var errorRecoveryLevel: Int
    public var defaultTime2Wait: Int
    public var defaultTime2Retain: Int

    /// RFC 7143 §13 defaults.
    public init(
        digests: DigestSettings = .none,
        initiatorMaxRecvDataSegmentLength: Int = 8192,
        targetMaxRecvDataSegmentLength: Int = 8192,
        maxBurstLength: Int = 262_144,
        firstBurstLength: Int = 65_536,
        initialR2T: Bool = true,
        immediateData: Bool = true,
        maxOutstandingR2T: Int = 1,
        dataPDUInOrder: Bool = true,
        dataSequenceInOrder: Bool = true,
        errorRecoveryLevel: Int = 0,
        defaultTime2Wait: Int = 2,
        defaultTime2Retain: Int = 20
    ) {
        self.digests = digests
        self.initiatorMaxRecvDataSegmentLength = initiatorMaxRecvDataSegmentLength
        self.targetMaxRecvDataSegmentLength = targetMaxRecvDataSegmentLength
        self.maxBurstLength = maxBurstLength
        self.firstBurstLength = firstBurstLength
        self.initialR2T = initialR2T
        self.immediateData = immediateData
        self.maxOutstandingR2T = maxOutstandingR2T
        self.dataPDUInOrder = dataPDUInOrder
        self.dataSequenceInOrder = dataSequenceInOrder
        self.errorRecoveryLevel = errorRecoveryLevel
        self.defaultTime2Wait = defaultTime2Wait
        self.defaultTime2Retain = defaultTime2Retain
    }

    /// The values the full feature phase uses, from the login's negotiation result.
    public init(_ p: OperationalParameters) {
        self.init(
            digests: DigestSettings(header: p.headerDigest == .crc32c, data: p.dataDigest == .crc32c),
            initiatorMaxRecvDataSegmentLength: p.initiatorMaxRecvDataSegmentLength,
            targetMaxRecvDataSegmentLength: p.targetMaxRecvDataSegmentLength,
            maxBurstLength: p.maxBurstLength,
            firstBurstLength: p.firstBurstLength,
            initialR2T: p.initialR2T,
            immediateData: p.immediateData,
            maxOutstandingR2T: p.maxOutstandingR2T,
            dataPDUInOrder: p.dataPDUInOrder,
            dataSequenceInOrder: p.dataSequenceInOrder,
            errorRecoveryLevel: p.errorRecoveryLevel,
            defaultTime2Wait: p.defaultTime2Wait,
            defaultTime2Retain: p.defaultTime2Retain
        )
    }
}
