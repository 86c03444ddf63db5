import ISCSIProtocol

/// One Data-Out PDU to send: a byte range of the command's buffer and its sequence fields.
public struct DataOutSegment: Hashable, Sendable {
    public var bufferOffset: Int
    public var length: Int
    public var dataSN: UInt32
    public var final: Bool
    public var targetTransferTag: UInt32
}

/// How a write's data is sent (RFC 7143 §4.2.5.2 "Data Transfer", §13.10, §13.11, §13.14): immediate
/// data in the SCSI Command PDU, unsolicited Data-Out PDUs, then R2T-solicited Data-Out PDUs.
public enum DataOutPlanner {
    /// Bytes carried in the SCSI Command PDU itself: with ImmediateData=Yes, up to
    /// min(FirstBurstLength, the target's MaxRecvDataSegmentLength) (RFC 7143 §13.11, §13.14).
    public static func immediateLength(total: Int, parameters p: SessionParameters) -> Int {
        guard p.immediateData else { return 0 }
        return min(total, p.firstBurstLength, p.targetMaxRecvDataSegmentLength)
    }

    /// All unsolicited bytes (immediate + unsolicited Data-Out): with InitialR2T=No, up to
    /// FirstBurstLength (RFC 7143 §13.10, §13.14: FirstBurstLength covers both); else immediate only.
    public static func unsolicitedLength(total: Int, parameters p: SessionParameters) -> Int {
        let immediate = immediateLength(total: total, parameters: p)
        guard !p.initialR2T else { return immediate }
        return min(total, p.firstBurstLength)
    }

    /// The Data-Out PDUs that answer a range (an R2T, or the unsolicited burst with TTT 0xffffffff),
    /// each at most `maxSegment` bytes; DataSN counts from 0 and F marks the last
    /// (RFC 7143 §11.7.1, §11.7.5).
    public static func segments(offset: Int, length: Int, maxSegment: Int, targetTransferTag: UInt32) -> DataOutSequence {
        DataOutSequence(offset: offset, length: length, maxSegment: maxSegment, targetTransferTag: targetTransferTag)
    }
}

/// A lazy sequence of Data-Out segments (no array per R2T).
public struct DataOutSequence: Sequence, IteratorProtocol, Sendable {
    private var position: Int
    private let end: Int
    private let maxSegment: Int
    private var dataSN: UInt32 = 0
    private let ttt: UInt32

    init(offset: Int, length: Int, maxSegment: Int, targetTransferTag: UInt32) {
        precondition(maxSegment > 0)
        self.position = offset
        self.end = offset + length
        self.maxSegment = maxSegment
        self.ttt = targetTransferTag
    }

    public mutating func next() -> DataOutSegment? {
        guard position < end else { return nil }
        let length = Swift.min(maxSegment, end - position)
        let segment = DataOutSegment(
            bufferOffset: position, length: length, dataSN: dataSN, final: position + length == end,
            targetTransferTag: ttt
        )
        position += length
        dataSN &+= 1
        return segment
    }
}
