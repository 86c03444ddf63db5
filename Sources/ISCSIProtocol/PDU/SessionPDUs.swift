import NIOCore

extension ISCSIPDU {
    /// Logout Request (RFC 7143 §11.14).
    public struct LogoutRequest: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.logoutRequest

        /// RFC 7143 §11.14.1.
        public struct Reason: RawRepresentable, Hashable, Sendable {
            public var rawValue: UInt8
            public init(rawValue: UInt8) { self.rawValue = rawValue & 0x7F }
            public static let closeSession = Self(rawValue: 0)
            public static let closeConnection = Self(rawValue: 1)
            public static let removeConnectionForRecovery = Self(rawValue: 2)
        }

        public var immediate = false
        public var reason = Reason.closeSession
        public var initiatorTaskTag: UInt32 = 0
        public var connectionID: UInt16 = 0
        public var cmdSN = SerialNumber(0)
        public var expStatSN = SerialNumber(0)

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            immediate = h.immediate
            reason = Reason(rawValue: h.flags & 0x7F)
            initiatorTaskTag = h.initiatorTaskTag
            connectionID = UInt16(h.field20 >> 16)
            cmdSN = SerialNumber(h.field24)
            expStatSN = SerialNumber(h.field28)
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode, immediate: immediate, flags: 0x80 | reason.rawValue)
            h.initiatorTaskTag = initiatorTaskTag
            h.field20 = UInt32(connectionID) << 16
            h.field24 = cmdSN.rawValue
            h.field28 = expStatSN.rawValue
            return ISCSIPDU(header: h)
        }
    }

    /// Logout Response (RFC 7143 §11.15).
    public struct LogoutResponse: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.logoutResponse
        /// RFC 7143 §11.15.1: 0 closed successfully, 1 CID not found, 2 recovery not supported, 3 cleanup failed.
        public var response: UInt8 = 0
        public var initiatorTaskTag: UInt32 = 0
        public var statSN = SerialNumber(0)
        public var expCmdSN = SerialNumber(0)
        public var maxCmdSN = SerialNumber(0)
        public var time2Wait: UInt16 = 0
        public var time2Retain: UInt16 = 0

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            response = h.byte2
            initiatorTaskTag = h.initiatorTaskTag
            statSN = SerialNumber(h.field24)
            expCmdSN = SerialNumber(h.field28)
            maxCmdSN = SerialNumber(h.field32)
            time2Wait = UInt16(h.field40 >> 16)
            time2Retain = UInt16(h.field40 & 0xFFFF)
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode, flags: 0x80)
            h.byte2 = response
            h.initiatorTaskTag = initiatorTaskTag
            h.field24 = statSN.rawValue
            h.field28 = expCmdSN.rawValue
            h.field32 = maxCmdSN.rawValue
            h.field40 = UInt32(time2Wait) << 16 | UInt32(time2Retain)
            return ISCSIPDU(header: h)
        }
    }

    /// SNACK Request (RFC 7143 §11.16).
    public struct SNACKRequest: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.snackRequest
        /// RFC 7143 §11.16.1: 0 Data/R2T, 1 Status, 2 DataACK, 3 R-Data.
        public var type: UInt8 = 0
        public var lun: UInt64 = 0
        public var initiatorTaskTag: UInt32 = reservedTaskTag
        public var targetTransferTagOrSNACKTag: UInt32 = reservedTaskTag
        public var expStatSN = SerialNumber(0)
        public var begRun: UInt32 = 0
        public var runLength: UInt32 = 0

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            type = h.flags & 0x0F
            lun = h.lun
            initiatorTaskTag = h.initiatorTaskTag
            targetTransferTagOrSNACKTag = h.field20
            expStatSN = SerialNumber(h.field28)
            begRun = h.field40
            runLength = h.field44
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode, flags: 0x80 | (type & 0x0F))
            h.lun = lun
            h.initiatorTaskTag = initiatorTaskTag
            h.field20 = targetTransferTagOrSNACKTag
            h.field28 = expStatSN.rawValue
            h.field40 = begRun
            h.field44 = runLength
            return ISCSIPDU(header: h)
        }
    }

    /// Reject (RFC 7143 §11.17).
    public struct Reject: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.reject

        /// RFC 7143 §11.17.1.
        public struct Reason: RawRepresentable, Hashable, Sendable {
            public var rawValue: UInt8
            public init(rawValue: UInt8) { self.rawValue = rawValue }
            public static let dataDigestError = Self(rawValue: 0x02)
            public static let snackReject = Self(rawValue: 0x03)
            public static let protocolError = Self(rawValue: 0x04)
            public static let commandNotSupported = Self(rawValue: 0x05)
            public static let immediateCommandRejected = Self(rawValue: 0x06)
            public static let taskInProgress = Self(rawValue: 0x07)
            public static let invalidDataAck = Self(rawValue: 0x08)
            public static let invalidPDUField = Self(rawValue: 0x09)
            public static let longOperationReject = Self(rawValue: 0x0A)
            public static let deprecated = Self(rawValue: 0x0B)
            public static let waitingForLogout = Self(rawValue: 0x0C)
        }

        public var reason = Reason.protocolError
        public var statSN = SerialNumber(0)
        public var expCmdSN = SerialNumber(0)
        public var maxCmdSN = SerialNumber(0)
        public var dataSNOrR2TSN = SerialNumber(0)
        /// The complete header of the rejected PDU (RFC 7143 §11.17.4).
        public var data: ByteBuffer = ISCSIPDU.emptyData

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            // RFC 7143 §11.17: ITT is 0xffffffff.
            guard h.initiatorTaskTag == reservedTaskTag else { throw Self.malformed("ITT is not 0xffffffff") }
            reason = Reason(rawValue: h.byte2)
            statSN = SerialNumber(h.field24)
            expCmdSN = SerialNumber(h.field28)
            maxCmdSN = SerialNumber(h.field32)
            dataSNOrR2TSN = SerialNumber(h.field36)
            data = pdu.data
        }

        /// The BHS of the rejected PDU, when the data segment holds at least 48 bytes.
        public var rejectedHeader: BasicHeaderSegment? { data.getBasicHeaderSegment(at: data.readerIndex) }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode, flags: 0x80)
            h.byte2 = reason.rawValue
            h.initiatorTaskTag = reservedTaskTag
            h.field24 = statSN.rawValue
            h.field28 = expCmdSN.rawValue
            h.field32 = maxCmdSN.rawValue
            h.field36 = dataSNOrR2TSN.rawValue
            return ISCSIPDU(header: h, data: data)
        }
    }

    /// NOP-Out (RFC 7143 §11.18).
    public struct NOPOut: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.nopOut
        public var immediate = true
        public var lun: UInt64 = 0
        /// 0xffffffff when answering a target NOP-In (RFC 7143 §11.18.1).
        public var initiatorTaskTag: UInt32 = reservedTaskTag
        /// The NOP-In's TTT when answering it, else 0xffffffff (RFC 7143 §11.18.2).
        public var targetTransferTag: UInt32 = reservedTaskTag
        public var cmdSN = SerialNumber(0)
        public var expStatSN = SerialNumber(0)
        public var data: ByteBuffer = ISCSIPDU.emptyData

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            immediate = h.immediate
            lun = h.lun
            initiatorTaskTag = h.initiatorTaskTag
            targetTransferTag = h.field20
            cmdSN = SerialNumber(h.field24)
            expStatSN = SerialNumber(h.field28)
            data = pdu.data
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode, immediate: immediate, flags: 0x80)
            h.lun = lun
            h.initiatorTaskTag = initiatorTaskTag
            h.field20 = targetTransferTag
            h.field24 = cmdSN.rawValue
            h.field28 = expStatSN.rawValue
            return ISCSIPDU(header: h, data: data)
        }
    }

    /// NOP-In (RFC 7143 §11.19).
    public struct NOPIn: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.nopIn
        public var lun: UInt64 = 0
        public var initiatorTaskTag: UInt32 = reservedTaskTag
        /// Not 0xffffffff when the target wants a NOP-Out answer (RFC 7143 §11.19.1).
        public var targetTransferTag: UInt32 = reservedTaskTag
        public var statSN = SerialNumber(0)
        public var expCmdSN = SerialNumber(0)
        public var maxCmdSN = SerialNumber(0)
        public var data: ByteBuffer = ISCSIPDU.emptyData

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            lun = h.lun
            initiatorTaskTag = h.initiatorTaskTag
            targetTransferTag = h.field20
            statSN = SerialNumber(h.field24)
            expCmdSN = SerialNumber(h.field28)
            maxCmdSN = SerialNumber(h.field32)
            data = pdu.data
            // RFC 7143 §11.19: an answer to a NOP-Out has TTT 0xffffffff; a target ping has ITT 0xffffffff.
            if initiatorTaskTag != reservedTaskTag && targetTransferTag != reservedTaskTag {
                throw Self.malformed("both ITT and TTT set")
            }
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode, flags: 0x80)
            h.lun = lun
            h.initiatorTaskTag = initiatorTaskTag
            h.field20 = targetTransferTag
            h.field24 = statSN.rawValue
            h.field28 = expCmdSN.rawValue
            h.field32 = maxCmdSN.rawValue
            return ISCSIPDU(header: h, data: data)
        }
    }
}
