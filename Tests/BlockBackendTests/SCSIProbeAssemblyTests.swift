import BlockBackend
@testable import ISCSIBlockBackend
import NIOCore
import SCSI
import Testing

/// The probe's pure steps on canned parameter data (scsi-commands.md §6): what the answers of INQUIRY, the
/// VPD pages, READ CAPACITY and MODE SENSE make of the device. No I/O: the bytes are what a target sends.
@Suite struct SCSIProbeAssemblyTests {
    static let lun = LogicalUnitNumber(1)

    /// Standard INQUIRY data (§5.3), 36 bytes: byte 0 qualifier and device type, ADDITIONAL LENGTH 31.
    static func inquiry(byte0: UInt8 = 0x00) -> [UInt8] {
        [byte0, 0, 6, 0x12, 31, 0, 0, 0x02] + Array("LIO-ORG ".utf8) + Array("disk0           ".utf8) + Array("4.0 ".utf8)
    }

    /// VPD 83h: an NAA designator of the LU and a relative target port designator (association 01b).
    static let deviceIdentification: [UInt8] =
        [0x00, 0x83, 0x00, 28]
        + [0x01, 0x03, 0x00, 16, 0x60, 0x01, 0x40, 0x5F, 0xAB, 0xCD, 0xEF, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x2A]
        + [0x61, 0x94, 0x00, 4, 0, 0, 0, 1]
    /// VPD 80h: serial "SER12345".
    static let unitSerialNumber: [UInt8] = [0x00, 0x80, 0x00, 8] + Array("SER12345".utf8)
    /// VPD B0h (page length 3Ch): MAXIMUM TRANSFER LENGTH 2048 blocks, OPTIMAL TRANSFER LENGTH GRANULARITY 4.
    static let blockLimits: [UInt8] = {
        var page = [UInt8](repeating: 0, count: 64)
        page[1] = 0xB0
        page[3] = 0x3C
        page[7] = 4
        page[10] = 0x08  // 0x00000800
        return page
    }()
    /// VPD B2h: LBPU and LBPWS.
    static let provisioning: [UInt8] = [0x00, 0xB2, 0x00, 0x04, 0x00, 0xC0, 0x02, 0x00]
    /// READ CAPACITY(16) (§5.5): last LBA 1FFFFFh, 4096-byte blocks, exponent 1, LBPME and LBPRZ.
    static let readCapacity16: [UInt8] =
        [0, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF] + [0, 0, 0x10, 0] + [0, 0x01, 0xC0, 0] + [UInt8](repeating: 0, count: 16)
    /// MODE SENSE(10) (§5.11): WP and DPOFUA in the device-specific parameter; the Caching page with WCE = 0.
    static let modeSense10: [UInt8] = [0, 26, 0, 0x90, 0, 0, 0, 0] + [0x08, 18] + [UInt8](repeating: 0, count: 18)
    /// MODE SENSE(6): header only, nothing set, no Caching page.
    static let modeSense6HeaderOnly: [UInt8] = [3, 0, 0, 0]

    static func parse<T>(_ bytes: [UInt8], _ parser: (ByteBuffer) throws -> T) throws -> T { try parser(ByteBuffer(bytes: bytes)) }

    @Test func aThinWriteProtectedLUWithoutWriteCache() throws {
        let inquiry = try Self.parse(Self.inquiry()) { try StandardInquiryData(parsing: $0) }
        try SCSIDeviceProperties.checkServable(inquiry, lun: Self.lun)
        var p = SCSIDeviceProperties(inquiry: inquiry, blockCount: 0, blockLength: 0)
        p.serialNumber = try Self.parse(Self.unitSerialNumber) { try UnitSerialNumber(parsing: $0) }.serial
        p.deviceIdentification = try Self.parse(Self.deviceIdentification) { try DeviceIdentification(parsing: $0) }
        p.blockLimits = try Self.parse(Self.blockLimits) { try BlockLimits(parsing: $0) }
        p.provisioning = try Self.parse(Self.provisioning) { try LogicalBlockProvisioning(parsing: $0) }
        try p.setCapacity(.readCapacity16(try Self.parse(Self.readCapacity16) { try ReadCapacity16Data(parsing: $0) }), lun: Self.lun)
        p.setMode(try Self.parse(Self.modeSense10) { try ModeParameters(parsing: $0, tenByte: true) })

        #expect(p.blockCount == 0x20_0000 && p.blockLength == 4096 && p.usedReadCapacity16)
        #expect(p.physicalBlockExponent == 1 && p.provisioningManagementEnabled && p.unmappedReadsZero)
        #expect(p.writeProtected && p.dpoFUA && !p.writeCacheEnabled)

        let info = SCSIBlockStrategy.info(properties: p, strategy: SCSIBlockStrategy(properties: p))
        #expect(info.size == 0x20_0000 * 4096 && info.logicalBlockSize == 4096)
        #expect(info.preferredBlockSize == 16384, "granularity 4 × 4096 beats the 8 KiB physical block")
        #expect(info.maxTransferLength == 2048 * 4096)
        #expect(info.readOnly && !info.canFlush && info.canTrim && info.canFastZero)
        #expect(info.description == "LIO-ORG disk0 (serial SER12345)")

        let identity = LUNIdentityGuard(serving: p).identity
        #expect("\(identity)" == "LIO-ORG disk0 naa.6001405fabcdef01000000000000002a serial SER12345 2097152×4096")
        #expect(identity.designators.count == 1, "the target port designator does not name the LU")
    }

    @Test func aSupportedPagesListThatOmitsItselfIsNotBelieved() throws {
        func tried(_ bytes: [UInt8]) throws -> [VPDPageCode] {
            SCSIDeviceProperties.unlistedPagesToTry(try Self.parse(bytes) { try SupportedVPDPages(parsing: $0) })
        }
        // LIO before a unit serial is set: page length 0.
        #expect(try tried([0x00, 0x00, 0x00, 0x00]) == [.blockLimits, .blockDeviceCharacteristics, .logicalBlockProvisioning])
        // LIO with one, and tgtd: the list is believed, whatever it leaves out.
        #expect(try tried([0x00, 0x00, 0x00, 0x08, 0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2, 0xB3]) == [])
        #expect(try tried([0x00, 0x00, 0x00, 0x03, 0x00, 0x80, 0x83]) == [])
        // A list naming some pages but not itself: only the SBC pages it lacks.
        #expect(try tried([0x00, 0x00, 0x00, 0x02, 0x80, 0xB0]) == [.blockDeviceCharacteristics, .logicalBlockProvisioning])
        #expect(SCSIDeviceProperties.unlistedPagesToTry(nil) == [], "no VPD support at all: nothing is guessed")
    }

    @Test func onlyAPresentDirectAccessLUIsServed() throws {
        let cdrom = try Self.parse(Self.inquiry(byte0: 0x05)) { try StandardInquiryData(parsing: $0) }
        #expect(throws: SCSIProbeError(.notDirectAccess, "LUN 1 is a CD/DVD device (type 5), not a direct-access block device")) {
            try SCSIDeviceProperties.checkServable(cdrom, lun: Self.lun)
        }
        // Qualifier 011b, type 1Fh: no logical unit at this LUN.
        let none = try Self.parse(Self.inquiry(byte0: 0x7F)) { try StandardInquiryData(parsing: $0) }
        let noLU = #expect(throws: SCSIProbeError.self) { try SCSIDeviceProperties.checkServable(none, lun: Self.lun) }
        #expect(noLU?.kind == .noLogicalUnit)
        // Qualifier 001b (capable, not connected) with a disk type is not served either.
        let disconnected = try Self.parse(Self.inquiry(byte0: 0x20)) { try StandardInquiryData(parsing: $0) }
        let notConnected = #expect(throws: SCSIProbeError.self) {
            try SCSIDeviceProperties.checkServable(disconnected, lun: Self.lun)
        }
        #expect(notConnected?.kind == .noLogicalUnit)
    }

    @Test func readCapacity10AnswerLeavesNoThinProvisioning() throws {
        var p = SCSIDeviceProperties(inquiry: StandardInquiryData(vendor: "V", product: "P", revision: "1"), blockCount: 0, blockLength: 0)
        try p.setCapacity(.readCapacity16(try Self.parse(Self.readCapacity16) { try ReadCapacity16Data(parsing: $0) }), lun: Self.lun)
        // A refresh that only gets READ CAPACITY(10) through forgets what only (16) reports.
        let rc10 = try Self.parse([0x00, 0x00, 0x07, 0xFF, 0x00, 0x00, 0x02, 0x00]) { try ReadCapacity10Data(parsing: $0) }
        try p.setCapacity(.readCapacity10(rc10), lun: Self.lun)
        #expect(p.blockCount == 2048 && p.blockLength == 512 && !p.usedReadCapacity16)
        #expect(p.physicalBlockExponent == 0 && !p.provisioningManagementEnabled && !p.unmappedReadsZero)
    }

    @Test func blockLengthsThatCannotBeServed() throws {
        var p = SCSIDeviceProperties(inquiry: StandardInquiryData(vendor: "V", product: "P", revision: "1"), blockCount: 7, blockLength: 512)
        for length: UInt32 in [256, 520, 3072, 131_072] {
            #expect(throws: SCSIProbeError(.unsupportedGeometry, "LUN 1: logical block length \(length) is not a power of two in 512...65536")) {
                try p.setCapacity(.readCapacity10(ReadCapacity10Data(lastLBA: 100, blockLength: length)), lun: Self.lun)
            }
        }
        #expect(throws: SCSIProbeError(.unsupportedGeometry, "LUN 1: capacity overflows 64 bits")) {
            try p.setCapacity(.readCapacity16(ReadCapacity16Data(lastLBA: UInt64.max >> 9, blockLength: 512)), lun: Self.lun)
        }
        #expect(p.blockCount == 7 && p.blockLength == 512, "a refused answer changes nothing")
        try p.setCapacity(.readCapacity16(ReadCapacity16Data(lastLBA: (UInt64.max >> 9) - 1, blockLength: 512)), lun: Self.lun)
        #expect(p.blockCount == UInt64.max >> 9)
    }

    @Test func modeDataDefaults() throws {
        var p = SCSIDeviceProperties(inquiry: StandardInquiryData(vendor: "V", product: "P", revision: "1"), blockCount: 8, blockLength: 512)
        p.setMode(try Self.parse(Self.modeSense10) { try ModeParameters(parsing: $0, tenByte: true) })
        #expect(p.writeProtected && p.dpoFUA && !p.writeCacheEnabled)
        // Without the Caching page the write cache is assumed on (FLUSH is never skipped).
        p.setMode(try Self.parse(Self.modeSense6HeaderOnly) { try ModeParameters(parsing: $0, tenByte: false) })
        #expect(!p.writeProtected && !p.dpoFUA && p.writeCacheEnabled)
        p.setMode(try Self.parse(Self.modeSense10) { try ModeParameters(parsing: $0, tenByte: true) })
        // No MODE SENSE answer at all: writable, no DPOFUA, write cache on.
        p.setMode(nil)
        #expect(!p.writeProtected && !p.dpoFUA && p.writeCacheEnabled)
    }
}
