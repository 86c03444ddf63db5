import ISCSIProtocol
import NIOCore
import Testing

/// RFC 7143 Appendix A.4 "CRC Examples"; the listed CRC bytes are the wire order (least significant first).
struct CRC32CTests {
    static let rfcVectors: [(name: String, bytes: [UInt8], crc: UInt32)] = [
        ("32 bytes of zeroes", [UInt8](repeating: 0, count: 32), 0x8A91_36AA),
        ("32 bytes of ones", [UInt8](repeating: 0xFF, count: 32), 0x62A8_AB43),
        ("incrementing", (0..<32).map { UInt8($0) }, 0x46DD_794E),
        ("decrementing", (0..<32).reversed().map { UInt8($0) }, 0x113F_DB5C),
        (
            "SCSI Read (10) Command PDU",
            [
                0x01, 0xC0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x14, 0, 0, 0, 0, 0, 0x04, 0, 0, 0, 0, 0x14,
                0, 0, 0, 0x18, 0x28, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0,
            ],
            0xD996_3A56
        ),
    ]

    @Test(arguments: 0..<5)
    func rfcVectorsPortableAndHardware(index: Int) {
        let v = Self.rfcVectors[index]
        #expect(CRC32C.portableChecksum(v.bytes) == v.crc, "\(v.name)")
        #expect(CRC32C.hardwareChecksum(v.bytes) == v.crc, "\(v.name)")
        #expect(CRC32C.checksum(v.bytes) == v.crc, "\(v.name)")
        var buffer = ByteBuffer()
        buffer.writeBytes(v.bytes)
        #expect(CRC32C.checksum(buffer) == v.crc)
    }

    @Test func wireOrderOfTheZeroesExample() {
        var buffer = ByteBuffer()
        buffer.writeInteger(CRC32C.portableChecksum([UInt8](repeating: 0, count: 32)), endianness: .little)
        #expect(Array(buffer.readableBytesView) == [0xAA, 0x36, 0x91, 0x8A])
    }

    @Test func incrementalEqualsOneShotAtEveryAlignment() {
        let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let whole = CRC32C.portableChecksum(data)
        #expect(CRC32C.hardwareChecksum(data) == whole)
        for split in [0, 1, 3, 7, 8, 9, 63, 500, 999, 1000] {
            let a = Array(data[..<split])
            let b = Array(data[split...])
            #expect(CRC32C.portableChecksum(b, continuing: CRC32C.portableChecksum(a)) == whole)
            #expect(CRC32C.hardwareChecksum(b, continuing: CRC32C.hardwareChecksum(a)) == whole)
        }
        // Unaligned starts.
        for offset in 1..<8 {
            let slice = Array(data[offset...])
            #expect(CRC32C.hardwareChecksum(slice) == CRC32C.portableChecksum(slice))
        }
    }

    @Test func paddingExtendsWithZeroes() {
        let data: [UInt8] = [1, 2, 3, 4, 5]
        for pad in 0...3 {
            let expected = CRC32C.portableChecksum(data + [UInt8](repeating: 0, count: pad))
            #expect(CRC32C.checksumPadding(count: pad, continuing: CRC32C.portableChecksum(data)) == expected)
        }
    }
}
