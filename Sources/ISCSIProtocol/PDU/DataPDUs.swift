import NIOCore

extension ISCSIPDU {
    /// SCSI Data-Out (RFC 7143 §11.7).
    public struct DataOut: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.dataOut
        /// F: last PDU of the unsolicited burst or of the R2T's sequence (RFC 7143 §11.7.1).
        public var final = false
        public var lun: UInt64 = 0
        public var initiatorTaskTag: UInt32 = 0
        /// The R2T's tag, or 0xffffffff for unsolicited data (RFC 7143 §11.7.4).
        public var targetTransferTag: UInt32 = reservedTaskTag
        public var expStatSN = SerialNumber(0)
        /// Counts from 0 within each R2T sequence and within the unsolicited burst (RFC 7143 §11.7.5).
        public var dataSN = SerialNumber(0)
        public var bufferOffset: UInt32 = 0
        public var data: ByteBuffer = ISCSIPDU.emptyData

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            final = h.final
            lun = h.lun
            initiatorTaskTag = h.initiatorTaskTag
            targetTransferTag = h.field20
            expStatSN = SerialNumber(h.field28)
            dataSN = SerialNumber(h.field36)
            bufferOffset = h.field40
            data = pdu.data
        }

        public var pdu: ISCSIPDU { ISCSIPDU(header: header, data: data) }

        /// The BHS alone (for encoders that send the payload as a separate write).
        public var header: BasicHeaderSegment {
            var h = BasicHeaderSegment(opcode: Self.opcode, flags: final ? 0x80 : 0)
            h.dataSegmentLength = UInt32(truncatingIfNeeded: data.readableBytes)
            h.lun = lun
            h.initiatorTaskTag = initiatorTaskTag
            h.field20 = targetTransferTag
            h.field28 = expStatSN.rawValue
            h.field36 = dataSN.rawValue
            h.field40 = bufferOffset
            return h
        }
    }

    /// SCSI Data-In (RFC 7143 §11.7).
    public struct DataIn: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.dataIn
        public var final = false
        /// A: the target asks for a DataACK SNACK (ErrorRecoveryLevel > 0 only).
        public var acknowledge = false
        public var residualOverflow = false
        public var residualUnderflow = false
        /// S: the PDU carries the command's status (RFC 7143 §11.7.3); implies F.
        public var statusPresent = false
        public var status: UInt8 = 0
        public var lun: UInt64 = 0
        public var initiatorTaskTag: UInt32 = 0
        public var targetTransferTag: UInt32 = reservedTaskTag
        /// Valid only with S.
        public var statSN = SerialNumber(0)
        public var expCmdSN = SerialNumber(0)
        public var maxCmdSN = SerialNumber(0)
        public var dataSN = SerialNumber(0)
        public var bufferOffset: UInt32 = 0
        public var residualCount: UInt32 = 0
        public var data: ByteBuffer = ISCSIPDU.emptyData

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            final = h.final
            acknowledge = h.flags & 0x40 != 0
            residualOverflow = h.flags & 0x04 != 0
            residualUnderflow = h.flags & 0x02 != 0
            statusPresent = h.flags & 0x01 != 0
            // RFC 7143 §11.7.3: "If the S bit is set, the F bit MUST also be set"; O/U only with S.
            if statusPresent && !final { throw Self.malformed("S bit without F bit") }
            if residualOverflow && residualUnderflow { throw Self.malformed("both O and U set") }
            status = h.byte3
            lun = h.lun
            initiatorTaskTag = h.initiatorTaskTag
            targetTransferTag = h.field20
            statSN = SerialNumber(h.field24)
            expCmdSN = SerialNumber(h.field28)
            maxCmdSN = SerialNumber(h.field32)
            dataSN = SerialNumber(h.field36)
            bufferOffset = h.field40
            residualCount = h.field44
            data = pdu.data
        }

        public var signedResidual: Int64 {
            if residualUnderflow { return Int64(residualCount) }
            if residualOverflow { return -Int64(residualCount) }
            return 0
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode)
            h.flags = (final ? 0x80 : 0) | (acknowledge ? 0x40 : 0) | (residualOverflow ? 0x04 : 0)
                | (residualUnderflow ? 0x02 : 0) | (statusPresent ? 0x01 : 0)
            h.byte3 = status
            h.lun = lun
            h.initiatorTaskTag = initiatorTaskTag
            h.field20 = targetTransferTag
            h.field24 = statSN.rawValue
            h.field28 = expCmdSN.rawValue
            h.field32 = maxCmdSN.rawValue
            h.field36 = dataSN.rawValue
            h.field40 = bufferOffset
            h.field44 = residualCount
            return ISCSIPDU(header: h, data: data)
        }
    }

    /// Ready To Transfer (RFC 7143 §11.8).
    public struct ReadyToTransfer: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.readyToTransfer
        public var lun: UInt64 = 0
        public var initiatorTaskTag: UInt32 = 0
        public var targetTransferTag: UInt32 = 0
        public var statSN = SerialNumber(0)
        public var expCmdSN = SerialNumber(0)
        public var maxCmdSN = SerialNumber(0)
        public var r2tSN = SerialNumber(0)
        public var bufferOffset: UInt32 = 0
        public var desiredDataTransferLength: UInt32 = 0

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            // RFC 7143 §11.8.1: TotalAHSLength and DataSegmentLength MUST be 0.
            guard pdu.data.readableBytes == 0, h.totalAHSLength == 0 else { throw Self.malformed("R2T with data or AHS") }
            lun = h.lun
            initiatorTaskTag = h.initiatorTaskTag
            targetTransferTag = h.field20
            statSN = SerialNumber(h.field24)
            expCmdSN = SerialNumber(h.field28)
            maxCmdSN = SerialNumber(h.field32)
            r2tSN = SerialNumber(h.field36)
            bufferOffset = h.field40
            desiredDataTransferLength = h.field44
            // RFC 7143 §11.8.4: "The Desired Data Transfer Length MUST NOT be 0".
            guard desiredDataTransferLength > 0 else { throw Self.malformed("Desired Data Transfer Length 0") }
            // RFC 7143 §11.8.5: the TTT of an R2T is never the reserved value.
            guard targetTransferTag != reservedTaskTag else { throw Self.malformed("Target Transfer Tag 0xffffffff") }
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode, flags: 0x80)
            h.lun = lun
            h.initiatorTaskTag = initiatorTaskTag
            h.field20 = targetTransferTag
            h.field24 = statSN.rawValue
            h.field28 = expCmdSN.rawValue
            h.field32 = maxCmdSN.rawValue
            h.field36 = r2tSN.rawValue
            h.field40 = bufferOffset
            h.field44 = desiredDataTransferLength
            return ISCSIPDU(header: h)
        }
    }
}
