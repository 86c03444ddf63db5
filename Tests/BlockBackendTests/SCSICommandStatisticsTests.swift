import BlockBackend
import ISCSIBlockBackend
import ISCSITestSupport
import NIOCore
import SCSI
import Testing

/// `SCSIBlockDevice.commandStatistics`: every status the fake disk answers is counted by opcode, CHECK
/// CONDITION sense keys by key, and retries by their cause.
@Suite struct SCSICommandStatisticsTests {
    @Test func statusesSenseKeysAndRetriesAreCounted() async throws {
        let dev = try await open(makeDisk())
        let disk = dev.transport as! FakeSCSIDisk
        let before = try await dev.commandStatistics.snapshot().get()
        disk.inject(FakeSCSIDisk.Fault(status: .busy, count: 2))
        disk.inject(FakeSCSIDisk.Fault(status: .taskSetFull, count: 1))
        try await dev.write(offset: 0, data: pattern(512, seed: 1), flags: []).get()
        disk.inject(.checkCondition(.unitAttention, .powerOnResetOccurred, count: 1, opcodes: [0x28]))
        _ = try await dev.read(offset: 0, length: 512).get()
        let after = try await dev.commandStatistics.snapshot().get()

        func delta(_ opcode: SCSIOpcode, _ status: SCSIStatus) -> UInt64 {
            after.count(opcode: opcode, status: status) - before.count(opcode: opcode, status: status)
        }
        #expect(delta(.write10, .busy) == 2)
        #expect(delta(.write10, .taskSetFull) == 1)
        #expect(delta(.write10, .good) == 1)
        #expect(delta(.read10, .checkCondition) == 1)
        #expect(delta(.read10, .good) == 1)
        #expect(after.retries[.busy, default: 0] - before.retries[.busy, default: 0] == 2)
        #expect(after.retries[.taskSetFull, default: 0] - before.retries[.taskSetFull, default: 0] == 1)
        #expect(after.retries[.unitAttention, default: 0] - before.retries[.unitAttention, default: 0] == 1)
        #expect(after.senseKeys[Int(SenseKey.unitAttention.rawValue)] - before.senseKeys[Int(SenseKey.unitAttention.rawValue)] == 1)
        #expect(after.commandCounts.contains { $0.opcode == .write10 && $0.status == .busy && $0.count >= 2 })
        #expect(after.transportFailures == before.transportFailures)
    }
}
