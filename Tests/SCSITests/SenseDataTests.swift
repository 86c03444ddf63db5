import NIOCore
import SCSI
import Testing

@Suite struct SenseDataTests {
    @Test func fixedFormatCurrent() throws {
        // 70h, key 5, ASC 21/00, VALID with information 0x1234, SKSV field pointer 2.
        let bytes: [UInt8] = [0xF0, 0, 0x05, 0, 0, 0x12, 0x34, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0xC0, 0x00, 0x02]
        let s = try SenseData(parsing: ByteBuffer(bytes: bytes))
        #expect(s.key == .illegalRequest)
        #expect(s.code == .lbaOutOfRange)
        #expect(s.information == 0x1234)
        #expect(!s.deferred)
        #expect(!s.descriptorFormat)
        #expect(s.senseKeySpecific == 0xC00002)
        #expect(s.description == "ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE (21/00) info=0x1234 [CDB byte 2]")
        let bits = SenseData(key: .illegalRequest, code: .invalidFieldInParameterList, senseKeySpecific: 0x8D0010)
        #expect(bits.fieldPointer?.inCDB == false && bits.fieldPointer?.byte == 16 && bits.fieldPointer?.bit == 5)
        #expect(SenseData(key: .mediumError, code: .writeError, senseKeySpecific: 0x800001).fieldPointer == nil)
    }

    @Test func fixedFormatDeferredWithoutValid() throws {
        let bytes: [UInt8] = [0x71, 0, 0x03, 0, 0, 0, 9, 10, 0, 0, 0, 0, 0x0C, 0x00, 0, 0, 0, 0]
        let s = try SenseData(parsing: ByteBuffer(bytes: bytes))
        #expect(s.key == .mediumError && s.code == .writeError && s.deferred && s.information == nil)
    }

    @Test func fixedFormatShortKeepsKey() throws {
        // Only 8 bytes: key present, ASC/ASCQ absent.
        let s = try SenseData(parsing: ByteBuffer(bytes: [0x70, 0, 0x06, 0, 0, 0, 0, 0]))
        #expect(s.key == .unitAttention && s.code == .noAdditionalSenseInformation)
        // Additional length claims more than present: clamped, no crash.
        let t = try SenseData(parsing: ByteBuffer(bytes: [0x70, 0, 0x02, 0, 0, 0, 0, 200, 0, 0, 0, 0, 0x04, 0x01]))
        #expect(t.key == .notReady && t.code == .becomingReady)
    }

    @Test func descriptorFormat() throws {
        var b = ByteBuffer(bytes: [0x72, 0x07, 0x27, 0x07, 0, 0, 0, 24])
        b.writeBytes([0x00, 0x0A, 0x80, 0] + [0, 0, 0, 1, 0, 0, 0, 2])  // information 0x1_0000_0002
        b.writeBytes([0x02, 0x06, 0, 0, 0x80, 0x00, 0x05, 0])  // SKS
        let s = try SenseData(parsing: b)
        #expect(s.key == .dataProtect && s.code == .spaceAllocationFailedWriteProtect)
        #expect(s.information == 0x1_0000_0002)
        #expect(s.senseKeySpecific == 0x800005)
        #expect(s.descriptorFormat && !s.deferred)
        let d = try SenseData(parsing: ByteBuffer(bytes: [0x73, 0x0B, 0x47, 0x05, 0, 0, 0, 0]))
        #expect(d.deferred && d.key == .abortedCommand && d.code == .protocolServiceCRCError)
    }

    @Test func descriptorRunningPastEndIsAnError() {
        // Descriptor claims 10 bytes but only 4 follow within the additional length.
        let b = ByteBuffer(bytes: [0x72, 0x05, 0x24, 0x00, 0, 0, 0, 6, 0x00, 0x0A, 0x80, 0, 0, 0])
        #expect(throws: SCSIParseError.self) { try SenseData(parsing: b) }
        // A lone descriptor type byte.
        #expect(throws: SCSIParseError.self) {
            try SenseData(parsing: ByteBuffer(bytes: [0x72, 0x05, 0x24, 0x00, 0, 0, 0, 1, 0x00]))
        }
    }

    @Test func garbageAndTruncated() {
        #expect(throws: SCSIParseError.self) { try SenseData(parsing: ByteBuffer()) }
        #expect(throws: SCSIParseError.self) { try SenseData(parsing: ByteBuffer(bytes: [0x70, 0, 5])) }
        do {
            _ = try SenseData(parsing: ByteBuffer(bytes: [0x7F, 0, 5, 0, 0, 0, 0, 0]))
            Issue.record("vendor response code accepted")
        } catch {
            #expect(error.kind == .unsupportedFormat)
        }
    }

    @Test func randomBytesNeverCrash() {
        var rng = SplitMix64(seed: 42)
        for _ in 0..<5000 {
            let n = Int(rng.next() % 40)
            var bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if n > 0 && rng.next() % 2 == 0 { bytes[0] = [0x70, 0x71, 0x72, 0x73][Int(rng.next() % 4)] }
            _ = try? SenseData(parsing: ByteBuffer(bytes: bytes))
        }
    }

    @Test(arguments: [false, true]) func encodeRoundTrip(descriptor: Bool) throws {
        let s = SenseData(key: .illegalRequest, code: .invalidFieldInCDB, information: 77, senseKeySpecific: 0xC00001)
        var parsed = try SenseData(parsing: s.encode(descriptorFormat: descriptor))
        parsed.descriptorFormat = false
        #expect(parsed == s)
        let deferred = SenseData(key: .mediumError, code: .writeError, deferred: true)
        #expect(try SenseData(parsing: deferred.encode(descriptorFormat: descriptor)).deferred)
    }

    @Test func descriptions() {
        #expect("\(SenseData(key: .unitAttention, code: .capacityDataChanged))"
            == "UNIT ATTENTION: CAPACITY DATA HAS CHANGED (2A/09)")
        #expect("\(AdditionalSenseCode(asc: 0x5D, ascq: 0x10))" == "ADDITIONAL SENSE CODE (5D/10)")
        #expect("\(SenseKey(rawValue: 0xC))" == "SENSE KEY 0C")
        #expect("\(SenseKey.abortedCommand)" == "ABORTED COMMAND")
    }
}

/// Seeded deterministic generator for property tests.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
