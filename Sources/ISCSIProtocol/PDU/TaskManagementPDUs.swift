import NIOCore

extension ISCSIPDU {
    /// Task management functions (RFC 7143 §11.5.1).
    public struct TaskManagementFunction: RawRepresentable, Hashable, Sendable {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue & 0x7F }
        public static let abortTask = Self(rawValue: 1)
        public static let abortTaskSet = Self(rawValue: 2)
        public static let clearACA = Self(rawValue: 3)
        public static let clearTaskSet = Self(rawValue: 4)
        public static let logicalUnitReset = Self(rawValue: 5)
        public static let targetWarmReset = Self(rawValue: 6)
        public static let targetColdReset = Self(rawValue: 7)
        public static let taskReassign = Self(rawValue: 8)
    }

    /// Task Management Function Request (RFC 7143 §11.5).
    public struct TaskManagementRequest: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.taskManagementRequest
        public var immediate = true
        public var function = TaskManagementFunction.abortTask
        public var lun: UInt64 = 0
        public var initiatorTaskTag: UInt32 = 0
        public var referencedTaskTag: UInt32 = reservedTaskTag
        public var cmdSN = SerialNumber(0)
        public var expStatSN = SerialNumber(0)
        public var refCmdSN = SerialNumber(0)
        public var expDataSN = SerialNumber(0)

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            immediate = h.immediate
            function = TaskManagementFunction(rawValue: h.flags & 0x7F)
            lun = h.lun
            initiatorTaskTag = h.initiatorTaskTag
            referencedTaskTag = h.field20
            cmdSN = SerialNumber(h.field24)
            expStatSN = SerialNumber(h.field28)
            refCmdSN = SerialNumber(h.field32)
            expDataSN = SerialNumber(h.field36)
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode, immediate: immediate, flags: 0x80 | function.rawValue)
            h.lun = lun
            h.initiatorTaskTag = initiatorTaskTag
            h.field20 = referencedTaskTag
            h.field24 = cmdSN.rawValue
            h.field28 = expStatSN.rawValue
            h.field32 = refCmdSN.rawValue
            h.field36 = expDataSN.rawValue
            return ISCSIPDU(header: h)
        }
    }

    /// Task Management Function Response (RFC 7143 §11.6).
    public struct TaskManagementResponse: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.taskManagementResponse
        /// RFC 7143 §11.6.1: 0 function complete, 1 task does not exist, 2 LUN does not exist, ...
        public var response: UInt8 = 0
        public var initiatorTaskTag: UInt32 = 0
        public var statSN = SerialNumber(0)
        public var expCmdSN = SerialNumber(0)
        public var maxCmdSN = SerialNumber(0)

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            response = h.byte2
            initiatorTaskTag = h.initiatorTaskTag
            statSN = SerialNumber(h.field24)
            expCmdSN = SerialNumber(h.field28)
            maxCmdSN = SerialNumber(h.field32)
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode, flags: 0x80)
            h.byte2 = response
            h.initiatorTaskTag = initiatorTaskTag
            h.field24 = statSN.rawValue
            h.field28 = expCmdSN.rawValue
            h.field32 = maxCmdSN.rawValue
            return ISCSIPDU(header: h)
        }
    }

    /// Asynchronous Message (RFC 7143 §11.9).
    public struct AsyncMessage: ISCSIPDUConvertible, Sendable {
        public static let opcode = Opcode.asyncMessage

        /// AsyncEvent codes (RFC 7143 §11.9.1).
        public struct Event: RawRepresentable, Hashable, Sendable {
            public var rawValue: UInt8
            public init(rawValue: UInt8) { self.rawValue = rawValue }
            public static let scsiAsyncEvent = Self(rawValue: 0)
            public static let logoutRequested = Self(rawValue: 1)
            public static let connectionWillDrop = Self(rawValue: 2)
            public static let sessionWillDrop = Self(rawValue: 3)
            public static let renegotiationRequested = Self(rawValue: 4)
            public static let vendorSpecific = Self(rawValue: 255)
        }

        public var lun: UInt64 = 0
        public var statSN = SerialNumber(0)
        public var expCmdSN = SerialNumber(0)
        public var maxCmdSN = SerialNumber(0)
        public var event = Event.scsiAsyncEvent
        public var vendorCode: UInt8 = 0
        public var parameter1: UInt16 = 0
        public var parameter2: UInt16 = 0
        public var parameter3: UInt16 = 0
        /// SenseLength + sense data + iSCSI event data (RFC 7143 §11.9.4).
        public var data: ByteBuffer = ISCSIPDU.emptyData

        public init() {}

        public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
            try Self.check(pdu)
            let h = pdu.header
            // RFC 7143 §11.9: the ITT field is 0xffffffff.
            guard h.initiatorTaskTag == reservedTaskTag else { throw Self.malformed("ITT is not 0xffffffff") }
            lun = h.lun
            statSN = SerialNumber(h.field24)
            expCmdSN = SerialNumber(h.field28)
            maxCmdSN = SerialNumber(h.field32)
            event = Event(rawValue: UInt8(h.field36 >> 24))
            vendorCode = UInt8((h.field36 >> 16) & 0xFF)
            parameter1 = UInt16(h.field36 & 0xFFFF)
            parameter2 = UInt16(h.field40 >> 16)
            parameter3 = UInt16(h.field40 & 0xFFFF)
            data = pdu.data
        }

        public var pdu: ISCSIPDU {
            var h = BasicHeaderSegment(opcode: Self.opcode, flags: 0x80)
            h.lun = lun
            h.initiatorTaskTag = reservedTaskTag
            h.field24 = statSN.rawValue
            h.field28 = expCmdSN.rawValue
            h.field32 = maxCmdSN.rawValue
            h.field36 = UInt32(event.rawValue) << 24 | UInt32(vendorCode) << 16 | UInt32(parameter1)
            h.field40 = UInt32(parameter2) << 16 | UInt32(parameter3)
            return ISCSIPDU(header: h, data: data)
        }
    }
}
