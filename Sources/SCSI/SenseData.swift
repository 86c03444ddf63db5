import NIOCore

/// SENSE KEY (SPC; scsi-commands.md §2). Open: unknown values survive parsing.
public struct SenseKey: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue & 0x0F }

    public static let noSense = SenseKey(rawValue: 0x0)
    public static let recoveredError = SenseKey(rawValue: 0x1)
    public static let notReady = SenseKey(rawValue: 0x2)
    public static let mediumError = SenseKey(rawValue: 0x3)
    public static let hardwareError = SenseKey(rawValue: 0x4)
    public static let illegalRequest = SenseKey(rawValue: 0x5)
    public static let unitAttention = SenseKey(rawValue: 0x6)
    public static let dataProtect = SenseKey(rawValue: 0x7)
    public static let blankCheck = SenseKey(rawValue: 0x8)
    public static let vendorSpecific = SenseKey(rawValue: 0x9)
    public static let copyAborted = SenseKey(rawValue: 0xA)
    public static let abortedCommand = SenseKey(rawValue: 0xB)
    public static let volumeOverflow = SenseKey(rawValue: 0xD)
    public static let miscompare = SenseKey(rawValue: 0xE)
    public static let completed = SenseKey(rawValue: 0xF)

    public var description: String {
        switch self {
        case .noSense: "NO SENSE"
        case .recoveredError: "RECOVERED ERROR"
        case .notReady: "NOT READY"
        case .mediumError: "MEDIUM ERROR"
        case .hardwareError: "HARDWARE ERROR"
        case .illegalRequest: "ILLEGAL REQUEST"
        case .unitAttention: "UNIT ATTENTION"
        case .dataProtect: "DATA PROTECT"
        case .blankCheck: "BLANK CHECK"
        case .vendorSpecific: "VENDOR SPECIFIC"
        case .copyAborted: "COPY ABORTED"
        case .abortedCommand: "ABORTED COMMAND"
        case .volumeOverflow: "VOLUME OVERFLOW"
        case .miscompare: "MISCOMPARE"
        case .completed: "COMPLETED"
        default: "SENSE KEY \(hex2(rawValue))"
        }
    }
}

/// ADDITIONAL SENSE CODE and QUALIFIER (ASC/ASCQ; scsi-commands.md §4). Open: any pair is representable.
public struct AdditionalSenseCode: Hashable, Sendable, CustomStringConvertible {
    public var asc: UInt8
    public var ascq: UInt8
    public init(asc: UInt8, ascq: UInt8) {
        self.asc = asc
        self.ascq = ascq
    }

    public static let noAdditionalSenseInformation = Self(asc: 0x00, ascq: 0x00)
    public static let notReadyCauseNotReportable = Self(asc: 0x04, ascq: 0x00)
    public static let becomingReady = Self(asc: 0x04, ascq: 0x01)
    public static let initializingCommandRequired = Self(asc: 0x04, ascq: 0x02)
    public static let manualInterventionRequired = Self(asc: 0x04, ascq: 0x03)
    public static let formatInProgress = Self(asc: 0x04, ascq: 0x04)
    public static let operationInProgress = Self(asc: 0x04, ascq: 0x07)
    public static let asymmetricAccessStateTransition = Self(asc: 0x04, ascq: 0x0A)
    public static let targetPortInStandbyState = Self(asc: 0x04, ascq: 0x0B)
    public static let targetPortInUnavailableState = Self(asc: 0x04, ascq: 0x0C)
    public static let spaceAllocationInProgress = Self(asc: 0x04, ascq: 0x14)
    public static let sanitizeInProgress = Self(asc: 0x04, ascq: 0x1B)
    public static let writeError = Self(asc: 0x0C, ascq: 0x00)
    public static let writeErrorAutoReallocationFailed = Self(asc: 0x0C, ascq: 0x02)
    public static let unexpectedUnsolicitedData = Self(asc: 0x0C, ascq: 0x0C)
    public static let notEnoughUnsolicitedData = Self(asc: 0x0C, ascq: 0x0D)
    public static let unrecoveredReadError = Self(asc: 0x11, ascq: 0x00)
    public static let snackRejected = Self(asc: 0x11, ascq: 0x13)
    public static let parameterListLengthError = Self(asc: 0x1A, ascq: 0x00)
    public static let invalidCommandOperationCode = Self(asc: 0x20, ascq: 0x00)
    public static let lbaOutOfRange = Self(asc: 0x21, ascq: 0x00)
    public static let invalidFieldInCDB = Self(asc: 0x24, ascq: 0x00)
    public static let logicalUnitNotSupported = Self(asc: 0x25, ascq: 0x00)
    public static let invalidFieldInParameterList = Self(asc: 0x26, ascq: 0x00)
    public static let writeProtected = Self(asc: 0x27, ascq: 0x00)
    public static let hardwareWriteProtected = Self(asc: 0x27, ascq: 0x01)
    public static let softwareWriteProtected = Self(asc: 0x27, ascq: 0x02)
    public static let spaceAllocationFailedWriteProtect = Self(asc: 0x27, ascq: 0x07)
    public static let notReadyToReadyChange = Self(asc: 0x28, ascq: 0x00)
    public static let powerOnResetOccurred = Self(asc: 0x29, ascq: 0x00)
    public static let powerOnOccurred = Self(asc: 0x29, ascq: 0x01)
    public static let busResetOccurred = Self(asc: 0x29, ascq: 0x02)
    public static let busDeviceResetOccurred = Self(asc: 0x29, ascq: 0x03)
    public static let deviceInternalReset = Self(asc: 0x29, ascq: 0x04)
    public static let itNexusLossOccurred = Self(asc: 0x29, ascq: 0x07)
    public static let parametersChanged = Self(asc: 0x2A, ascq: 0x00)
    public static let modeParametersChanged = Self(asc: 0x2A, ascq: 0x01)
    public static let reservationsPreempted = Self(asc: 0x2A, ascq: 0x03)
    public static let reservationsReleased = Self(asc: 0x2A, ascq: 0x04)
    public static let registrationsPreempted = Self(asc: 0x2A, ascq: 0x05)
    public static let asymmetricAccessStateChanged = Self(asc: 0x2A, ascq: 0x06)
    public static let capacityDataChanged = Self(asc: 0x2A, ascq: 0x09)
    public static let commandsClearedByAnotherInitiator = Self(asc: 0x2F, ascq: 0x00)
    public static let softThresholdReached = Self(asc: 0x38, ascq: 0x07)
    public static let mediumNotPresent = Self(asc: 0x3A, ascq: 0x00)
    public static let targetOperatingConditionsChanged = Self(asc: 0x3F, ascq: 0x00)
    public static let microcodeChanged = Self(asc: 0x3F, ascq: 0x01)
    public static let inquiryDataChanged = Self(asc: 0x3F, ascq: 0x03)
    public static let deviceIdentifierChanged = Self(asc: 0x3F, ascq: 0x05)
    public static let reportedLUNsDataChanged = Self(asc: 0x3F, ascq: 0x0E)
    public static let internalTargetFailure = Self(asc: 0x44, ascq: 0x00)
    public static let protocolServiceCRCError = Self(asc: 0x47, ascq: 0x05)

    /// The standard name, or nil for pairs not in our table.
    public var name: String? {
        switch (asc, ascq) {
        case (0x00, 0x00): "NO ADDITIONAL SENSE INFORMATION"
        case (0x04, 0x00): "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE"
        case (0x04, 0x01): "LOGICAL UNIT IS IN PROCESS OF BECOMING READY"
        case (0x04, 0x02): "LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED"
        case (0x04, 0x03): "LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED"
        case (0x04, 0x04): "LOGICAL UNIT NOT READY, FORMAT IN PROGRESS"
        case (0x04, 0x07): "LOGICAL UNIT NOT READY, OPERATION IN PROGRESS"
        case (0x04, 0x0A): "LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION"
        case (0x04, 0x0B): "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE"
        case (0x04, 0x0C): "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE"
        case (0x04, 0x14): "LOGICAL UNIT NOT READY, SPACE ALLOCATION IN PROGRESS"
        case (0x04, 0x1B): "LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS"
        case (0x0C, 0x00): "WRITE ERROR"
        case (0x0C, 0x02): "WRITE ERROR - AUTO REALLOCATION FAILED"
        case (0x0C, 0x0C): "UNEXPECTED UNSOLICITED DATA"
        case (0x0C, 0x0D): "NOT ENOUGH UNSOLICITED DATA"
        case (0x11, 0x00): "UNRECOVERED READ ERROR"
        case (0x11, 0x13): "READ ERROR - FAILED RETRANSMISSION REQUEST"
        case (0x1A, 0x00): "PARAMETER LIST LENGTH ERROR"
        case (0x20, 0x00): "INVALID COMMAND OPERATION CODE"
        case (0x21, 0x00): "LOGICAL BLOCK ADDRESS OUT OF RANGE"
        case (0x24, 0x00): "INVALID FIELD IN CDB"
        case (0x25, 0x00): "LOGICAL UNIT NOT SUPPORTED"
        case (0x26, 0x00): "INVALID FIELD IN PARAMETER LIST"
        case (0x27, 0x00): "WRITE PROTECTED"
        case (0x27, 0x01): "HARDWARE WRITE PROTECTED"
        case (0x27, 0x02): "LOGICAL UNIT SOFTWARE WRITE PROTECTED"
        case (0x27, 0x07): "SPACE ALLOCATION FAILED WRITE PROTECT"
        case (0x28, 0x00): "NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED"
        case (0x29, 0x00): "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED"
        case (0x29, 0x01): "POWER ON OCCURRED"
        case (0x29, 0x02): "SCSI BUS RESET OCCURRED"
        case (0x29, 0x03): "BUS DEVICE RESET FUNCTION OCCURRED"
        case (0x29, 0x04): "DEVICE INTERNAL RESET"
        case (0x29, 0x07): "I_T NEXUS LOSS OCCURRED"
        case (0x2A, 0x00): "PARAMETERS CHANGED"
        case (0x2A, 0x01): "MODE PARAMETERS CHANGED"
        case (0x2A, 0x03): "RESERVATIONS PREEMPTED"
        case (0x2A, 0x04): "RESERVATIONS RELEASED"
        case (0x2A, 0x05): "REGISTRATIONS PREEMPTED"
        case (0x2A, 0x06): "ASYMMETRIC ACCESS STATE CHANGED"
        case (0x2A, 0x09): "CAPACITY DATA HAS CHANGED"
        case (0x2F, 0x00): "COMMANDS CLEARED BY ANOTHER INITIATOR"
        case (0x38, 0x07): "THIN PROVISIONING SOFT THRESHOLD REACHED"
        case (0x3A, 0x00): "MEDIUM NOT PRESENT"
        case (0x3F, 0x00): "TARGET OPERATING CONDITIONS HAVE CHANGED"
        case (0x3F, 0x01): "MICROCODE HAS BEEN CHANGED"
        case (0x3F, 0x03): "INQUIRY DATA HAS CHANGED"
        case (0x3F, 0x05): "DEVICE IDENTIFIER CHANGED"
        case (0x3F, 0x0E): "REPORTED LUNS DATA HAS CHANGED"
        case (0x44, 0x00): "INTERNAL TARGET FAILURE"
        case (0x47, 0x05): "PROTOCOL SERVICE CRC ERROR"
        default: nil
        }
    }

    /// e.g. "LOGICAL BLOCK ADDRESS OUT OF RANGE (21/00)".
    public var description: String {
        "\(name ?? "ADDITIONAL SENSE CODE") (\(hex2(asc))/\(hex2(ascq)))"
    }
}

/// Decoded sense data (SPC; scsi-commands.md §3), from fixed (70h/71h) or descriptor (72h/73h) format.
public struct SenseData: Hashable, Sendable, CustomStringConvertible {
    public var key: SenseKey
    public var code: AdditionalSenseCode
    /// The INFORMATION field when marked valid (fixed: VALID bit; descriptor: information descriptor).
    public var information: UInt64?
    /// 71h/73h: the error belongs to an earlier command that already reported GOOD.
    public var deferred: Bool
    /// The sense arrived in descriptor format.
    public var descriptorFormat: Bool
    /// The 3 SENSE-KEY SPECIFIC bytes as a 24-bit value, when SKSV is set.
    public var senseKeySpecific: UInt32?

    public var asc: UInt8 { code.asc }
    public var ascq: UInt8 { code.ascq }

    public init(
        key: SenseKey, code: AdditionalSenseCode, information: UInt64? = nil, deferred: Bool = false,
        descriptorFormat: Bool = false, senseKeySpecific: UInt32? = nil
    ) {
        self.key = key
        self.code = code
        self.information = information
        self.deferred = deferred
        self.descriptorFormat = descriptorFormat
        self.senseKeySpecific = senseKeySpecific
    }

    /// For ILLEGAL REQUEST with SKSV set (scsi-commands.md §3, bytes 15–17): where the bad field is.
    public var fieldPointer: (inCDB: Bool, byte: UInt16, bit: UInt8?)? {
        guard key == .illegalRequest, let sks = senseKeySpecific else { return nil }
        let flags = UInt8(truncatingIfNeeded: sks >> 16)
        return (flags & 0x40 != 0, UInt16(truncatingIfNeeded: sks), flags & 0x08 != 0 ? flags & 0x07 : nil)
    }

    /// e.g. "ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE (21/00)".
    public var description: String {
        var s = "\(key): \(code)"
        if deferred { s += " [deferred]" }
        if let information { s += " info=0x\(String(information, radix: 16))" }
        if let f = fieldPointer {
            s += " [\(f.inCDB ? "CDB" : "parameter list") byte \(f.byte)\(f.bit.map { " bit \($0)" } ?? "")]"
        }
        return s
    }

    /// Parses the SPC sense bytes (for iSCSI: the bytes after the 2-byte SenseLength, RFC 7143 §11.4.7.1).
    ///
    /// Fixed format: at least 8 bytes are required; when the target sends fewer than 14 bytes the
    /// ASC/ASCQ read as 00/00 (the key alone is still meaningful). The ADDITIONAL SENSE LENGTH is
    /// clamped to the bytes actually present (sense can be truncated by SenseLength).
    /// Descriptor format: a descriptor running past the data is an error.
    public init(parsing buffer: ByteBuffer) throws(SCSIParseError) {
        let ctx = "sense data"
        try buffer.scsiRequire(8, ctx)
        let byte0 = buffer.scsiInteger(at: 0, as: UInt8.self) ?? 0
        let responseCode = byte0 & 0x7F
        let additional = Int(buffer.scsiInteger(at: 7, as: UInt8.self) ?? 0)
        let length = min(buffer.readableBytes, 8 + additional)
        switch responseCode {
        case 0x70, 0x71:
            let byte2 = buffer.scsiInteger(at: 2, as: UInt8.self) ?? 0
            self.key = SenseKey(rawValue: byte2 & 0x0F)
            if length >= 14 {
                self.code = AdditionalSenseCode(
                    asc: buffer.scsiInteger(at: 12, as: UInt8.self) ?? 0,
                    ascq: buffer.scsiInteger(at: 13, as: UInt8.self) ?? 0)
            } else {
                self.code = .noAdditionalSenseInformation
            }
            let valid = byte0 & 0x80 != 0
            self.information = valid ? buffer.scsiInteger(at: 3, as: UInt32.self).map(UInt64.init) : nil
            self.deferred = responseCode == 0x71
            self.descriptorFormat = false
            if length >= 18, let sks = buffer.scsiBytes(at: 15, count: 3), sks[0] & 0x80 != 0 {
                self.senseKeySpecific = UInt32(sks[0]) << 16 | UInt32(sks[1]) << 8 | UInt32(sks[2])
            } else {
                self.senseKeySpecific = nil
            }
        case 0x72, 0x73:
            self.key = SenseKey(rawValue: (buffer.scsiInteger(at: 1, as: UInt8.self) ?? 0) & 0x0F)
            self.code = AdditionalSenseCode(
                asc: buffer.scsiInteger(at: 2, as: UInt8.self) ?? 0,
                ascq: buffer.scsiInteger(at: 3, as: UInt8.self) ?? 0)
            self.deferred = responseCode == 0x73
            self.descriptorFormat = true
            self.information = nil
            self.senseKeySpecific = nil
            var offset = 8
            while offset < length {
                guard offset + 2 <= length,
                    let type = buffer.scsiInteger(at: offset, as: UInt8.self),
                    let addl = buffer.scsiInteger(at: offset + 1, as: UInt8.self)
                else {
                    throw SCSIParseError(.inconsistent, ctx, "descriptor header at byte \(offset) runs past the end")
                }
                let end = offset + 2 + Int(addl)
                guard end <= length else {
                    throw SCSIParseError(.inconsistent, ctx, "descriptor at byte \(offset) runs past the end")
                }
                switch type {
                case 0x00 where addl >= 0x0A:
                    // Information descriptor: byte 2 bit 7 VALID, bytes 4–11 INFORMATION.
                    if let flags = buffer.scsiInteger(at: offset + 2, as: UInt8.self), flags & 0x80 != 0 {
                        self.information = buffer.scsiInteger(at: offset + 4, as: UInt64.self)
                    }
                case 0x02 where addl >= 0x06:
                    // Sense-key specific descriptor: bytes 4–6 laid out like fixed bytes 15–17.
                    if let sks = buffer.scsiBytes(at: offset + 4, count: 3), sks[0] & 0x80 != 0 {
                        self.senseKeySpecific = UInt32(sks[0]) << 16 | UInt32(sks[1]) << 8 | UInt32(sks[2])
                    }
                default:
                    break
                }
                offset = end
            }
        default:
            throw SCSIParseError(
                .unsupportedFormat, ctx, "response code 0x\(hex2(responseCode)) is neither fixed nor descriptor format")
        }
    }

    /// Encodes this sense as fixed (18 bytes) or descriptor format. Used by test fakes and REQUEST SENSE emulation.
    public func encode(descriptorFormat: Bool? = nil) -> ByteBuffer {
        var b = ByteBuffer()
        if descriptorFormat ?? self.descriptorFormat {
            b.writeInteger(UInt8(deferred ? 0x73 : 0x72))
            b.writeInteger(key.rawValue)
            b.writeInteger(code.asc)
            b.writeInteger(code.ascq)
            b.writeRepeatingByte(0, count: 3)
            var descriptors = ByteBuffer()
            if let information {
                descriptors.writeInteger(UInt8(0x00))
                descriptors.writeInteger(UInt8(0x0A))
                descriptors.writeInteger(UInt8(0x80))
                descriptors.writeInteger(UInt8(0))
                descriptors.writeInteger(information)
            }
            if let senseKeySpecific {
                descriptors.writeInteger(UInt8(0x02))
                descriptors.writeInteger(UInt8(0x06))
                descriptors.writeRepeatingByte(0, count: 2)
                descriptors.writeInteger(UInt8(truncatingIfNeeded: senseKeySpecific >> 16) | 0x80)
                descriptors.writeInteger(UInt16(truncatingIfNeeded: senseKeySpecific))
                descriptors.writeInteger(UInt8(0))
            }
            b.writeInteger(UInt8(descriptors.readableBytes))
            b.writeBuffer(&descriptors)
        } else {
            let info32 = information.flatMap { UInt32(exactly: $0) }
            b.writeInteger(UInt8(deferred ? 0x71 : 0x70) | (info32 != nil ? 0x80 : 0))
            b.writeInteger(UInt8(0))
            b.writeInteger(key.rawValue)
            b.writeInteger(info32 ?? 0)
            b.writeInteger(UInt8(10))  // additional sense length: 18 bytes in all
            b.writeInteger(UInt32(0))
            b.writeInteger(code.asc)
            b.writeInteger(code.ascq)
            b.writeInteger(UInt8(0))
            if let senseKeySpecific {
                b.writeInteger(UInt8(truncatingIfNeeded: senseKeySpecific >> 16) | 0x80)
                b.writeInteger(UInt16(truncatingIfNeeded: senseKeySpecific))
            } else {
                b.writeRepeatingByte(0, count: 3)
            }
        }
        return b
    }
}
