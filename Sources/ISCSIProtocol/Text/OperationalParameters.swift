/// A digest for headers or data (RFC 7143 §13.1).
public enum ISCSIDigest: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case none = "None"
    case crc32c = "CRC32C"

    public var description: String { rawValue }

    /// Parses a configured list such as "CRC32C,None" (open-iscsi `node.conn[0].iscsi.HeaderDigest`).
    /// Returns nil on an unknown name or an empty list.
    public static func parseList(_ text: String) -> [ISCSIDigest]? {
        var result = [ISCSIDigest]()
        for item in text.split(separator: ",") {
            let name = item.trimmingSpaces
            guard let digest = ISCSIDigest.allCases.first(where: { $0.rawValue.lowercased() == name.lowercased() }) else {
                return nil
            }
            if !result.contains(digest) { result.append(digest) }
        }
        return result.isEmpty ? nil : result
    }
}

extension Substring {
    var trimmingSpaces: String {
        String(self.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}

/// RFC 7143 §13.21 SessionType.
public enum SessionType: String, Sendable, Hashable {
    case normal = "Normal"
    case discovery = "Discovery"
}

/// What the initiator proposes during LoginOperationalNegotiation.
///
/// Defaults follow open-iscsi's `iscsid.conf` defaults (InitialR2T=No, ImmediateData=Yes,
/// FirstBurstLength=262144, MaxBurstLength=16776192, MaxRecvDataSegmentLength=262144, digests None,
/// MaxOutstandingR2T=1, ErrorRecoveryLevel=0, DefaultTime2Wait=2, DefaultTime2Retain=0, MaxConnections=1).
/// DefaultTime2Retain=0 (RFC default 20) is deliberate: at ErrorRecoveryLevel 0 there is no task
/// reassignment, so asking the target to retain task state after a connection loss has no use (§13.16:
/// "A value of 0 indicates that connection/task state is immediately discarded by the target").
public struct SessionParameterProposal: Sendable, Hashable {
    /// In order of preference; "None" must be listed to allow running without a digest.
    public var headerDigests: [ISCSIDigest]
    public var dataDigests: [ISCSIDigest]
    public var maxConnections: Int
    public var initialR2T: Bool
    public var immediateData: Bool
    /// Declared (not negotiated): the largest data segment this initiator accepts (§13.12).
    public var maxRecvDataSegmentLength: Int
    public var maxBurstLength: Int
    public var firstBurstLength: Int
    public var defaultTime2Wait: Int
    public var defaultTime2Retain: Int
    public var maxOutstandingR2T: Int
    public var dataPDUInOrder: Bool
    public var dataSequenceInOrder: Bool
    public var errorRecoveryLevel: Int
    /// RFC 7144 §7.1.1 iSCSIProtocolLevel; nil = not proposed (like open-iscsi). This initiator claims 1
    /// (RFC 7143) at most.
    public var iSCSIProtocolLevel: Int?

    public init(headerDigests: [ISCSIDigest] = [.none], dataDigests: [ISCSIDigest] = [.none],
                maxConnections: Int = 1, initialR2T: Bool = false, immediateData: Bool = true,
                maxRecvDataSegmentLength: Int = 262_144, maxBurstLength: Int = 16_776_192,
                firstBurstLength: Int = 262_144, defaultTime2Wait: Int = 2, defaultTime2Retain: Int = 0,
                maxOutstandingR2T: Int = 1, dataPDUInOrder: Bool = true, dataSequenceInOrder: Bool = true,
                errorRecoveryLevel: Int = 0, iSCSIProtocolLevel: Int? = nil) {
        self.headerDigests = headerDigests
        self.dataDigests = dataDigests
        self.maxConnections = maxConnections
        self.initialR2T = initialR2T
        self.immediateData = immediateData
        self.maxRecvDataSegmentLength = maxRecvDataSegmentLength
        self.maxBurstLength = maxBurstLength
        self.firstBurstLength = firstBurstLength
        self.defaultTime2Wait = defaultTime2Wait
        self.defaultTime2Retain = defaultTime2Retain
        self.maxOutstandingR2T = maxOutstandingR2T
        self.dataPDUInOrder = dataPDUInOrder
        self.dataSequenceInOrder = dataSequenceInOrder
        self.errorRecoveryLevel = errorRecoveryLevel
        self.iSCSIProtocolLevel = iSCSIProtocolLevel
    }

    /// Checks every value against its RFC 7143 §13 range; returns a description of the first problem.
    public func validationProblem() -> String? {
        func check(_ name: String, _ value: Int, _ range: ClosedRange<Int>) -> String? {
            range.contains(value) ? nil : "\(name)=\(value) is outside \(range.lowerBound)...\(range.upperBound)"
        }
        if headerDigests.isEmpty { return "HeaderDigest list is empty" }
        if dataDigests.isEmpty { return "DataDigest list is empty" }
        let segment = 512...16_777_215
        let checks: [String?] = [
            check("MaxConnections", maxConnections, 1...65535),
            check("MaxRecvDataSegmentLength", maxRecvDataSegmentLength, segment),
            check("MaxBurstLength", maxBurstLength, segment),
            check("FirstBurstLength", firstBurstLength, segment),
            check("DefaultTime2Wait", defaultTime2Wait, 0...3600),
            check("DefaultTime2Retain", defaultTime2Retain, 0...3600),
            check("MaxOutstandingR2T", maxOutstandingR2T, 1...65535),
            check("ErrorRecoveryLevel", errorRecoveryLevel, 0...2),
            iSCSIProtocolLevel.flatMap { check("iSCSIProtocolLevel", $0, 0...1) },
        ]
        if let problem = checks.compactMap({ $0 }).first { return problem }
        // §13.14: "FirstBurstLength MUST NOT exceed MaxBurstLength."
        if firstBurstLength > maxBurstLength {
            return "FirstBurstLength=\(firstBurstLength) exceeds MaxBurstLength=\(maxBurstLength)"
        }
        return nil
    }
}

/// The effective parameters of a session/connection after login.
///
/// Every field starts at its RFC 7143 §13 default and is changed only by a concluded negotiation or
/// declaration. MaxRecvDataSegmentLength is declarative and per direction (§13.12), so both sides' values
/// are kept: send PDUs no larger than `targetMaxRecvDataSegmentLength`, expect PDUs up to
/// `initiatorMaxRecvDataSegmentLength`.
public struct OperationalParameters: Sendable, Hashable {
    public var sessionType: SessionType
    public var headerDigest: ISCSIDigest
    public var dataDigest: ISCSIDigest
    public var maxConnections: Int
    public var initialR2T: Bool
    public var immediateData: Bool
    /// What this initiator declared: the target must not send data segments larger than this.
    public var initiatorMaxRecvDataSegmentLength: Int
    /// What the target declared (8192 if it did not): the initiator must not send larger data segments.
    public var targetMaxRecvDataSegmentLength: Int
    public var maxBurstLength: Int
    /// Already clamped to `maxBurstLength` (§13.14 integrity rule).
    public var firstBurstLength: Int
    public var defaultTime2Wait: Int
    public var defaultTime2Retain: Int
    public var maxOutstandingR2T: Int
    public var dataPDUInOrder: Bool
    public var dataSequenceInOrder: Bool
    public var errorRecoveryLevel: Int
    public var iSCSIProtocolLevel: Int
    public var taskReporting: String
    public var targetAlias: String?
    public var targetPortalGroupTag: UInt16?
    /// TargetAddress declarations seen during login (informational).
    public var targetAddresses: [String]

    /// RFC 7143 §13 defaults.
    public init(sessionType: SessionType = .normal) {
        self.sessionType = sessionType
        self.headerDigest = .none
        self.dataDigest = .none
        self.maxConnections = 1
        self.initialR2T = true
        self.immediateData = true
        self.initiatorMaxRecvDataSegmentLength = 8192
        self.targetMaxRecvDataSegmentLength = 8192
        self.maxBurstLength = 262_144
        self.firstBurstLength = 65536
        self.defaultTime2Wait = 2
        self.defaultTime2Retain = 20
        self.maxOutstandingR2T = 1
        self.dataPDUInOrder = true
        self.dataSequenceInOrder = true
        self.errorRecoveryLevel = 0
        self.iSCSIProtocolLevel = 1
        self.taskReporting = "RFC3720"
        self.targetAlias = nil
        self.targetPortalGroupTag = nil
        self.targetAddresses = []
    }

    /// Largest unsolicited (immediate + unsolicited Data-Out) payload per command: 0 when neither immediate
    /// data nor unsolicited Data-Out is allowed (RFC 7143 §13.11 table).
    public var unsolicitedDataLimit: Int {
        if initialR2T && !immediateData { return 0 }
        return firstBurstLength
    }
}
