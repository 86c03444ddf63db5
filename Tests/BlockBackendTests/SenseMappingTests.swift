import BlockBackend
import ISCSIBlockBackend
import NIOCore
import SCSI
import Testing

/// One test case per row of the `SCSIErrorMapping` table.
@Suite struct SenseMappingTests {
    struct Row: CustomTestStringConvertible, Sendable {
        var status: SCSIStatus
        var sense: SenseData?
        var request: SCSIRequestKind
        var expected: SCSIOutcome
        var testDescription: String { "\(status) \(sense.map { "\($0)" } ?? "-") \(request) → \(expected)" }
    }

    static func cc(_ key: SenseKey, _ asc: UInt8, _ ascq: UInt8, deferred: Bool = false) -> SenseData {
        SenseData(key: key, code: AdditionalSenseCode(asc: asc, ascq: ascq), deferred: deferred)
    }
    static func fail(_ code: BlockDeviceError.Code, unsupported: Bool = false) -> SCSIOutcome {
        .failure(code, unsupported: unsupported)
    }

    static let rows: [Row] = [
        // Status rows.
        Row(status: .good, sense: nil, request: .read, expected: .success),
        Row(status: .conditionMet, sense: nil, request: .write, expected: .success),
        Row(status: .busy, sense: nil, request: .write, expected: .retry(.busy)),
        Row(status: .taskSetFull, sense: nil, request: .read, expected: .retry(.busy)),
        Row(status: .taskAborted, sense: nil, request: .read, expected: .retry(.aborted)),
        Row(status: .reservationConflict, sense: nil, request: .write, expected: fail(.eio)),
        Row(status: .acaActive, sense: nil, request: .write, expected: fail(.eio)),
        Row(status: SCSIStatus(rawValue: 0x22), sense: nil, request: .read, expected: fail(.eio)),
        Row(status: .checkCondition, sense: nil, request: .read, expected: fail(.eio)),
        // Sense rows.
        Row(status: .checkCondition, sense: cc(.recoveredError, 0x17, 0x01), request: .read, expected: .success),
        Row(status: .checkCondition, sense: cc(.noSense, 0, 0), request: .write, expected: .retry(.aborted)),
        Row(status: .checkCondition, sense: cc(.mediumError, 0x0C, 0, deferred: true), request: .read, expected: fail(.eio)),
        Row(status: .checkCondition, sense: cc(.unitAttention, 0x29, 0x00), request: .write, expected: .retry(.unitAttention)),
        Row(status: .checkCondition, sense: cc(.unitAttention, 0x2A, 0x09), request: .read, expected: .retry(.unitAttention)),
        Row(status: .checkCondition, sense: cc(.unitAttention, 0x3F, 0x0E), request: .management, expected: .retry(.unitAttention)),
        Row(status: .checkCondition, sense: cc(.notReady, 0x04, 0x01), request: .read, expected: .retry(.busy)),
        Row(status: .checkCondition, sense: cc(.notReady, 0x04, 0x07), request: .read, expected: .retry(.busy)),
        Row(status: .checkCondition, sense: cc(.notReady, 0x04, 0x0A), request: .write, expected: .retry(.busy)),
        Row(status: .checkCondition, sense: cc(.notReady, 0x04, 0x14), request: .write, expected: .retry(.busy)),
        Row(status: .checkCondition, sense: cc(.notReady, 0x04, 0x02), request: .read, expected: fail(.eio)),
        Row(status: .checkCondition, sense: cc(.notReady, 0x3A, 0x00), request: .read, expected: fail(.eio)),
        Row(status: .checkCondition, sense: cc(.notReady, 0x04, 0x0C), request: .read, expected: fail(.eio)),
        Row(status: .checkCondition, sense: cc(.mediumError, 0x11, 0x00), request: .read, expected: fail(.eio)),
        Row(status: .checkCondition, sense: cc(.hardwareError, 0x44, 0x00), request: .write, expected: fail(.eio)),
        Row(status: .checkCondition, sense: cc(.dataProtect, 0x27, 0x07), request: .write, expected: fail(.enospc)),
        Row(status: .checkCondition, sense: cc(.dataProtect, 0x27, 0x00), request: .write, expected: fail(.eperm)),
        Row(status: .checkCondition, sense: cc(.dataProtect, 0x27, 0x02), request: .trim, expected: fail(.eperm)),
        Row(status: .checkCondition, sense: cc(.illegalRequest, 0x21, 0x00), request: .write, expected: fail(.enospc)),
        Row(status: .checkCondition, sense: cc(.illegalRequest, 0x21, 0x00), request: .writeZeroes, expected: fail(.enospc)),
        Row(status: .checkCondition, sense: cc(.illegalRequest, 0x21, 0x00), request: .read, expected: fail(.einval)),
        Row(status: .checkCondition, sense: cc(.illegalRequest, 0x21, 0x00), request: .trim, expected: fail(.einval)),
        Row(status: .checkCondition, sense: cc(.illegalRequest, 0x20, 0x00), request: .trim, expected: fail(.enotsup, unsupported: true)),
        Row(status: .checkCondition, sense: cc(.illegalRequest, 0x24, 0x00), request: .writeZeroes, expected: fail(.enotsup, unsupported: true)),
        Row(status: .checkCondition, sense: cc(.illegalRequest, 0x26, 0x00), request: .trim, expected: fail(.enotsup, unsupported: true)),
        Row(status: .checkCondition, sense: cc(.illegalRequest, 0x20, 0x00), request: .read, expected: fail(.einval)),
        Row(status: .checkCondition, sense: cc(.illegalRequest, 0x24, 0x00), request: .write, expected: fail(.einval)),
        Row(status: .checkCondition, sense: cc(.illegalRequest, 0x25, 0x00), request: .read, expected: fail(.eio)),
        Row(status: .checkCondition, sense: cc(.illegalRequest, 0x1A, 0x00), request: .write, expected: fail(.einval)),
        Row(status: .checkCondition, sense: cc(.abortedCommand, 0x47, 0x05), request: .write, expected: .retry(.aborted)),
        Row(status: .checkCondition, sense: cc(.abortedCommand, 0x0C, 0x0D), request: .write, expected: .retry(.aborted)),
        Row(status: .checkCondition, sense: cc(.blankCheck, 0, 0), request: .read, expected: fail(.eio)),
        Row(status: .checkCondition, sense: cc(.miscompare, 0x1D, 0), request: .write, expected: fail(.eio)),
        Row(status: .checkCondition, sense: cc(.volumeOverflow, 0, 0), request: .write, expected: fail(.eio)),
        Row(status: .checkCondition, sense: cc(.vendorSpecific, 0x80, 0), request: .write, expected: fail(.eio)),
    ]

    @Test(arguments: rows) func row(_ row: Row) {
        #expect(SCSIErrorMapping.outcome(status: row.status, sense: row.sense, request: row.request) == row.expected)
    }
}

@Suite struct RetryPolicyTests {
    @Test func backoffDoublesAndCaps() {
        let p = RetryPolicy(initialDelay: .milliseconds(10), maxDelay: .milliseconds(100))
        #expect((0..<6).map { p.backoff(retry: $0) }
            == [.milliseconds(10), .milliseconds(20), .milliseconds(40), .milliseconds(80), .milliseconds(100), .milliseconds(100)])
        #expect(p.backoff(retry: 1000) == .milliseconds(100))
    }

    @Test func stateCountsPerReasonAndGivesUp() {
        let p = RetryPolicy(maxUnitAttentionRetries: 2, maxBusyRetries: 3, maxAbortedRetries: 1, initialDelay: .milliseconds(10))
        var s = RetryState()
        #expect(s.next(.unitAttention, policy: p) == .zero)
        #expect(s.next(.busy, policy: p) == .milliseconds(10))
        #expect(s.next(.unitAttention, policy: p) == .zero)
        #expect(s.next(.unitAttention, policy: p) == nil)
        #expect(s.next(.busy, policy: p) == .milliseconds(20))
        #expect(s.next(.busy, policy: p) == .milliseconds(40))
        #expect(s.next(.busy, policy: p) == nil)
        #expect(s.next(.aborted, policy: p) == .milliseconds(10))
        #expect(s.next(.aborted, policy: p) == nil)
        #expect(s.totalRetries == 6)
        var none = RetryState()
        #expect(none.next(.unitAttention, policy: .none) == nil)
    }
}

@Suite struct RequestSplitterTests {
    @Test func propertyChunksTileTheRange() {
        var rng = SplitMix64(seed: 0x5C51)
        for _ in 0..<5000 {
            let blockSize = UInt32(512) << UInt32(rng.next() % 4)
            let startLBA = rng.next() % 2 == 0 ? rng.next() % 10_000 : rng.next() % (1 << 40)
            let blocks = 1 + rng.next() % 5000
            let maxBlocks = rng.next() % 4 == 0 ? UInt32.max : UInt32(1 + rng.next() % 700)
            let s = RequestSplitter(
                offset: startLBA * UInt64(blockSize), length: blocks * UInt64(blockSize), blockSize: blockSize,
                maxBlocks: maxBlocks)
            var nextLBA = startLBA
            var nextByte = 0
            var count = 0
            for chunk in s {
                #expect(chunk.lba == nextLBA)
                #expect(chunk.byteOffset == nextByte)
                #expect(chunk.blocks >= 1 && chunk.blocks <= maxBlocks)
                #expect(chunk.byteLength == Int(chunk.blocks) * Int(blockSize))
                #expect(chunk.byteOffset % Int(blockSize) == 0)
                nextLBA += UInt64(chunk.blocks)
                nextByte += chunk.byteLength
                count += 1
            }
            #expect(nextLBA == startLBA + blocks)
            #expect(nextByte == Int(blocks) * Int(blockSize))
            #expect(count == s.count)
            #expect(count == Int((blocks + UInt64(maxBlocks) - 1) / UInt64(maxBlocks)))
        }
    }

    @Test func emptyAndExact() {
        #expect(RequestSplitter(offset: 0, length: 0, blockSize: 512, maxBlocks: 8).count == 0)
        #expect(Array(RequestSplitter(offset: 0, length: 0, blockSize: 512, maxBlocks: 8)).isEmpty)
        let s = RequestSplitter(offset: 4096, length: 8192, blockSize: 512, maxBlocks: 8)
        #expect(s.map(\.lba) == [8, 16])
        #expect(s.map(\.blocks) == [8, 8])
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

@Suite struct SCSIBlockStrategyTests {
    static func props(_ mutate: (inout SCSIDeviceProperties) -> Void = { _ in }) -> SCSIDeviceProperties {
        var p = SCSIDeviceProperties(
            inquiry: StandardInquiryData(vendor: "V", product: "P", revision: "1"), blockCount: 1 << 20, blockLength: 512)
        mutate(&p)
        return p
    }

    @Test func maxTransferIsTheSmallerOfBlockLimitsAndTheCap() {
        var bl = BlockLimits()
        bl.maximumTransferLength = 1 << 20  // 512 MiB at 512 bytes: above the 32 MiB cap
        let big = SCSIBlockStrategy(properties: Self.props { $0.blockLimits = bl })
        #expect(big.maxTransferBlocks == (32 << 20) / 512)
        bl.maximumTransferLength = 100
        let small = Self.props { $0.blockLimits = bl }
        let s = SCSIBlockStrategy(properties: small)
        #expect(s.maxTransferBlocks == 100)
        #expect(SCSIBlockStrategy.info(properties: small, strategy: s).maxTransferLength == 51200)
    }

    @Test func preferredBlockSizeRules() {
        func preferred(_ mutate: (inout SCSIDeviceProperties) -> Void) -> UInt32 {
            let p = Self.props(mutate)
            return SCSIBlockStrategy.info(properties: p, strategy: SCSIBlockStrategy(properties: p)).preferredBlockSize
        }
        #expect(preferred { _ in } == 512)
        #expect(preferred { $0.physicalBlockExponent = 3 } == 4096)
        var bl = BlockLimits()
        bl.optimalTransferLengthGranularity = 128  // 64 KiB
        #expect(preferred { $0.blockLimits = bl } == 65536)
        bl.optimalTransferLengthGranularity = 3  // not a power of two: ignored
        #expect(preferred { $0.blockLimits = bl; $0.physicalBlockExponent = 1 } == 1024)
        bl.optimalTransferLengthGranularity = 8192  // 4 MiB: above the 1 MiB cap, ignored
        #expect(preferred { $0.blockLimits = bl } == 512)
        bl.optimalTransferLengthGranularity = 0
        bl.maximumTransferLength = 4  // 2 KiB max transfer: preferred cannot exceed it
        #expect(preferred { $0.blockLimits = bl; $0.physicalBlockExponent = 3 } == 512)
    }

    @Test func optimalTransferLengthIsKeptWhereSdWouldUseIt() {
        func optimal(_ mutate: (inout BlockLimits) -> Void, exponent: UInt8 = 0) -> UInt32 {
            var bl = BlockLimits()
            bl.maximumTransferLength = 16384
            mutate(&bl)
            let p = Self.props { $0.blockLimits = bl; $0.physicalBlockExponent = exponent }
            return SCSIBlockStrategy.info(properties: p, strategy: SCSIBlockStrategy(properties: p)).optimalTransferLength
        }
        // LIO fileio: OPTIMAL = MAXIMUM TRANSFER LENGTH = 16384 blocks, granularity 1.
        #expect(optimal { $0.optimalTransferLength = 16384; $0.optimalTransferLengthGranularity = 1 } == 8 << 20)
        #expect(optimal { $0.optimalTransferLength = 0 } == 0, "not stated")
        #expect(optimal { $0.optimalTransferLength = 20000 } == 0, "above the maximum transfer length")
        #expect(optimal { $0.optimalTransferLength = 2050 } == 1_049_600, "any whole number of blocks")
        #expect(optimal({ $0.optimalTransferLength = 2050 }, exponent: 3) == 0, "not whole 4 KiB physical blocks")
        #expect(optimal { $0.optimalTransferLength = 2048; $0.optimalTransferLengthGranularity = 3 } == 0,
                "not a multiple of the granularity")
        #expect(optimal({ $0.optimalTransferLength = 2048; $0.optimalTransferLengthGranularity = 3 }, exponent: 3) == 1 << 20,
                "a granularity that is no multiple of the physical block is ignored, as sd ignores it")
        #expect(Self.props().blockLimits == nil)
        let none = Self.props()
        #expect(SCSIBlockStrategy.info(properties: none, strategy: SCSIBlockStrategy(properties: none)).optimalTransferLength == 0)
    }

    @Test func trimAndFastZeroNeedProvisioningManagement() {
        var lbp = LogicalBlockProvisioning()
        lbp.unmapSupported = true
        lbp.writeSame16UnmapSupported = true
        lbp.unmappedReadsZero = true
        let notThin = SCSIBlockStrategy(properties: Self.props { $0.provisioning = lbp })
        #expect(!notThin.canTrim && !notThin.canFastZero)
        let thin = SCSIBlockStrategy(properties: Self.props { $0.provisioning = lbp; $0.provisioningManagementEnabled = true })
        #expect(thin.canTrim && thin.useUnmap && thin.canFastZero && thin.maxUnmapBlocks == .max)
        var bl = BlockLimits()
        bl.maximumUnmapLBACount = 0  // UNMAP not supported per Block Limits
        bl.maximumUnmapBlockDescriptorCount = 0
        let noUnmap = SCSIBlockStrategy(properties: Self.props {
            $0.provisioning = lbp
            $0.provisioningManagementEnabled = true
            $0.blockLimits = bl
        })
        #expect(!noUnmap.useUnmap && noUnmap.canTrim, "WRITE SAME UNMAP remains")
        lbp.unmappedReadsZero = false
        let noLBPRZ = SCSIBlockStrategy(properties: Self.props { $0.provisioning = lbp; $0.provisioningManagementEnabled = true })
        #expect(!noLBPRZ.canFastZero)
    }

    @Test func fuaNeedsFlushOnlyWithCacheAndWithoutDPOFUA() {
        #expect(SCSIBlockStrategy(properties: Self.props { $0.dpoFUA = false; $0.writeCacheEnabled = true }).fuaNeedsFlush)
        #expect(!SCSIBlockStrategy(properties: Self.props { $0.dpoFUA = true; $0.writeCacheEnabled = true }).fuaNeedsFlush)
        #expect(!SCSIBlockStrategy(properties: Self.props { $0.dpoFUA = false; $0.writeCacheEnabled = false }).fuaNeedsFlush)
    }
}
