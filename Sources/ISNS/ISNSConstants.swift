/// iSNSP function IDs (RFC 4171 §4.1.3 and §5.1.2): requests have the top bit clear, responses set.
public struct ISNSFunctionID: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let devAttrReg = ISNSFunctionID(rawValue: 0x0001)
    public static let devAttrQry = ISNSFunctionID(rawValue: 0x0002)
    public static let devGetNext = ISNSFunctionID(rawValue: 0x0003)
    public static let devDereg = ISNSFunctionID(rawValue: 0x0004)
    public static let scnReg = ISNSFunctionID(rawValue: 0x0005)
    public static let scnDereg = ISNSFunctionID(rawValue: 0x0006)
    public static let scnEvent = ISNSFunctionID(rawValue: 0x0007)
    public static let scn = ISNSFunctionID(rawValue: 0x0008)
    public static let esi = ISNSFunctionID(rawValue: 0x000D)
    public static let devAttrRegRsp = ISNSFunctionID(rawValue: 0x8001)
    public static let devAttrQryRsp = ISNSFunctionID(rawValue: 0x8002)
    public static let devGetNextRsp = ISNSFunctionID(rawValue: 0x8003)
    public static let devDeregRsp = ISNSFunctionID(rawValue: 0x8004)
    public static let esiRsp = ISNSFunctionID(rawValue: 0x800D)

    /// §5.1.2: "FUNCTION_ID values with the leading bit set indicate response messages."
    public var isResponse: Bool { rawValue & 0x8000 != 0 }
    /// The response ID for a request ID.
    public var response: ISNSFunctionID { ISNSFunctionID(rawValue: rawValue | 0x8000) }

    public var description: String {
        switch self {
        case .devAttrReg: "DevAttrReg"
        case .devAttrQry: "DevAttrQry"
        case .devGetNext: "DevGetNext"
        case .devDereg: "DevDereg"
        case .scnReg: "SCNReg"
        case .scnDereg: "SCNDereg"
        case .scnEvent: "SCNEvent"
        case .scn: "SCN"
        case .esi: "ESI"
        case .devAttrRegRsp: "DevAttrRegRsp"
        case .devAttrQryRsp: "DevAttrQryRsp"
        case .devGetNextRsp: "DevGetNextRsp"
        case .devDeregRsp: "DevDeregRsp"
        case .esiRsp: "ESIRsp"
        default: "FunctionID(0x\(String(rawValue, radix: 16)))"
        }
    }
}

/// iSNSP header flags (RFC 4171 §5.1.4). The RFC numbers bits 16-31 of the header's second word
/// from the most significant end, so bit 16 is 0x8000 of the 16-bit FLAGS field.
public struct ISNSFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// Bit 16: sender is the iSNS client.
    public static let client = ISNSFlags(rawValue: 0x8000)
    /// Bit 17: sender is the iSNS server.
    public static let server = ISNSFlags(rawValue: 0x4000)
    /// Bit 18: authentication block is present.
    public static let authenticationBlock = ISNSFlags(rawValue: 0x2000)
    /// Bit 19: replace flag (DevAttrReg).
    public static let replace = ISNSFlags(rawValue: 0x1000)
    /// Bit 20: last PDU of the message.
    public static let lastPDU = ISNSFlags(rawValue: 0x0800)
    /// Bit 21: first PDU of the message.
    public static let firstPDU = ISNSFlags(rawValue: 0x0400)
}

/// Response status codes (RFC 4171 §5.4).
public struct ISNSStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let successful = ISNSStatus(rawValue: 0)
    public static let unknownError = ISNSStatus(rawValue: 1)
    public static let messageFormatError = ISNSStatus(rawValue: 2)
    public static let invalidRegistration = ISNSStatus(rawValue: 3)
    public static let invalidQuery = ISNSStatus(rawValue: 5)
    public static let sourceUnknown = ISNSStatus(rawValue: 6)
    public static let sourceAbsent = ISNSStatus(rawValue: 7)
    public static let sourceUnauthorized = ISNSStatus(rawValue: 8)
    public static let noSuchEntry = ISNSStatus(rawValue: 9)
    public static let versionNotSupported = ISNSStatus(rawValue: 10)
    public static let internalError = ISNSStatus(rawValue: 11)
    public static let busy = ISNSStatus(rawValue: 12)
    public static let optionNotUnderstood = ISNSStatus(rawValue: 13)
    public static let invalidUpdate = ISNSStatus(rawValue: 14)
    public static let messageNotSupported = ISNSStatus(rawValue: 15)
    public static let scnEventRejected = ISNSStatus(rawValue: 16)
    public static let scnRegistrationRejected = ISNSStatus(rawValue: 17)
    public static let attributeNotImplemented = ISNSStatus(rawValue: 18)
    public static let fcDomainIDNotAvailable = ISNSStatus(rawValue: 19)
    public static let fcDomainIDNotAllocated = ISNSStatus(rawValue: 20)
    public static let esiNotAvailable = ISNSStatus(rawValue: 21)
    public static let invalidDeregistration = ISNSStatus(rawValue: 22)
    public static let registrationFeatureNotSupported = ISNSStatus(rawValue: 23)

    /// The RFC 4171 §5.4 status description.
    public var message: String {
        switch rawValue {
        case 0: "Successful"
        case 1: "Unknown Error"
        case 2: "Message Format Error"
        case 3: "Invalid Registration"
        case 5: "Invalid Query"
        case 6: "Source Unknown"
        case 7: "Source Absent"
        case 8: "Source Unauthorized"
        case 9: "No Such Entry"
        case 10: "Version Not Supported"
        case 11: "Internal Error"
        case 12: "Busy"
        case 13: "Option Not Understood"
        case 14: "Invalid Update"
        case 15: "Message (FUNCTION_ID) Not Supported"
        case 16: "SCN Event Rejected"
        case 17: "SCN Registration Rejected"
        case 18: "Attribute Not Implemented"
        case 19: "FC_DOMAIN_ID Not Available"
        case 20: "FC_DOMAIN_ID Not Allocated"
        case 21: "ESI Not Available"
        case 22: "Invalid Deregistration"
        case 23: "Registration Feature Not Supported"
        default: "Reserved status \(rawValue)"
        }
    }

    public var description: String { "\(message) (\(rawValue))" }
}

/// Attribute tags (RFC 4171 §6.1), the ones this client uses; any other tag survives parsing.
public struct ISNSAttributeTag: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let delimiter = ISNSAttributeTag(rawValue: 0)
    public static let entityIdentifier = ISNSAttributeTag(rawValue: 1)
    public static let entityProtocol = ISNSAttributeTag(rawValue: 2)
    public static let managementIPAddress = ISNSAttributeTag(rawValue: 3)
    public static let timestamp = ISNSAttributeTag(rawValue: 4)
    public static let registrationPeriod = ISNSAttributeTag(rawValue: 6)
    public static let entityIndex = ISNSAttributeTag(rawValue: 7)
    public static let portalIPAddress = ISNSAttributeTag(rawValue: 16)
    public static let portalPort = ISNSAttributeTag(rawValue: 17)
    public static let portalSymbolicName = ISNSAttributeTag(rawValue: 18)
    public static let portalIndex = ISNSAttributeTag(rawValue: 22)
    public static let iscsiName = ISNSAttributeTag(rawValue: 32)
    public static let iscsiNodeType = ISNSAttributeTag(rawValue: 33)
    public static let iscsiAlias = ISNSAttributeTag(rawValue: 34)
    public static let iscsiNodeIndex = ISNSAttributeTag(rawValue: 36)
    public static let pgISCSIName = ISNSAttributeTag(rawValue: 48)
    public static let pgPortalIPAddress = ISNSAttributeTag(rawValue: 49)
    public static let pgPortalPort = ISNSAttributeTag(rawValue: 50)
    public static let pgTag = ISNSAttributeTag(rawValue: 51)
    public static let pgIndex = ISNSAttributeTag(rawValue: 52)

    public var description: String {
        switch self {
        case .delimiter: "Delimiter"
        case .entityIdentifier: "EntityIdentifier"
        case .entityProtocol: "EntityProtocol"
        case .managementIPAddress: "ManagementIPAddress"
        case .timestamp: "Timestamp"
        case .registrationPeriod: "RegistrationPeriod"
        case .entityIndex: "EntityIndex"
        case .portalIPAddress: "PortalIPAddress"
        case .portalPort: "PortalPort"
        case .portalSymbolicName: "PortalSymbolicName"
        case .portalIndex: "PortalIndex"
        case .iscsiName: "iSCSIName"
        case .iscsiNodeType: "iSCSINodeType"
        case .iscsiAlias: "iSCSIAlias"
        case .iscsiNodeIndex: "iSCSINodeIndex"
        case .pgISCSIName: "PGiSCSIName"
        case .pgPortalIPAddress: "PGPortalIPAddress"
        case .pgPortalPort: "PGPortalPort"
        case .pgTag: "PGTag"
        case .pgIndex: "PGIndex"
        default: "Tag(\(rawValue))"
        }
    }
}

/// iSCSI Node Type bitmap (RFC 4171 §6.4.2: bit 31 (LSB) target, 30 initiator, 29 control).
public struct ISNSNodeType: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let target = ISNSNodeType(rawValue: 0x1)
    public static let initiator = ISNSNodeType(rawValue: 0x2)
    public static let control = ISNSNodeType(rawValue: 0x4)
}

/// Entity Protocol values (RFC 4171 §6.2.2).
public enum ISNSEntityProtocol: UInt32, Sendable {
    case noProtocol = 1
    case iscsi = 2
    case ifcp = 3
}
