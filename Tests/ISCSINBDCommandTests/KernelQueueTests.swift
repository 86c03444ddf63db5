import BlockBackend
import Foundation
import Logging
import NBDProtocol
import NBDServer
import Testing

@testable import ISCSINBDCommand

/// What an attach tells an existing kernel device besides its sockets, against a sysfs tree in a temporary
/// directory (the VM scenarios check it against the real driver).
@Suite struct KernelQueueTests {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("sysfs-\(UUID().uuidString)").path

    func device(_ index: Int, sectors: UInt64, maxKB: UInt32 = 128) throws {
        let queue = "\(root)/nbd\(index)/queue"
        try FileManager.default.createDirectory(atPath: queue, withIntermediateDirectories: true)
        try "\(sectors)\n".write(toFile: "\(root)/nbd\(index)/size", atomically: false, encoding: .utf8)
        for (name, value) in [("max_sectors_kb", "\(maxKB)"), ("max_hw_sectors_kb", "32768"), ("optimal_io_size", "0")] {
            try "\(value)\n".write(toFile: "\(queue)/\(name)", atomically: false, encoding: .utf8)
        }
    }

    func maxKB(_ index: Int) -> String? {
        try? String(contentsOfFile: "\(root)/nbd\(index)/queue/max_sectors_kb", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func reattachGrowsWithTheLUNAndRefusesAShrunkOne() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try device(0, sectors: 131072)  // 64 MiB
        #expect(try KernelAttachment.sizeOnReattach(index: 0, lunSize: 64 << 20, sysfs: root) == nil)
        #expect(try KernelAttachment.sizeOnReattach(index: 0, lunSize: 128 << 20, sysfs: root) == 128 << 20)
        #expect(throws: CommandFailure.self) { try KernelAttachment.sizeOnReattach(index: 0, lunSize: 32 << 20, sysfs: root) }
        do {
            _ = try KernelAttachment.sizeOnReattach(index: 0, lunSize: (64 << 20) - 4096, sysfs: root)
            Issue.record("a LUN one block short was taken")
        } catch {
            #expect("\(error)".contains("shrank") && "\(error)".contains("last 4096 bytes"))
        }
        // No such device (or not connected): nothing to compare, nothing to grow.
        #expect(try KernelAttachment.sizeOnReattach(index: 5, lunSize: 1 << 20, sysfs: root) == nil)
    }

    @Test func queueLimitsFollowTheLUN() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let logger = Logger(label: "test")
        try device(1, sectors: 131072)
        try device(2, sectors: 131072, maxKB: 4096)
        // LIO fileio: 8 MiB maximum and optimal transfer length.
        let lio = BlockDeviceInfo(size: 64 << 20, logicalBlockSize: 512, maxTransferLength: 8 << 20, optimalTransferLength: 8 << 20)
        KernelAttachment.setQueueLimits(index: 1, export: NBDServer.makeExport(info: lio, name: "x", description: nil),
                                        info: lio, logger: logger, sysfs: root)
        #expect(maxKB(1) == "8192")
        // No optimal length: sd's 1280 KiB, also replacing what a previous user left (4096).
        let plain = BlockDeviceInfo(size: 64 << 20, logicalBlockSize: 512, maxTransferLength: 32 << 20)
        KernelAttachment.setQueueLimits(index: 2, export: NBDServer.makeExport(info: plain, name: "x", description: nil),
                                        info: plain, logger: logger, sysfs: root)
        #expect(maxKB(2) == "1280")
        // No such device: logged, nothing written.
        KernelAttachment.setQueueLimits(index: 3, export: NBDServer.makeExport(info: plain, name: "x", description: nil),
                                        info: plain, logger: logger, sysfs: root)
        #expect(maxKB(3) == nil)
    }
}
