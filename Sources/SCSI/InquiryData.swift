import NIOCore

/// PERIPHERAL DEVICE TYPE (INQUIRY byte 0 bits 4:0; scsi-commands.md §5.3). Open.
public struct PeripheralDeviceType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue & 0x1F }
    public static let directAccess = PeripheralDeviceType(rawValue: 0x00)
    public static let sequentialAccess = PeripheralDeviceType(rawValue: 0x01)
    public static let cdDVD = PeripheralDeviceType(rawValue: 0x05)
    public static let storageArrayController = PeripheralDeviceType(rawValue: 0x0C)
    public static let enclosureServices = PeripheralDeviceType(rawValue: 0x0D)
    public static let simplifiedDirectAccess = PeripheralDeviceType(rawValue: 0x0E)
    public static let wellKnownLogicalUnit = PeripheralDeviceType(rawValue: 0x1E)
    public static let unknown = PeripheralDeviceType(rawValue: 0x1F)
    public var description: String {
        switch self {
        case .directAccess: "direct-access block device"
        case .sequentialAccess: "sequential-access device"
        case .cdDVD: "CD/DVD device"
        case .storageArrayController: "storage array controller"
        case .enclosureServices: "enclosure services device"
        case .simplifiedDirectAccess: "simplified direct-access device"
        case .wellKnownLogicalUnit: "well-known logical unit"
        case .unknown: "unknown or no device type"
        default: "device type \(hex2(rawValue))h"
        }
    }
}

/// PERIPHERAL QUALIFIER (INQUIRY byte 0 bits 7:5).
public struct PeripheralQualifier: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue & 0x07 }
    /// 000b: the logical unit is present.
    public static let connected = PeripheralQualifier(rawValue: 0)
    /// 001b: capable of supporting a logical unit, but not connected.
    public static let notConnected = PeripheralQualifier(rawValue: 1)
    /// 011b: no logical unit at this LUN.
    public static let notSupported = PeripheralQualifier(rawValue: 3)
    public var description: String {
        switch self {
        case .connected: "connected"
        case .notConnected: "not connected"
        case .notSupported: "no logical unit"
        default: "qualifier \(rawValue)"
        }
    }
}

/// Standard INQUIRY data (EVPD = 0; scsi-commands.md §5.3).
public struct StandardInquiryData: Hashable, Sendable {
    public var peripheralQualifier: PeripheralQualifier
    public var peripheralDeviceType: PeripheralDeviceType
    public var removable: Bool
    public var version: UInt8
    public var responseDataFormat: UInt8
    /// TPGS (ALUA support), 0–3.
    public var targetPortGroupSupport: UInt8
    public var protect: Bool
    public var commandQueuing: Bool
    public var vendor: String
    public var product: String
    public var revision: String

    public init(
        peripheralQualifier: PeripheralQualifier = .connected, peripheralDeviceType: PeripheralDeviceType = .directAccess,
        removable: Bool = false, version: UInt8 = 6, responseDataFormat: UInt8 = 2, targetPortGroupSupport: UInt8 = 0,
        protect: Bool = false, commandQueuing: Bool = true, vendor: String, product: String, revision: String
    ) {
        self.peripheralQualifier = peripheralQualifier
        self.peripheralDeviceType = peripheralDeviceType
        self.removable = removable
        self.version = version
        self.responseDataFormat = responseDataFormat
        self.targetPortGroupSupport = targetPortGroupSupport
        self.protect = protect
        self.commandQueuing = commandQueuing
        self.vendor = vendor
        self.product = product
        self.revision = revision
    }

    /// Parses standard INQUIRY data. At least 36 bytes must be present (SPC: the ADDITIONAL LENGTH
    /// describes at least 31 more bytes); fewer is `.truncated`.
    public init(parsing buffer: ByteBuffer) throws(SCSIParseError) {
        let ctx = "standard INQUIRY data"
        try buffer.scsiRequire(5, ctx)
        let total = Int(buffer.scsiInteger(at: 4, as: UInt8.self) ?? 0) + 5
        guard total >= 36 else {
            throw SCSIParseError(.inconsistent, ctx, "ADDITIONAL LENGTH \(total - 5) is below the 31-byte minimum")
        }
        try buffer.scsiRequire(36, ctx, total: total)
        let b0 = buffer.scsiInteger(at: 0, as: UInt8.self) ?? 0
        self.peripheralQualifier = PeripheralQualifier(rawValue: b0 >> 5)
        self.peripheralDeviceType = PeripheralDeviceType(rawValue: b0)
        self.removable = (buffer.scsiInteger(at: 1, as: UInt8.self) ?? 0) & 0x80 != 0
        self.version = buffer.scsiInteger(at: 2, as: UInt8.self) ?? 0
        self.responseDataFormat = (buffer.scsiInteger(at: 3, as: UInt8.self) ?? 0) & 0x0F
        let b5 = buffer.scsiInteger(at: 5, as: UInt8.self) ?? 0
        self.targetPortGroupSupport = (b5 >> 4) & 0x03
        self.protect = b5 & 0x01 != 0
        self.commandQueuing = (buffer.scsiInteger(at: 7, as: UInt8.self) ?? 0) & 0x02 != 0
        self.vendor = scsiASCII(buffer.scsiBytes(at: 8, count: 8) ?? [])
        self.product = scsiASCII(buffer.scsiBytes(at: 16, count: 16) ?? [])
        self.revision = scsiASCII(buffer.scsiBytes(at: 32, count: 4) ?? [])
    }

    /// Encodes 36 bytes of standard data (for fakes).
    public func encode() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(peripheralQualifier.rawValue << 5 | peripheralDeviceType.rawValue)
        b.writeInteger(UInt8(removable ? 0x80 : 0))
        b.writeInteger(version)
        b.writeInteger(UInt8(0x10) | (responseDataFormat & 0x0F))  // HISUP
        b.writeInteger(UInt8(31))
        b.writeInteger(UInt8(targetPortGroupSupport << 4 | (protect ? 1 : 0)))
        b.writeInteger(UInt8(0))
        b.writeInteger(UInt8(commandQueuing ? 0x02 : 0))
        for (text, width) in [(vendor, 8), (product, 16), (revision, 4)] {
            var bytes = Array(text.utf8.prefix(width))
            bytes += Array(repeating: 0x20, count: width - bytes.count)
            b.writeBytes(bytes)
        }
        return b
    }
}

// MARK: - VPD pages

/// The 4-byte VPD page header, checked against the page asked for. Returns the total page length
/// (header + PAGE LENGTH); throws `.truncated` with `requiredLength` when the data is cut short.
func vpdPageLength(_ buffer: ByteBuffer, expected: VPDPageCode, _ ctx: String) throws(SCSIParseError) -> Int {
    try buffer.scsiRequire(4, ctx)
    let code = buffer.scsiInteger(at: 1, as: UInt8.self) ?? 0
    guard code == expected.rawValue else {
        throw SCSIParseError(.unexpectedPage, ctx, "got page \(hex2(code))h")
    }
    let total = Int(buffer.scsiInteger(at: 2, as: UInt16.self) ?? 0) + 4
    try buffer.scsiRequire(total, ctx, total: total)
    return total
}

/// VPD 00h: Supported VPD pages.
public struct SupportedVPDPages: Hashable, Sendable {
    public var pages: [VPDPageCode]
    public init(pages: [VPDPageCode]) { self.pages = pages }
    public func contains(_ page: VPDPageCode) -> Bool { pages.contains(page) }

    public init(parsing buffer: ByteBuffer) throws(SCSIParseError) {
        let total = try vpdPageLength(buffer, expected: .supportedPages, "VPD supported pages")
        self.pages = (buffer.scsiBytes(at: 4, count: total - 4) ?? []).map(VPDPageCode.init(rawValue:))
    }
}

/// VPD 80h: Unit serial number (ASCII, spaces trimmed).
public struct UnitSerialNumber: Hashable, Sendable {
    public var serial: String
    public init(serial: String) { self.serial = serial }
    public init(parsing buffer: ByteBuffer) throws(SCSIParseError) {
        let total = try vpdPageLength(buffer, expected: .unitSerialNumber, "VPD unit serial number")
        self.serial = scsiASCII(buffer.scsiBytes(at: 4, count: total - 4) ?? [])
    }
}

/// One designation descriptor of VPD 83h (scsi-commands.md §5.3).
public struct Designator: Hashable, Sendable, CustomStringConvertible {
    /// DESIGNATOR TYPE (byte 1 bits 3:0). Open.
    public struct DesignatorType: RawRepresentable, Hashable, Sendable {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue & 0x0F }
        public static let vendorSpecific = DesignatorType(rawValue: 0)
        public static let t10VendorID = DesignatorType(rawValue: 1)
        public static let eui64 = DesignatorType(rawValue: 2)
        public static let naa = DesignatorType(rawValue: 3)
        public static let relativeTargetPort = DesignatorType(rawValue: 4)
        public static let targetPortGroup = DesignatorType(rawValue: 5)
        public static let logicalUnitGroup = DesignatorType(rawValue: 6)
        public static let md5LogicalUnitIdentifier = DesignatorType(rawValue: 7)
        public static let scsiNameString = DesignatorType(rawValue: 8)
    }
    /// ASSOCIATION (byte 1 bits 5:4).
    public enum Association: UInt8, Hashable, Sendable {
        case logicalUnit = 0, targetPort = 1, targetDevice = 2, reserved = 3
    }
    public var protocolIdentifier: UInt8
    /// CODE SET: 1 binary, 2 ASCII, 3 UTF-8.
    public var codeSet: UInt8
    public var protocolIdentifierValid: Bool
    public var association: Association
    public var type: DesignatorType
    public var value: [UInt8]

    public init(
        type: DesignatorType, association: Association = .logicalUnit, codeSet: UInt8 = 1, protocolIdentifier: UInt8 = 0,
        protocolIdentifierValid: Bool = false, value: [UInt8]
    ) {
        self.type = type
        self.association = association
        self.codeSet = codeSet
        self.protocolIdentifier = protocolIdentifier
        self.protocolIdentifierValid = protocolIdentifierValid
        self.value = value
    }

    /// Readable form: "naa.6001405...", "eui.0011...", "t10.VENDOR...", the SCSI name string, or hex.
    public var description: String {
        let hex = value.map { String($0, radix: 16).count < 2 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
            .joined()
        switch type {
        case .naa: return "naa.\(hex)"
        case .eui64: return "eui.\(hex)"
        case .t10VendorID: return "t10.\(scsiASCII(value))"
        case .scsiNameString:
            return scsiASCII(Array(value.prefix { $0 != 0 }))
        default:
            return codeSet == 2 || codeSet == 3 ? scsiASCII(value) : "type\(type.rawValue).\(hex)"
        }
    }

    /// Writes the descriptor (for fakes).
    public func write(to b: inout ByteBuffer) {
        b.writeInteger((protocolIdentifier << 4) | (codeSet & 0x0F))
        b.writeInteger((protocolIdentifierValid ? 0x80 : 0) | (association.rawValue << 4) | type.rawValue)
        b.writeInteger(UInt8(0))
        b.writeInteger(UInt8(truncatingIfNeeded: value.count))
        b.writeBytes(value.prefix(255))
    }
}

/// VPD 83h: Device identification.
public struct DeviceIdentification: Hashable, Sendable {
    public var designators: [Designator]
    public init(designators: [Designator]) { self.designators = designators }

    /// The best stable identifier of the logical unit itself: association LU, in the order NAA, EUI-64,
    /// SCSI name string, T10 vendor ID (scsi-commands.md §5.3). Among NAA designators the IEEE-based
    /// ones (NAA 6, 5, 2) come before a locally assigned one (NAA 3).
    public var preferredLogicalUnitDesignator: Designator? {
        let lu = designators.filter { $0.association == .logicalUnit }
        let naa = lu.filter { $0.type == .naa }
        for naaType: UInt8 in [6, 5, 2] {
            if let d = naa.first(where: { ($0.value.first ?? 0) >> 4 == naaType }) { return d }
        }
        for type in [Designator.DesignatorType.naa, .eui64, .scsiNameString, .t10VendorID] {
            if let d = lu.first(where: { $0.type == type }) { return d }
        }
        return lu.first
    }

    public init(parsing buffer: ByteBuffer) throws(SCSIParseError) {
        let ctx = "VPD device identification"
        let total = try vpdPageLength(buffer, expected: .deviceIdentification, ctx)
        var out: [Designator] = []
        var off = 4
        while off < total {
            guard off + 4 <= total, let b0 = buffer.scsiInteger(at: off, as: UInt8.self),
                let b1 = buffer.scsiInteger(at: off + 1, as: UInt8.self),
                let n = buffer.scsiInteger(at: off + 3, as: UInt8.self)
            else { throw SCSIParseError(.inconsistent, ctx, "designator header at byte \(off) runs past the page") }
            guard off + 4 + Int(n) <= total, let value = buffer.scsiBytes(at: off + 4, count: Int(n)) else {
                throw SCSIParseError(.inconsistent, ctx, "designator at byte \(off) (length \(n)) runs past the page")
            }
            out.append(
                Designator(
                    type: .init(rawValue: b1), association: Designator.Association(rawValue: (b1 >> 4) & 3) ?? .reserved,
                    codeSet: b0 & 0x0F, protocolIdentifier: b0 >> 4, protocolIdentifierValid: b1 & 0x80 != 0,
                    value: value))
            off += 4 + Int(n)
        }
        self.designators = out
    }
}

/// VPD B0h: Block limits (SBC; scsi-commands.md §5.3). Fields that a short (older) page lacks are nil.
/// Counts are in logical blocks; 0 means "not reported".
public struct BlockLimits: Hashable, Sendable {
    public var writeSameNonZero: Bool = false
    public var maximumCompareAndWriteLength: UInt8 = 0
    public var optimalTransferLengthGranularity: UInt16 = 0
    public var maximumTransferLength: UInt32 = 0
    public var optimalTransferLength: UInt32 = 0
    public var maximumPrefetchLength: UInt32? = nil
    /// 0 = UNMAP not supported, FFFFFFFFh = no limit.
    public var maximumUnmapLBACount: UInt32? = nil
    /// 0 = UNMAP not supported, FFFFFFFFh = no limit.
    public var maximumUnmapBlockDescriptorCount: UInt32? = nil
    public var optimalUnmapGranularity: UInt32? = nil
    /// Present only when UGAVALID is set.
    public var unmapGranularityAlignment: UInt32? = nil
    public var maximumWriteSameLength: UInt64? = nil

    public init() {}

    /// Requires the 16-byte SBC-3 minimum (page length ≥ 0Ch); later fields are read when the page covers them.
    public init(parsing buffer: ByteBuffer) throws(SCSIParseError) {
        let ctx = "VPD block limits"
        let total = try vpdPageLength(buffer, expected: .blockLimits, ctx)
        guard total >= 16 else {
            throw SCSIParseError(.inconsistent, ctx, "page length \(total - 4) is below the 0Ch minimum")
        }
        func u32(_ at: Int) -> UInt32? { at + 4 <= total ? buffer.scsiInteger(at: at, as: UInt32.self) : nil }
        self.writeSameNonZero = (buffer.scsiInteger(at: 4, as: UInt8.self) ?? 0) & 0x01 != 0
        self.maximumCompareAndWriteLength = buffer.scsiInteger(at: 5, as: UInt8.self) ?? 0
        self.optimalTransferLengthGranularity = buffer.scsiInteger(at: 6, as: UInt16.self) ?? 0
        self.maximumTransferLength = u32(8) ?? 0
        self.optimalTransferLength = u32(12) ?? 0
        self.maximumPrefetchLength = u32(16)
        self.maximumUnmapLBACount = u32(20)
        self.maximumUnmapBlockDescriptorCount = u32(24)
        self.optimalUnmapGranularity = u32(28)
        if let uga = u32(32), uga & 0x8000_0000 != 0 { self.unmapGranularityAlignment = uga & 0x7FFF_FFFF }
        self.maximumWriteSameLength = 44 <= total ? buffer.scsiInteger(at: 36, as: UInt64.self) : nil
    }

    /// Encodes a full 64-byte page (for fakes). Nil fields are written as 0.
    public func encode(peripheral: UInt8 = 0) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(peripheral)
        b.writeInteger(VPDPageCode.blockLimits.rawValue)
        b.writeInteger(UInt16(0x3C))
        b.writeInteger(UInt8(writeSameNonZero ? 1 : 0))
        b.writeInteger(maximumCompareAndWriteLength)
        b.writeInteger(optimalTransferLengthGranularity)
        b.writeInteger(maximumTransferLength)
        b.writeInteger(optimalTransferLength)
        b.writeInteger(maximumPrefetchLength ?? 0)
        b.writeInteger(maximumUnmapLBACount ?? 0)
        b.writeInteger(maximumUnmapBlockDescriptorCount ?? 0)
        b.writeInteger(optimalUnmapGranularity ?? 0)
        b.writeInteger(unmapGranularityAlignment.map { $0 | 0x8000_0000 } ?? 0)
        b.writeInteger(maximumWriteSameLength ?? 0)
        b.writeRepeatingByte(0, count: 20)
        return b
    }
}

/// VPD B1h: Block device characteristics.
public struct BlockDeviceCharacteristics: Hashable, Sendable {
    /// 0 = not reported, 1 = non-rotating (solid state), else revolutions per minute.
    public var mediumRotationRate: UInt16
    public var productType: UInt8?
    public var nominalFormFactor: UInt8?

    public init(mediumRotationRate: UInt16, productType: UInt8? = nil, nominalFormFactor: UInt8? = nil) {
        self.mediumRotationRate = mediumRotationRate
        self.productType = productType
        self.nominalFormFactor = nominalFormFactor
    }

    public var isRotational: Bool? {
        switch mediumRotationRate {
        case 0: nil
        case 1: false
        default: true
        }
    }

    public init(parsing buffer: ByteBuffer) throws(SCSIParseError) {
        let ctx = "VPD block device characteristics"
        let total = try vpdPageLength(buffer, expected: .blockDeviceCharacteristics, ctx)
        guard total >= 6 else { throw SCSIParseError(.inconsistent, ctx, "page length \(total - 4) is below 2") }
        self.mediumRotationRate = buffer.scsiInteger(at: 4, as: UInt16.self) ?? 0
        self.productType = total >= 7 ? buffer.scsiInteger(at: 6, as: UInt8.self) : nil
        self.nominalFormFactor = total >= 8 ? buffer.scsiInteger(at: 7, as: UInt8.self).map { $0 & 0x0F } : nil
    }

    public func encode(peripheral: UInt8 = 0) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(peripheral)
        b.writeInteger(VPDPageCode.blockDeviceCharacteristics.rawValue)
        b.writeInteger(UInt16(0x3C))
        b.writeInteger(mediumRotationRate)
        b.writeInteger(productType ?? 0)
        b.writeInteger(nominalFormFactor ?? 0)
        b.writeRepeatingByte(0, count: 0x3C - 4)
        return b
    }
}

/// VPD B2h: Logical block provisioning.
public struct LogicalBlockProvisioning: Hashable, Sendable {
    public var thresholdExponent: UInt8 = 0
    /// LBPU: UNMAP supported.
    public var unmapSupported: Bool = false
    /// LBPWS: WRITE SAME(16) with UNMAP = 1 supported.
    public var writeSame16UnmapSupported: Bool = false
    /// LBPWS10: WRITE SAME(10) with UNMAP = 1 supported.
    public var writeSame10UnmapSupported: Bool = false
    /// LBPRZ (bit 2 in both the SBC-3 bit and SBC-4 field readings): unmapped blocks read as zeros.
    public var unmappedReadsZero: Bool = false
    public var anchorSupported: Bool = false
    public var descriptorPresent: Bool = false
    /// 0 not reported / fully provisioned, 1 resource provisioned, 2 thin provisioned.
    public var provisioningType: UInt8? = nil

    public init() {}

    public init(parsing buffer: ByteBuffer) throws(SCSIParseError) {
        let ctx = "VPD logical block provisioning"
        let total = try vpdPageLength(buffer, expected: .logicalBlockProvisioning, ctx)
        guard total >= 6 else { throw SCSIParseError(.inconsistent, ctx, "page length \(total - 4) is below 2") }
        self.thresholdExponent = buffer.scsiInteger(at: 4, as: UInt8.self) ?? 0
        let b5 = buffer.scsiInteger(at: 5, as: UInt8.self) ?? 0
        self.unmapSupported = b5 & 0x80 != 0
        self.writeSame16UnmapSupported = b5 & 0x40 != 0
        self.writeSame10UnmapSupported = b5 & 0x20 != 0
        self.unmappedReadsZero = b5 & 0x04 != 0
        self.anchorSupported = b5 & 0x02 != 0
        self.descriptorPresent = b5 & 0x01 != 0
        self.provisioningType = total >= 7 ? buffer.scsiInteger(at: 6, as: UInt8.self).map { $0 & 0x07 } : nil
    }

    public func encode(peripheral: UInt8 = 0) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(peripheral)
        b.writeInteger(VPDPageCode.logicalBlockProvisioning.rawValue)
        b.writeInteger(UInt16(4))
        b.writeInteger(thresholdExponent)
        var b5: UInt8 = 0
        if unmapSupported { b5 |= 0x80 }
        if writeSame16UnmapSupported { b5 |= 0x40 }
        if writeSame10UnmapSupported { b5 |= 0x20 }
        if unmappedReadsZero { b5 |= 0x04 }
        if anchorSupported { b5 |= 0x02 }
        b.writeInteger(b5)
        b.writeInteger(provisioningType ?? 0)
        b.writeInteger(UInt8(0))
        return b
    }
}
