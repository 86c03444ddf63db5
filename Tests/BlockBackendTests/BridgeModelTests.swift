import BlockBackend
import ISCSIBlockBackend
import ISCSITestSupport
import Logging
import NIOCore
import NIOPosix
import SCSI
import Testing

/// Random operation sequences through the bridge against FakeSCSIDisk, checked against a byte model.
/// Random configurations cover splitting (small MAXIMUM TRANSFER LENGTH, unmap and write-same limits),
/// thin and thick LUs, WRITE SAME rejected at run time, with and without DPOFUA.
@Suite struct BridgeModelTests {
    @Test(arguments: 0..<12) func randomOperationsMatchTheModel(seed: Int) async throws {
        var rng = SplitMix64(seed: 0xB41D6E + UInt64(seed))
        var c = FakeSCSIDisk.Configuration()
        c.blockSize = rng.next() % 2 == 0 ? 512 : 4096
        c.blockCount = 32 + rng.next() % 96
        c.dpoFUA = rng.next() % 2 == 0
        c.writeCacheEnabled = rng.next() % 2 == 0
        c.supportsWriteSame = rng.next() % 3 != 0
        var bl = BlockLimits()
        bl.maximumTransferLength = UInt32(1 + rng.next() % 16)
        bl.maximumUnmapLBACount = UInt32(1 + rng.next() % 20)
        bl.maximumUnmapBlockDescriptorCount = 1
        bl.maximumWriteSameLength = 1 + rng.next() % 30
        c.blockLimits = bl
        if rng.next() % 2 == 0 {
            c.provisioningManagementEnabled = true
            var lbp = LogicalBlockProvisioning()
            lbp.unmapSupported = rng.next() % 2 == 0
            lbp.writeSame16UnmapSupported = rng.next() % 2 == 0
            c.provisioning = lbp
            c.unmappedReadsZero = rng.next() % 2 == 0
        }
        let disk = FakeSCSIDisk(eventLoop: MultiThreadedEventLoopGroup.singleton.next(), configuration: c)
        let dev = try await SCSIBlockDevice.open(
            transport: disk, lun: LogicalUnitNumber(0), logger: Logger(label: "model"),
            retryPolicy: RetryPolicy(initialDelay: .milliseconds(1), maxDelay: .milliseconds(2))
        ).get()

        let bs = Int(c.blockSize)
        let size = Int(c.blockCount) * bs
        // -1: unknown (after a trim); otherwise the byte value. Unwritten blocks read as the fake's fill.
        let fill: Int16 = c.unmappedReadsZero ? 0 : 0xFF
        var model = [Int16](repeating: fill, count: size)

        for step in 0..<120 {
            let startBlock = Int(rng.next() % c.blockCount)
            // Up to 24 blocks: often more than the per-command limits, so requests get split.
            let blocks = 1 + Int(rng.next() % UInt64(min(24, Int(c.blockCount) - startBlock)))
            let offset = UInt64(startBlock * bs)
            let length = blocks * bs
            let flags: BlockWriteFlags = rng.next() % 3 == 0 ? .fua : []
            if rng.next() % 7 == 0 { disk.queueUnitAttention(.reportedLUNsDataChanged) }
            if rng.next() % 9 == 0 { disk.inject(FakeSCSIDisk.Fault(status: .busy)) }
            switch rng.next() % 5 {
            case 0, 1:
                let seedByte = UInt8(truncatingIfNeeded: rng.next())
                let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seedByte)) }
                try await dev.write(offset: offset, data: ByteBuffer(bytes: bytes), flags: flags).get()
                for i in 0..<length { model[startBlock * bs + i] = Int16(bytes[i]) }
            case 2:
                var f = flags
                if rng.next() % 2 == 0 { f.insert(.noHole) }
                try await dev.writeZeroes(offset: offset, length: UInt32(length), flags: f).get()
                for i in 0..<length { model[startBlock * bs + i] = 0 }
            case 3:
                try await dev.trim(offset: offset, length: UInt32(length), flags: flags).get()
                for i in 0..<length { model[startBlock * bs + i] = -1 }
            default:
                let data = try await dev.read(offset: offset, length: UInt32(length)).get()
                #expect(data.readableBytes == length)
                let got = Array(data.readableBytesView)
                let mismatch = (0..<length).first { model[startBlock * bs + $0] >= 0 && Int16(got[$0]) != model[startBlock * bs + $0] }
                #expect(mismatch == nil, "seed \(seed) step \(step): mismatch at byte \(mismatch ?? -1) of read \(offset)+\(length)")
                if mismatch != nil { return }
            }
        }
        // Every command the bridge issued respected the target's limits (the fake rejects violations,
        // which would have failed a request above); the whole LU still reads back as modelled.
        let all = try await dev.read(offset: 0, length: UInt32(size)).get()
        let got = Array(all.readableBytesView)
        #expect((0..<size).allSatisfy { model[$0] < 0 || Int16(got[$0]) == model[$0] })
    }
}
