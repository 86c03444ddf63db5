import NIOCore
import SCSI
import Testing

/// CDB byte layouts against scsi-commands.md §5.
@Suite struct CDBTests {
    @Test func testUnitReady() {
        #expect(CDB.testUnitReady().bytes == [0, 0, 0, 0, 0, 0])
    }

    @Test func requestSense() {
        #expect(CDB.requestSense(descriptorFormat: true, allocationLength: 252).bytes == [0x03, 0x01, 0, 0, 252, 0])
        #expect(CDB.requestSense().bytes == [0x03, 0x00, 0, 0, 252, 0])
    }

    @Test func inquiryStandardAndVPD() {
        #expect(CDB.inquiry(allocationLength: 96).bytes == [0x12, 0, 0, 0, 96, 0])
        #expect(CDB.inquiry(page: .blockLimits, allocationLength: 0x1234).bytes == [0x12, 0x01, 0xB0, 0x12, 0x34, 0])
        for page in [VPDPageCode.supportedPages, .unitSerialNumber, .deviceIdentification, .blockDeviceCharacteristics,
            .logicalBlockProvisioning]
        {
            let c = CDB.inquiry(page: page, allocationLength: 255)
            #expect(c.count == 6 && c[1] == 1 && c[2] == page.rawValue && c[4] == 255)
        }
    }

    @Test func readCapacity() {
        #expect(CDB.readCapacity10().bytes == [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        #expect(
            CDB.readCapacity16(allocationLength: 32).bytes == [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0])
    }

    @Test func readWrite10() {
        #expect(CDB.read10(lba: 0x0102_0304, blocks: 0x0506).bytes == [0x28, 0, 1, 2, 3, 4, 0, 5, 6, 0])
        #expect(CDB.write10(lba: 0x0102_0304, blocks: 0x0506, fua: true).bytes == [0x2A, 0x08, 1, 2, 3, 4, 0, 5, 6, 0])
        #expect(CDB.read10(lba: 7, blocks: 1, fua: true)[1] == 0x08)
    }

    @Test func readWrite16() {
        let lba: UInt64 = 0x0102_0304_0506_0708
        #expect(
            CDB.read16(lba: lba, blocks: 0x090A_0B0C).bytes
                == [0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xA, 0xB, 0xC, 0, 0])
        #expect(
            CDB.write16(lba: lba, blocks: 0x090A_0B0C, fua: true).bytes
                == [0x8A, 0x08, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xA, 0xB, 0xC, 0, 0])
        #expect(CDB.write16(lba: 1, blocks: 1).uint64(at: 2) == 1)
        #expect(CDB.write16(lba: lba, blocks: 3).uint32(at: 10) == 3)
    }

    @Test func synchronizeCache() {
        #expect(CDB.synchronizeCache10().bytes == [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        #expect(CDB.synchronizeCache10(lba: 0x10, blocks: 0x20, immediate: true).bytes
            == [0x35, 0x02, 0, 0, 0, 0x10, 0, 0, 0x20, 0])
        #expect(CDB.synchronizeCache16().bytes == [0x91] + [UInt8](repeating: 0, count: 15))
        #expect(CDB.synchronizeCache16(lba: 1 << 40, blocks: 9).bytes
            == [0x91, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0])
    }

    @Test func unmapCDBAndParameterList() throws {
        #expect(CDB.unmap(parameterListLength: 24).bytes == [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0])
        #expect(CDB.unmap(parameterListLength: 0x0118, anchor: true).bytes == [0x42, 1, 0, 0, 0, 0, 0, 0x01, 0x18, 0])
        var b = ByteBuffer()
        let len = UnmapParameterList.write(
            [UnmapBlockDescriptor(lba: 0x0102_0304_0506_0708, blocks: 0x0A0B_0C0D), UnmapBlockDescriptor(lba: 1, blocks: 2)],
            to: &b)
        #expect(len == 40)
        #expect(b.readableBytes == 40)
        let bytes = b.getBytes(at: 0, length: 40)!
        #expect(Array(bytes[0..<8]) == [0, 38, 0, 32, 0, 0, 0, 0])
        #expect(Array(bytes[8..<24]) == [1, 2, 3, 4, 5, 6, 7, 8, 0xA, 0xB, 0xC, 0xD, 0, 0, 0, 0])
        #expect(Array(bytes[24..<40]) == [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0])
        #expect(try UnmapParameterList.parse(b) == [.init(lba: 0x0102_0304_0506_0708, blocks: 0x0A0B_0C0D), .init(lba: 1, blocks: 2)])
    }

    @Test func unmapParameterListRejectsInconsistentLengths() {
        var b = ByteBuffer(bytes: [0, 38, 0, 48, 0, 0, 0, 0])  // descriptor length > data length
        b.writeRepeatingByte(0, count: 32)
        #expect(throws: SCSIParseError.self) { try UnmapParameterList.parse(b) }
        #expect(throws: SCSIParseError.self) { try UnmapParameterList.parse(ByteBuffer(bytes: [0, 22, 0, 16])) }
        #expect(throws: SCSIParseError.self) { try UnmapParameterList.parse(ByteBuffer(bytes: [0, 22, 0, 15, 0, 0, 0, 0])) }
    }

    @Test func writeSame16() {
        #expect(CDB.writeSame16(lba: 0x0102_0304_0506_0708, blocks: 0x10).bytes
            == [0x93, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0x10, 0, 0])
        #expect(CDB.writeSame16(lba: 0, blocks: 1, unmap: true)[1] == 0x08)
        #expect(CDB.writeSame16(lba: 0, blocks: 1, noDataOut: true)[1] == 0x01)
        #expect(CDB.writeSame16(lba: 0, blocks: 1, unmap: true, noDataOut: true)[1] == 0x09)
    }

    @Test func modeSense() {
        #expect(CDB.modeSense6(page: 0x08, allocationLength: 0xFF).bytes == [0x1A, 0x08, 0x08, 0, 0xFF, 0])
        #expect(CDB.modeSense6(page: 0x3F, pageControl: .changeable, disableBlockDescriptors: false, allocationLength: 4).bytes
            == [0x1A, 0x00, 0x7F, 0, 4, 0])
        #expect(CDB.modeSense10(page: 0x08, allocationLength: 0x0200).bytes == [0x5A, 0x08, 0x08, 0, 0, 0, 0, 0x02, 0x00, 0])
        #expect(CDB.modeSense10(page: 0x3F, subpage: 0xFF, pageControl: .saved).bytes[2...3] == [0xFF, 0xFF])
    }

    @Test func reportLUNs() {
        #expect(CDB.reportLUNs(allocationLength: 0x0001_0203).bytes == [0xA0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 0, 0])
        #expect(CDB.reportLUNs(selectReport: 2, allocationLength: 4)[2] == 2)
        #expect(CDB.reportLUNs(allocationLength: 4).uint32(at: 6) == 16, "SPC minimum allocation length is 16")
    }

    /// The iSCSI CDB field (RFC 7143 §11.3.5) as two big-endian words: byte 0 is the top byte of `high`,
    /// bytes past the CDB's length are zero even when something was stored there.
    @Test func bigEndianWordsAreTheZeroPaddedBytes() {
        for cdb in [CDB.testUnitReady(), .read10(lba: 0x0102_0304, blocks: 0x0506),
                    .readCapacity16(allocationLength: 32), .read16(lba: 0x0102_0304_0506_0708, blocks: 0x0A0B_0C0D, fua: true),
                    CDB((1...12).map { UInt8($0) }), CDB((0x80...0x8F).map { UInt8($0) })]
        {
            let padded = cdb.bytes + [UInt8](repeating: 0, count: 16 - cdb.count)
            let words = cdb.bigEndianWords
            let high = padded[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            let low = padded[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            #expect(words.high == high && words.low == low, "\(cdb)")
        }
        var stray = CDB.read10(lba: 1, blocks: 1)
        stray[12] = 0xFF  // beyond the 10 bytes: not part of the CDB
        #expect(stray.bigEndianWords.low == 0x0100_0000_0000_0000)  // byte 8 (TRANSFER LENGTH low byte) = 1
    }

    @Test func opcodeDescriptions() {
        #expect("\(SCSIOpcode.writeSame16)" == "WRITE SAME(16)")
        #expect("\(SCSIOpcode(rawValue: 0xC1))" == "OPCODE C1")
    }
}
