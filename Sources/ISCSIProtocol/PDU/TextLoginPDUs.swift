import NIOCore

extension ISCSIPDU {
    /// Text Request (RFC 7143 §11.10).
    public struct TextRequest: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.textRequest
        public var immediate = false
        public var final = true
        /// C: more text follows in the next PDU (RFC 7143 §11.10.2).
        public var `continue` = false
        public var lun: UInt64 = 0
        public var initiatorTaskTag: UInt32 = 0
        public var targetTransferTag: UInt32 = reservedTaskTag
        public var cmdSN = SerialNumber(0)
        public var expStatSN = SerialNumber(0)
        /// key=value pairs, each NUL terminated (RFC 7143 §6.1).
        public var data: ByteBuffer = ISCSIPDU.emptyData

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            immediate = h.immediate
            final = h.final
            self.continue = h.flags & 0x40 != 0
            // RFC 7143 §11.10.2: F and C MUST NOT both be 1.
            if final && self.continue { throw Self.malformed("F and C both set") }
            lun = h.lun
            initiatorTaskTag = h.initiatorTaskTag
            targetTransferTag = h.field20
            cmdSN = SerialNumber(h.field24)
            expStatSN = SerialNumber(h.field28)
            data = pdu.data
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode, immediate: immediate)
            h.flags = (final ? 0x80 : 0) | (self.continue ? 0x40 : 0)
            h.lun = lun
            h.initiatorTaskTag = initiatorTaskTag
            h.field20 = targetTransferTag
            h.field24 = cmdSN.rawValue
            h.field28 = expStatSN.rawValue
            return ISCSIPDU(header: h, data: data)
        }
    }

    /// Text Response (RFC 7143 §11.11).
    public struct TextResponse: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.textResponse
        public var final = true
        public var `continue` = false
        public var lun: UInt64 = 0
        public var initiatorTaskTag: UInt32 = 0
        public var targetTransferTag: UInt32 = reservedTaskTag
        public var statSN = SerialNumber(0)
        public var expCmdSN = SerialNumber(0)
        public var maxCmdSN = SerialNumber(0)
        public var data: ByteBuffer = ISCSIPDU.emptyData

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            final = h.final
            self.continue = h.flags & 0x40 != 0
            // RFC 7143 §11.11.2: F and C MUST NOT both be 1.
            if final && self.continue { throw Self.malformed("F and C both set") }
            lun = h.lun
            initiatorTaskTag = h.initiatorTaskTag
            targetTransferTag = h.field20
            statSN = SerialNumber(h.field24)
            expCmdSN = SerialNumber(h.field28)
            maxCmdSN = SerialNumber(h.field32)
            data = pdu.data
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode)
            h.flags = (final ? 0x80 : 0) | (self.continue ? 0x40 : 0)
            h.lun = lun
            h.initiatorTaskTag = initiatorTaskTag
            h.field20 = targetTransferTag
            h.field24 = statSN.rawValue
            h.field28 = expCmdSN.rawValue
            h.field32 = maxCmdSN.rawValue
            return ISCSIPDU(header: h, data: data)
        }
    }

    /// Login Request (RFC 7143 §11.12). Stages are raw 2-bit values (RFC 7143 §11.12.3: 0 security
    /// negotiation, 1 operational negotiation, 3 full feature phase).
    public struct LoginRequest: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.loginRequest
        /// T: transit to `nextStage` (RFC 7143 §11.12.1).
        public var transit = false
        /// C: more text follows (RFC 7143 §11.12.2).
        public var `continue` = false
        public var currentStage: UInt8 = 0
        public var nextStage: UInt8 = 0
        public var versionMax: UInt8 = 0
        public var versionMin: UInt8 = 0
        /// 48-bit ISID (RFC 7143 §11.12.5), in the low 48 bits.
        public var isid: UInt64 = 0
        public var tsih: UInt16 = 0
        public var initiatorTaskTag: UInt32 = 0
        public var connectionID: UInt16 = 0
        public var cmdSN = SerialNumber(0)
        public var expStatSN = SerialNumber(0)
        public var data: ByteBuffer = ISCSIPDU.emptyData

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            transit = h.flags & 0x80 != 0
            self.continue = h.flags & 0x40 != 0
            // RFC 7143 §11.12.2: "If the C bit is set to 1, the T bit MUST be 0".
            if transit && self.continue { throw Self.malformed("T and C both set") }
            currentStage = (h.flags >> 2) & 0x03
            nextStage = h.flags & 0x03
            versionMax = h.byte2
            versionMin = h.byte3
            isid = h.lun >> 16
            tsih = UInt16(truncatingIfNeeded: h.lun)
            initiatorTaskTag = h.initiatorTaskTag
            connectionID = UInt16(h.field20 >> 16)
            cmdSN = SerialNumber(h.field24)
            expStatSN = SerialNumber(h.field28)
            data = pdu.data
        }

        public var pdu: ISCSIPDU {
            // RFC 7143 §11.12: the I bit is always 1 on a Login Request.
            var h = BasicHeaderSegment(opcode: Self.opcode, immediate: true)
            h.flags = (transit ? 0x80 : 0) | (self.continue ? 0x40 : 0) | (currentStage & 3) << 2 | (nextStage & 3)
            h.byte2 = versionMax
            h.byte3 = versionMin
            h.lun = (isid & 0xFFFF_FFFF_FFFF) << 16 | UInt64(tsih)
            h.initiatorTaskTag = initiatorTaskTag
            h.field20 = UInt32(connectionID) << 16
            h.field24 = cmdSN.rawValue
            h.field28 = expStatSN.rawValue
            return ISCSIPDU(header: h, data: data)
        }
    }

    /// Login Response (RFC 7143 §11.13).
    public struct LoginResponse: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.loginResponse
        public var transit = false
        public var `continue` = false
        public var currentStage: UInt8 = 0
        public var nextStage: UInt8 = 0
        public var versionMax: UInt8 = 0
        public var versionActive: UInt8 = 0
        public var isid: UInt64 = 0
        public var tsih: UInt16 = 0
        public var initiatorTaskTag: UInt32 = 0
        public var statSN = SerialNumber(0)
        public var expCmdSN = SerialNumber(0)
        public var maxCmdSN = SerialNumber(0)
        /// RFC 7143 §11.13.5: 0 success, 1 redirection, 2 initiator error, 3 target error.
        public var statusClass: UInt8 = 0
        public var statusDetail: UInt8 = 0
        public var data: ByteBuffer = ISCSIPDU.emptyData

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            transit = h.flags & 0x80 != 0
            self.continue = h.flags & 0x40 != 0
            // RFC 7143 §11.13.7: "If the C bit is set to 1, the T bit MUST be 0".
            if transit && self.continue { throw Self.malformed("T and C both set") }
            currentStage = (h.flags >> 2) & 0x03
            nextStage = h.flags & 0x03
            versionMax = h.byte2
            versionActive = h.byte3
            isid = h.lun >> 16
            tsih = UInt16(truncatingIfNeeded: h.lun)
            initiatorTaskTag = h.initiatorTaskTag
            statSN = SerialNumber(h.field24)
            expCmdSN = SerialNumber(h.field28)
            maxCmdSN = SerialNumber(h.field32)
            statusClass = UInt8(h.field36 >> 24)
            statusDetail = UInt8((h.field36 >> 16) & 0xFF)
            data = pdu.data
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode)
            h.flags = (transit ? 0x80 : 0) | (self.continue ? 0x40 : 0) | (currentStage & 3) << 2 | (nextStage & 3)
            h.byte2 = versionMax
            h.byte3 = versionActive
            h.lun = (isid & 0xFFFF_FFFF_FFFF) << 16 | UInt64(tsih)
            h.initiatorTaskTag = initiatorTaskTag
            h.field24 = statSN.rawValue
            h.field28 = expCmdSN.rawValue
            h.field32 = maxCmdSN.rawValue
            h.field36 = UInt32(statusClass) << 24 | UInt32(statusDetail) << 16
            return ISCSIPDU(header: h, data: data)
        }
    }
}
