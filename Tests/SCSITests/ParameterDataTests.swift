import NIOCore
import SCSI
import Testing

@Suite struct InquiryTests {
    static func standard(_ mutate: (inout [UInt8]) -> Void = { _ in }) -> ByteBuffer {
        var b = [UInt8](repeating: 0, count: 36)
        b[0] = 0x00
        b[2] = 0x06
        b[3] = 0x12
        b[4] = 31
        b[5] = 0x10  // TPGS implicit
        b[7] = 0x02
        b.replaceSubrange(8..<16, with: Array("LIO-ORG ".utf8))
        b.replaceSubrange(16..<32, with: Array("disk0           ".utf8))
        b.replaceSubrange(32..<36, with: Array("4.0 ".utf8))
        mutate(&b)
        return ByteBuffer(bytes: b)
    }

    @Test func standardData() throws {
        let d = try StandardInquiryData(parsing: Self.standard())
        #expect(d.peripheralQualifier == .connected && d.peripheralDeviceType == .directAccess)
        #expect(d.vendor == "LIO-ORG" && d.product == "disk0" && d.revision == "4.0")
        #expect(d.version == 6 && d.responseDataFormat == 2 && d.targetPortGroupSupport == 1 && d.commandQueuing)
    }

    @Test func qualifierAndType() throws {
        let d = try StandardInquiryData(parsing: Self.standard { $0[0] = 0x7F })
        #expect(d.peripheralQualifier == .notSupported && d.peripheralDeviceType == .unknown)
        let cd = try StandardInquiryData(parsing: Self.standard { $0[0] = 0x25 })
        #expect(cd.peripheralQualifier == .notConnected && cd.peripheralDeviceType == .cdDVD)
    }

    @Test func nonPrintableVendorIsSanitised() throws {
        let d = try StandardInquiryData(parsing: Self.standard { $0[8] = 0x07; $0[9] = 0xFF })
        #expect(d.vendor.hasPrefix("??"))
    }

    @Test func truncatedAndInconsistent() {
        do {
            _ = try StandardInquiryData(parsing: ByteBuffer(bytes: Array(Self.standard { $0[4] = 91 }.readableBytesView.prefix(30))))
            Issue.record("accepted")
        } catch {
            #expect(error.kind == .truncated && error.requiredLength == 96)
        }
        #expect(throws: SCSIParseError.self) { try StandardInquiryData(parsing: Self.standard { $0[4] = 10 }) }
        #expect(throws: SCSIParseError.self) { try StandardInquiryData(parsing: ByteBuffer(bytes: [0, 0, 6])) }
    }

    @Test func encodeRoundTrip() throws {
        let d = StandardInquiryData(vendor: "FAKE", product: "SCSI DISK", revision: "0001")
        #expect(try StandardInquiryData(parsing: d.encode()) == d)
    }
}

@Suite struct VPDTests {
    static func page(_ code: UInt8, _ body: [UInt8], declaredLength: Int? = nil) -> ByteBuffer {
        let len = declaredLength ?? body.count
        return ByteBuffer(bytes: [0, code, UInt8(len >> 8), UInt8(len & 0xFF)] + body)
    }

    @Test func supportedPages() throws {
        let p = try SupportedVPDPages(parsing: Self.page(0x00, [0x00, 0x80, 0x83, 0xB0]))
        #expect(p.pages == [.supportedPages, .unitSerialNumber, .deviceIdentification, .blockLimits])
        #expect(p.contains(.blockLimits) && !p.contains(.logicalBlockProvisioning))
    }

    @Test func wrongPageAndTruncation() {
        do {
            _ = try SupportedVPDPages(parsing: Self.page(0x80, [1]))
            Issue.record("accepted")
        } catch { #expect(error.kind == .unexpectedPage) }
        do {
            _ = try SupportedVPDPages(parsing: Self.page(0x00, [0, 0x80], declaredLength: 300))
            Issue.record("accepted")
        } catch { #expect(error.kind == .truncated && error.requiredLength == 304) }
    }

    @Test func serial() throws {
        #expect(try UnitSerialNumber(parsing: Self.page(0x80, Array("  beaf11  ".utf8))).serial == "beaf11")
        #expect(try UnitSerialNumber(parsing: Self.page(0x80, [])).serial == "")
    }

    @Test func deviceIdentification() throws {
        var body: [UInt8] = []
        body += [0x01, 0x03, 0, 8, 0x60, 0x01, 0x40, 0x5F, 0xAB, 0xCD, 0xEF, 0x01]  // NAA, LU
        body += [0x01, 0x02, 0, 8, 0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77]  // EUI-64, LU
        body += [0x02, 0x01, 0, 8] + Array("LIO-ORG ".utf8)  // T10, LU
        body += [0x53, 0x98, 0, 12] + Array("iqn.x,t,0x1".utf8) + [0]  // SCSI name, target port, PIV
        body += [0x01, 0x14, 0, 4, 0, 0, 0, 1]  // relative target port
        let d = try DeviceIdentification(parsing: Self.page(0x83, body))
        #expect(d.designators.count == 5)
        #expect(d.designators[0].type == .naa && d.designators[0].association == .logicalUnit)
        #expect("\(d.designators[0])" == "naa.6001405fabcdef01")
        #expect("\(d.designators[1])" == "eui.0011223344556677")
        #expect("\(d.designators[2])" == "t10.LIO-ORG")
        #expect(d.designators[3].type == .scsiNameString && d.designators[3].association == .targetPort)
        #expect(d.designators[3].protocolIdentifier == 5 && d.designators[3].protocolIdentifierValid)
        #expect("\(d.designators[3])" == "iqn.x,t,0x1")
        #expect(d.designators[4].type == .relativeTargetPort)
        #expect(d.preferredLogicalUnitDesignator == d.designators[0])
        // tgt's order: T10, a locally assigned NAA 3, then an NAA 6: the NAA 6 wins.
        let naa3 = Designator(type: .naa, value: [0x30, 0, 0, 1, 0, 0, 0, 1])
        let naa6 = Designator(type: .naa, value: [0x60] + [UInt8](repeating: 0, count: 15))
        let tgtStyle = DeviceIdentification(designators: [d.designators[2], naa3, naa6])
        #expect(tgtStyle.preferredLogicalUnitDesignator == naa6)
        #expect(DeviceIdentification(designators: [d.designators[2], naa3]).preferredLogicalUnitDesignator == naa3)
        let withoutNAA = DeviceIdentification(designators: Array(d.designators.dropFirst()))
        #expect(withoutNAA.preferredLogicalUnitDesignator?.type == .eui64)
    }

    @Test func deviceIdentificationOverrun() {
        // Designator length 20 but only 8 bytes in the page.
        #expect(throws: SCSIParseError.self) {
            try DeviceIdentification(parsing: Self.page(0x83, [0x01, 0x03, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8]))
        }
        // A partial designator header.
        #expect(throws: SCSIParseError.self) { try DeviceIdentification(parsing: Self.page(0x83, [0x01, 0x03])) }
    }

    @Test func blockLimitsFull() throws {
        var l = BlockLimits()
        l.writeSameNonZero = true
        l.optimalTransferLengthGranularity = 8
        l.maximumTransferLength = 0x4000
        l.optimalTransferLength = 0x800
        l.maximumPrefetchLength = 0
        l.maximumUnmapLBACount = 0xFFFF_FFFF
        l.maximumUnmapBlockDescriptorCount = 16
        l.optimalUnmapGranularity = 8
        l.unmapGranularityAlignment = 3
        l.maximumWriteSameLength = 0x1_0000_0000
        let encoded = l.encode()
        #expect(encoded.readableBytes == 64)
        #expect(try BlockLimits(parsing: encoded) == l)
        let bytes = encoded.getBytes(at: 0, length: 64)!
        #expect(bytes[1] == 0xB0 && bytes[3] == 0x3C && bytes[4] == 1)
        #expect(Array(bytes[8..<12]) == [0, 0, 0x40, 0])
        #expect(Array(bytes[32..<36]) == [0x80, 0, 0, 3])
    }

    @Test func blockLimitsShortSBC3Page() throws {
        // Page length 0Ch: only through OPTIMAL TRANSFER LENGTH.
        let b = Self.page(0xB0, [0, 0, 0, 8, 0, 0, 0x10, 0, 0, 0, 0x01, 0])
        let l = try BlockLimits(parsing: b)
        #expect(l.optimalTransferLengthGranularity == 8 && l.maximumTransferLength == 0x1000 && l.optimalTransferLength == 0x100)
        #expect(l.maximumUnmapLBACount == nil && l.maximumWriteSameLength == nil && l.unmapGranularityAlignment == nil)
        #expect(throws: SCSIParseError.self) { try BlockLimits(parsing: Self.page(0xB0, [0, 0, 0, 8])) }
    }

    @Test func blockDeviceCharacteristics() throws {
        #expect(try BlockDeviceCharacteristics(parsing: Self.page(0xB1, [0, 1, 0, 0])).isRotational == false)
        #expect(try BlockDeviceCharacteristics(parsing: Self.page(0xB1, [0x1C, 0x20])).mediumRotationRate == 7200)
        #expect(try BlockDeviceCharacteristics(parsing: Self.page(0xB1, [0x1C, 0x20])).isRotational == true)
        #expect(try BlockDeviceCharacteristics(parsing: Self.page(0xB1, [0, 0])).isRotational == nil)
        #expect(throws: SCSIParseError.self) { try BlockDeviceCharacteristics(parsing: Self.page(0xB1, [0])) }
    }

    @Test func logicalBlockProvisioning() throws {
        let p = try LogicalBlockProvisioning(parsing: Self.page(0xB2, [0, 0xE4, 0x02, 0]))
        #expect(p.unmapSupported && p.writeSame16UnmapSupported && p.writeSame10UnmapSupported)
        #expect(p.unmappedReadsZero && !p.anchorSupported && p.provisioningType == 2)
        // SBC-4 3-bit LBPRZ field value 2 (bit 3) alone: not "reads zero" in bit-2 reading.
        let q = try LogicalBlockProvisioning(parsing: Self.page(0xB2, [0, 0x08]))
        #expect(!q.unmappedReadsZero && q.provisioningType == nil)
        #expect(try LogicalBlockProvisioning(parsing: q.encode()).unmapSupported == false)
        #expect(throws: SCSIParseError.self) { try LogicalBlockProvisioning(parsing: Self.page(0xB2, [0])) }
    }
}

@Suite struct CapacityModeLUNsTests {
    @Test func readCapacity10() throws {
        let d = try ReadCapacity10Data(parsing: ByteBuffer(bytes: [0, 0, 0x0F, 0xFF, 0, 0, 2, 0]))
        #expect(d.lastLBA == 4095 && d.blockLength == 512 && !d.needsReadCapacity16)
        #expect(try ReadCapacity10Data(parsing: ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 2, 0])).needsReadCapacity16)
        #expect(throws: SCSIParseError.self) { try ReadCapacity10Data(parsing: ByteBuffer(bytes: [0, 0, 0, 1, 0, 0, 2])) }
        #expect(throws: SCSIParseError.self) { try ReadCapacity10Data(parsing: ByteBuffer(bytes: [0, 0, 0, 1, 0, 0, 0, 0])) }
    }

    @Test func readCapacity16() throws {
        var bytes: [UInt8] = [0, 0, 0, 1, 0, 0, 0, 0xFF, 0, 0, 0x10, 0, 0x03, 0x13, 0xC0, 0x07]
        bytes += [UInt8](repeating: 0, count: 16)
        let d = try ReadCapacity16Data(parsing: ByteBuffer(bytes: bytes))
        #expect(d.lastLBA == 0x1_0000_00FF && d.blockLength == 4096 && d.blockCount == 0x1_0000_0100)
        #expect(d.protectionEnabled && d.protectionType == 1)
        #expect(d.physicalBlockExponent == 3 && d.provisioningManagementEnabled && d.unmappedReadsZero)
        #expect(d.lowestAlignedLBA == 7)
        #expect(try ReadCapacity16Data(parsing: d.encode()) == d)
        #expect(throws: SCSIParseError.self) { try ReadCapacity16Data(parsing: ByteBuffer(bytes: Array(bytes.prefix(12)))) }
    }

    @Test func modeSense10WithCachingPage() throws {
        var caching = [UInt8](repeating: 0, count: 18)
        caching[0] = 0x05  // WCE + RCD
        let b = ModeParameters.encode(tenByte: true, writeProtected: true, dpoFUA: true, pages: [(0x08, caching)])
        let m = try ModeParameters(parsing: b, tenByte: true)
        #expect(m.writeProtected && m.dpoFUA && m.blockDescriptorLength == 0)
        #expect(m.caching == CachingModePage(writeCacheEnabled: true, readCacheDisabled: true))
        #expect(b.getBytes(at: 0, length: 8) == [0, 26, 0, 0x90, 0, 0, 0, 0])
    }

    @Test func modeSense6HeaderOnlyAndBlockDescriptors() throws {
        // Header with WP, one 8-byte block descriptor, then a caching page with WCE = 0.
        var bytes: [UInt8] = [0, 0, 0x80, 8] + [UInt8](repeating: 0, count: 8) + [0x08, 0x12, 0x00]
        bytes += [UInt8](repeating: 0, count: 17)
        bytes[0] = UInt8(bytes.count - 1)
        let m = try ModeParameters(parsing: ByteBuffer(bytes: bytes), tenByte: false)
        #expect(m.writeProtected && !m.dpoFUA && m.blockDescriptorLength == 8)
        #expect(m.caching?.writeCacheEnabled == false)
        let header = try ModeParameters(parsing: ByteBuffer(bytes: [3, 0, 0x10, 0]), tenByte: false)
        #expect(header.dpoFUA && header.caching == nil)
    }

    @Test func modeSenseTruncatedPageIsIgnoredAndBadHeaderRejected() throws {
        // MODE DATA LENGTH says 30 but only a partial caching page arrived (allocation length cut it).
        let cut = ByteBuffer(bytes: [29, 0, 0, 0, 0x08, 0x12, 0x04])
        #expect(try ModeParameters(parsing: cut, tenByte: false).caching == nil)
        // Block descriptor length beyond MODE DATA LENGTH.
        #expect(throws: SCSIParseError.self) {
            try ModeParameters(parsing: ByteBuffer(bytes: [3, 0, 0, 8]), tenByte: false)
        }
        #expect(throws: SCSIParseError.self) { try ModeParameters(parsing: ByteBuffer(bytes: [0, 2, 0]), tenByte: true) }
        #expect(throws: SCSIParseError.self) {
            try ModeParameters(parsing: ByteBuffer(bytes: [0, 1, 0, 0, 0, 0, 0, 0]), tenByte: true)
        }
    }

    @Test func reportLUNs() throws {
        let luns = [LogicalUnitNumber(0), LogicalUnitNumber(1), LogicalUnitNumber(300)]
        let b = ReportLUNsData(luns: luns).encode()
        #expect(try ReportLUNsData(parsing: b).luns == luns)
        #expect(b.getBytes(at: 24, length: 8) == [0x41, 0x2C, 0, 0, 0, 0, 0, 0])
        #expect(try ReportLUNsData(parsing: b).luns.map(\.number) == [0, 1, 300])
    }

    @Test func reportLUNsTruncatedAndInconsistent() {
        var b = ByteBuffer(bytes: [0, 0, 0x01, 0x00, 0, 0, 0, 0])  // 256 bytes = 32 LUNs announced
        b.writeRepeatingByte(0, count: 8)
        do {
            _ = try ReportLUNsData(parsing: b)
            Issue.record("accepted")
        } catch { #expect(error.kind == .truncated && error.requiredLength == 264) }
        #expect(throws: SCSIParseError.self) { try ReportLUNsData(parsing: ByteBuffer(bytes: [0, 0, 0, 7, 0, 0, 0, 0])) }
        #expect(throws: SCSIParseError.self) { try ReportLUNsData(parsing: ByteBuffer(bytes: [0xFF, 0, 0, 0, 0, 0, 0, 0])) }
        #expect(throws: SCSIParseError.self) { try ReportLUNsData(parsing: ByteBuffer(bytes: [0, 0, 0])) }
    }

    @Test func randomDataNeverCrashesParsers() {
        var rng = SplitMix64(seed: 7)
        for _ in 0..<3000 {
            let n = Int(rng.next() % 80)
            var bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if n > 4 {
                bytes[1] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2][Int(rng.next() % 6)]
                bytes[2] = 0
                bytes[3] = UInt8(rng.next() % UInt64(n))
            }
            let b = ByteBuffer(bytes: bytes)
            _ = try? StandardInquiryData(parsing: b)
            _ = try? SupportedVPDPages(parsing: b)
            _ = try? UnitSerialNumber(parsing: b)
            _ = try? DeviceIdentification(parsing: b)
            _ = try? BlockLimits(parsing: b)
            _ = try? BlockDeviceCharacteristics(parsing: b)
            _ = try? LogicalBlockProvisioning(parsing: b)
            _ = try? ReadCapacity10Data(parsing: b)
            _ = try? ReadCapacity16Data(parsing: b)
            _ = try? ModeParameters(parsing: b, tenByte: true)
            _ = try? ModeParameters(parsing: b, tenByte: false)
            _ = try? ReportLUNsData(parsing: b)
            _ = try? UnmapParameterList.parse(b)
        }
    }

    @Test func parsersHonourReaderIndex() throws {
        var b = ByteBuffer(bytes: [0xEE, 0xEE, 0, 0, 0x0F, 0xFF, 0, 0, 2, 0])
        b.moveReaderIndex(forwardBy: 2)
        #expect(try ReadCapacity10Data(parsing: b).lastLBA == 4095)
    }
}
