import NIOCore

extension ISCSIPDU {
    /// The 16-byte CDB field of a SCSI Command BHS (bytes 32-47), big-endian words as on the wire.
    public struct CDBField: Hashable, Sendable {
        /// Bytes 32-39 (byte 32 is the most significant byte).
        public var high: UInt64
        /// Bytes 40-47.
        public var low: UInt64

        public init(high: UInt64 = 0, low: UInt64 = 0) {
            self.high = high
            self.low = low
        }

        /// Up to 16 bytes, zero padded.
        public init<C: Collection>(bytes: C) where C.Element == UInt8 {
            precondition(bytes.count <= 16)
            var h: UInt64 = 0
            var l: UInt64 = 0
            for (i, b) in bytes.enumerated() {
                if i < 8 { h |= UInt64(b) << (56 - 8 * UInt64(i)) } else { l |= UInt64(b) << (56 - 8 * UInt64(i - 8)) }
            }
            self.init(high: h, low: l)
        }

        public subscript(index: Int) -> UInt8 {
            precondition(index >= 0 && index < 16)
            let word = index < 8 ? high : low
            return UInt8(truncatingIfNeeded: word >> (56 - 8 * UInt64(index % 8)))
        }

        public var bytes: [UInt8] { (0..<16).map { self[$0] } }
    }

    /// Task attributes (RFC 7143 §11.3.1, ATTR field).
    public struct TaskAttribute: RawRepresentable, Hashable, Sendable {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue & 0x07 }
        public static let untagged = TaskAttribute(rawValue: 0)
        public static let simple = TaskAttribute(rawValue: 1)
        public static let ordered = TaskAttribute(rawValue: 2)
        public static let headOfQueue = TaskAttribute(rawValue: 3)
        public static let aca = TaskAttribute(rawValue: 4)
    }

    /// SCSI Command (RFC 7143 §11.3).
    public struct SCSICommand: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.scsiCommand
        public var immediate: Bool = false
        /// F: no unsolicited Data-Out PDUs follow (RFC 7143 §11.3.1).
        public var final: Bool = true
        /// R: the command expects Data-In.
        public var read: Bool = false
        /// W: the command sends Data-Out.
        public var write: Bool = false
        public var attribute: TaskAttribute = .simple
        public var lun: UInt64 = 0
        public var initiatorTaskTag: UInt32 = 0
        /// RFC 7143 §11.3.4 (for bidirectional commands, the write length; the read length goes in an AHS).
        public var expectedDataTransferLength: UInt32 = 0
        public var cmdSN: SerialNumber = SerialNumber(0)
        public var expStatSN: SerialNumber = SerialNumber(0)
        /// The first 16 CDB bytes (RFC 7143 §11.3.5).
        public var cdb: CDBField = CDBField()
        /// Other AHS (extended CDB, bidirectional read length).
        public var additionalHeaderSegments: [AdditionalHeaderSegment] = []
        /// Immediate data (RFC 7143 §11.3.6).
        public var data: ByteBuffer = ISCSIPDU.emptyData

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            immediate = h.immediate
            final = h.final
            read = h.flags & 0x40 != 0
            write = h.flags & 0x20 != 0
            attribute = TaskAttribute(rawValue: h.flags & 0x07)
            lun = h.lun
            initiatorTaskTag = h.initiatorTaskTag
            expectedDataTransferLength = h.field20
            cmdSN = SerialNumber(h.field24)
            expStatSN = SerialNumber(h.field28)
            cdb = CDBField(high: UInt64(h.field32) << 32 | UInt64(h.field36), low: UInt64(h.field40) << 32 | UInt64(h.field44))
            if let ahs = pdu.additionalHeaderSegments { additionalHeaderSegments = try AdditionalHeaderSegment.parse(ahs) }
            data = pdu.data
            // RFC 7143 §11.3.1: "If ... the W bit is 0, the DataSegmentLength MUST be 0" for unsolicited data;
            // immediate data is only allowed with W.
            if !write && data.readableBytes > 0 { throw Self.malformed("immediate data without the W bit") }
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode, immediate: immediate)
            h.flags = (final ? 0x80 : 0) | (read ? 0x40 : 0) | (write ? 0x20 : 0) | attribute.rawValue
            h.lun = lun
            h.initiatorTaskTag = initiatorTaskTag
            h.field20 = expectedDataTransferLength
            h.field24 = cmdSN.rawValue
            h.field28 = expStatSN.rawValue
            h.field32 = UInt32(truncatingIfNeeded: cdb.high >> 32)
            h.field36 = UInt32(truncatingIfNeeded: cdb.high)
            h.field40 = UInt32(truncatingIfNeeded: cdb.low >> 32)
            h.field44 = UInt32(truncatingIfNeeded: cdb.low)
            let ahs = additionalHeaderSegments.isEmpty ? nil : AdditionalHeaderSegment.encode(additionalHeaderSegments)
            return ISCSIPDU(header: h, additionalHeaderSegments: ahs, data: data)
        }
    }

    /// SCSI Response (RFC 7143 §11.4).
    public struct SCSIResponse: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.scsiResponse
        /// o: bidirectional read residual overflow.
        public var bidirectionalReadResidualOverflow = false
        /// u: bidirectional read residual underflow.
        public var bidirectionalReadResidualUnderflow = false
        /// O: residual overflow.
        public var residualOverflow = false
        /// U: residual underflow.
        public var residualUnderflow = false
        /// RFC 7143 §11.4.3: 0x00 command completed at target, 0x01 target failure.
        public var response: UInt8 = 0
        /// SCSI status byte (valid when response is 0x00).
        public var status: UInt8 = 0
        public var initiatorTaskTag: UInt32 = 0
        public var snackTag: UInt32 = 0
        public var statSN = SerialNumber(0)
        public var expCmdSN = SerialNumber(0)
        public var maxCmdSN = SerialNumber(0)
        public var expDataSN = SerialNumber(0)
        public var bidirectionalReadResidualCount: UInt32 = 0
        public var residualCount: UInt32 = 0
        /// SenseLength (2 bytes) + sense data + response data (RFC 7143 §11.4.7).
        public var data: ByteBuffer = ISCSIPDU.emptyData

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            guard h.final else { throw Self.malformed("byte 1 bit 0 must be 1") }
            bidirectionalReadResidualOverflow = h.flags & 0x10 != 0
            bidirectionalReadResidualUnderflow = h.flags & 0x08 != 0
            residualOverflow = h.flags & 0x04 != 0
            residualUnderflow = h.flags & 0x02 != 0
            // RFC 7143 §11.4.1: the o/u and O/U bits are mutually exclusive.
            if residualOverflow && residualUnderflow { throw Self.malformed("both O and U set") }
            if bidirectionalReadResidualOverflow && bidirectionalReadResidualUnderflow { throw Self.malformed("both o and u set") }
            response = h.byte2
            status = h.byte3
            initiatorTaskTag = h.initiatorTaskTag
            snackTag = h.field20
            statSN = SerialNumber(h.field24)
            expCmdSN = SerialNumber(h.field28)
            maxCmdSN = SerialNumber(h.field32)
            expDataSN = SerialNumber(h.field36)
            bidirectionalReadResidualCount = h.field40
            residualCount = h.field44
            data = pdu.data
            if data.readableBytes == 1 { throw Self.malformed("1-byte data segment cannot hold SenseLength") }
            if let senseLength = data.getInteger(at: data.readerIndex, as: UInt16.self),
                Int(senseLength) > data.readableBytes - 2
            {
                throw Self.malformed("SenseLength \(senseLength) exceeds the data segment (\(data.readableBytes - 2))")
            }
        }

        /// RFC 7143 §11.4.7.2: the sense data (a slice), nil when SenseLength is 0 or there is no data.
        public var senseData: ByteBuffer? {
            guard let length = data.getInteger(at: data.readerIndex, as: UInt16.self), length > 0 else { return nil }
            return data.getSlice(at: data.readerIndex + 2, length: Int(length))
        }

        /// The residual as a signed count: positive for underflow, negative for overflow, 0 otherwise.
        public var signedResidual: Int64 {
            if residualUnderflow { return Int64(residualCount) }
            if residualOverflow { return -Int64(residualCount) }
            return 0
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode, flags: 0x80)
            if bidirectionalReadResidualOverflow { h.flags |= 0x10 }
            if bidirectionalReadResidualUnderflow { h.flags |= 0x08 }
            if residualOverflow { h.flags |= 0x04 }
            if residualUnderflow { h.flags |= 0x02 }
            h.byte2 = response
            h.byte3 = status
            h.initiatorTaskTag = initiatorTaskTag
            h.field20 = snackTag
            h.field24 = statSN.rawValue
            h.field28 = expCmdSN.rawValue
            h.field32 = maxCmdSN.rawValue
            h.field36 = expDataSN.rawValue
            h.field40 = bidirectionalReadResidualCount
            h.field44 = residualCount
            return ISCSIPDU(header: h, data: data)
        }
    }
}
