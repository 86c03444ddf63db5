import Foundation
import NIOCore
import Testing

@testable import NBDKernel

@Suite struct NBDQueueLimitsTests {
    /// choose() with the 6.1 nbd queue (max_hw_sectors_kb 32768) and 4 KiB pages.
    func choose(max: UInt32, optimal: UInt32 = 0, block: UInt32 = 512, hardwareKB: UInt32 = 32768) -> UInt32? {
        NBDQueueLimits.choose(maximumPayload: max, optimalTransfer: optimal, logicalBlockSize: block,
                              maxHardwareKB: hardwareKB, pageSize: 4096)?.maxSectorsKB
    }

    @Test func aUsableOptimalTransferLengthIsTheRequestSize() {
        // LIO fileio, 512-byte blocks: MAXIMUM and OPTIMAL TRANSFER LENGTH 16384 blocks (8 MiB).
        #expect(choose(max: 8 << 20, optimal: 8 << 20) == 8192)
        #expect(choose(max: 32 << 20, optimal: 1 << 20) == 1024)
        #expect(choose(max: 32 << 20, optimal: 64 << 10, block: 4096) == 64)
    }

    @Test func withoutOneTheMaximumCappedAsSdCapsIt() {
        // BLK_DEF_MAX_SECTORS: 2560 sectors.
        #expect(choose(max: 32 << 20) == 1280)
        #expect(choose(max: 512 << 10) == 512)
        // Unusable optimal lengths fall back: above the maximum, below a page.
        #expect(choose(max: 4 << 20, optimal: 8 << 20) == 1280)
        #expect(choose(max: 4 << 20, optimal: 2048) == 1280)
        #expect(choose(max: 1 << 20, optimal: 16 << 20) == 1024)
    }

    @Test func neverAboveTheHardwareLimitAndAlwaysWholeBlocks() {
        #expect(choose(max: 32 << 20, optimal: 32 << 20, hardwareKB: 16384) == 16384)
        // 4 KiB blocks: whole blocks, so a multiple of 4 KiB.
        #expect(choose(max: 1_000_000, block: 4096) == 976)
        #expect(choose(max: (1 << 20) + 1024, block: 512) == 1025)
        // Nothing fits below one page: the kernel refuses max_sectors_kb < PAGE_SIZE.
        #expect(choose(max: 2048) == nil)
        #expect(choose(max: 4096) == 4)
    }

    @Test func sysfsIsReadAndWritten() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("sysfs-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let queue = root + "/nbd3/queue"
        try FileManager.default.createDirectory(atPath: queue, withIntermediateDirectories: true)
        for (name, value) in [("max_sectors_kb", "128"), ("max_hw_sectors_kb", "32768"), ("minimum_io_size", "512"),
                              ("optimal_io_size", "0")] {
            try "\(value)\n".write(toFile: "\(queue)/\(name)", atomically: false, encoding: .utf8)
        }
        #expect(NBDQueueLimits.current(index: 3, root: root)
            == NBDQueueLimits.Current(maxSectorsKB: 128, maxHardwareKB: 32768, minimumIOSize: 512, optimalIOSize: 0))
        try NBDQueueLimits(maxSectorsKB: 8192).apply(index: 3, root: root)
        #expect(NBDQueueLimits.current(index: 3, root: root)?.maxSectorsKB == 8192)
        #expect(NBDQueueLimits.current(index: 4, root: root) == nil)
        #expect(throws: NBDKernelError.self) { try NBDQueueLimits(maxSectorsKB: 8192).apply(index: 4, root: root) }
    }
}

@Suite struct NBDResizeTests {
    @Test func aDeviceGrowsWithItsLUNAndNeverShrinks() {
        #expect(NBDResize.decide(device: 64 << 20, lun: 128 << 20) == .grow(to: 128 << 20))
        #expect(NBDResize.decide(device: 64 << 20, lun: 64 << 20) == .unchanged)
        #expect(NBDResize.decide(device: 128 << 20, lun: 64 << 20) == .refuseShrink(device: 128 << 20, lun: 64 << 20))
        #expect(NBDResize.decide(device: 128 << 20, lun: (128 << 20) - 512) == .refuseShrink(device: 128 << 20, lun: (128 << 20) - 512))
        // Unknown (sysfs unreadable) or not connected: nothing to protect or to grow.
        #expect(NBDResize.decide(device: nil, lun: 64 << 20) == .unchanged)
        #expect(NBDResize.decide(device: 0, lun: 64 << 20) == .unchanged)
    }

    @Test func reconfigureCarriesTheNewSize() throws {
        let family = NetlinkMessageType(rawValue: 0x1c)
        let request = NBDReconfigureRequest(index: 0, backendIdentifier: "b", sizeBytes: 128 << 20)
        let bytes = try request.encode(family: family, sequence: 4)
        // What the 6.1 trial sent: NBD_ATTR_INDEX and NBD_ATTR_SIZE_BYTES (u64), here with the backend.
        #expect(hex(bytes) == "30000000" + "1c000500" + "04000000" + "00000000" + "03010000"
            + "08000100" + "00000000"  // NBD_ATTR_INDEX 0
            + "0c000200" + "0000000800000000"  // NBD_ATTR_SIZE_BYTES 128 MiB
            + "06000a00" + "62000000")  // NBD_ATTR_BACKEND_IDENTIFIER "b"
        let plain = try GenericNetlinkMessage(NetlinkMessage.parseDatagram(
            NBDReconfigureRequest(index: 2, sockets: [7]).encode(family: family, sequence: 1))[0])
        #expect(plain.attributes.map(\.type) == [1, 7], "no size unless asked")
        #expect(throws: NBDKernelError.self) { try NBDReconfigureRequest(index: 0, sizeBytes: 0).encode(family: family, sequence: 1) }
    }
}
