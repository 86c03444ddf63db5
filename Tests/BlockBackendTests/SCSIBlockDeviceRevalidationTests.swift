import BlockBackend
@testable import ISCSIBlockBackend
import ISCSITestSupport
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SCSI
import Testing

@Suite struct SCSIBlockDeviceRefreshTests {
    /// A device of 2048 blocks whose LUN now has `blocks`, announced by CAPACITY DATA HAS CHANGED on the next
    /// READ; `seen` collects the sizes `onInfoChange` reports.
    func resized(to blocks: UInt64) async throws -> (FakeSCSIDisk, SCSIBlockDevice, NIOLockedValueBox<[UInt64]>) {
        let disk = makeDisk()
        let dev = try await open(disk)
        let seen = NIOLockedValueBox<[UInt64]>([])
        dev.onInfoChange { info in seen.withLockedValue { $0.append(info.size) } }
        var c = disk.configuration
        c.blockCount = blocks
        disk.configuration = c
        disk.inject(.checkCondition(.unitAttention, .capacityDataChanged, count: 1, opcodes: [0x28]))
        return (disk, dev, seen)
    }

    /// Reads until a read fails: the unit attention the first one meets starts a refresh in the background.
    func readUntilFenced(_ dev: SCSIBlockDevice) async {
        _ = try? await dev.read(offset: 0, length: 512).get()
        for _ in 0..<200 {
            do {
                _ = try await dev.read(offset: 0, length: 512).get()
                try await Task.sleep(nanoseconds: 5_000_000)
            } catch { break }
        }
    }

    @Test func capacityChangedUnitAttentionTriggersRefresh() async throws {
        let (_, dev, seen) = try await resized(to: 4096)
        _ = try await dev.read(offset: 0, length: 512).get()
        for _ in 0..<200 where dev.info.size != 4096 * 512 {
            try await Task.sleep(nanoseconds: 5_000_000)
        }
        #expect(dev.info.size == 4096 * 512)
        #expect(dev.lunIdentity.blockCount == 4096)
        #expect(seen.withLockedValue { $0 } == [4096 * 512])
    }

    @Test func aShrunkLUNFencesTheDeviceAndKeepsItsSize() async throws {
        let (disk, dev, seen) = try await resized(to: 1024)
        await readUntilFenced(dev)
        disk.clearCommandLog()
        await expectErrno(.eio, dev.read(offset: 0, length: 512))
        await expectErrno(.eio, dev.write(offset: 512, data: pattern(512, seed: 1), flags: []))
        #expect(disk.opcodes.isEmpty, "nothing more reaches the LUN")
        #expect(dev.info.size == 2048 * 512, "the device keeps its size: nobody is told to shrink")
        #expect(seen.withLockedValue { $0 }.isEmpty)
        await #expect(throws: SCSIProbeError.self) { try await dev.refresh().get() }
    }

    @Test func explicitRefreshPicksUpWriteProtect() async throws {
        let disk = makeDisk()
        let dev = try await open(disk)
        #expect(!dev.info.readOnly)
        var c = disk.configuration
        c.writeProtected = true
        disk.configuration = c
        let info = try await dev.refresh().get()
        #expect(info.readOnly && dev.info.readOnly)
    }

    @Test func blockLengthChangeIsRefused() async throws {
        let disk = makeDisk()
        let dev = try await open(disk)
        var c = disk.configuration
        c.blockSize = 4096
        disk.configuration = c
        await #expect(throws: SCSIProbeError.self) { try await dev.refresh().get() }
        #expect(dev.info.logicalBlockSize == 512)
    }

    @Test func anotherLogicalUnitBehindTheLUNFencesTheDevice() async throws {
        let disk = makeDisk()
        let dev = try await open(disk)
        var c = disk.configuration
        c.naa = [0x60, 0x01, 0x40, 0x5F, 0, 0, 0, 0x99]
        disk.configuration = c
        disk.queueUnitAttention(.deviceIdentifierChanged)
        await readUntilFenced(dev)
        disk.clearCommandLog()
        await expectErrno(.eio, dev.read(offset: 0, length: 512))
        await expectErrno(.eio, dev.write(offset: 0, data: pattern(512, seed: 0), flags: []))
        await expectErrno(.eio, dev.flush())
        #expect(disk.opcodes.isEmpty, "nothing reaches the other logical unit")
    }

    @Test func explicitRefreshDetectsANewSerial() async throws {
        let disk = makeDisk()
        let dev = try await open(disk)
        var c = disk.configuration
        c.serial = "SOMEONE-ELSE"
        disk.configuration = c
        do {
            _ = try await dev.refresh().get()
            Issue.record("refresh accepted another LU")
        } catch let error as SCSIProbeError {
            #expect(error.kind == .identityChanged)
        }
        await expectErrno(.eio, dev.read(offset: 0, length: 512))
    }

    @Test func refreshKeepsTheSameIdentity() async throws {
        let disk = makeDisk()
        let dev = try await open(disk)
        _ = try await dev.refresh().get()
        _ = try await dev.read(offset: 0, length: 512).get()
        // VPD pages that fail during a refresh do not count as a new identity.
        disk.inject(.checkCondition(.hardwareError, .internalTargetFailure, count: 2, opcodes: [0x12]))
        _ = try await dev.refresh().get()
        _ = try await dev.read(offset: 0, length: 512).get()
    }

    @Test func unrelatedUnitAttentionDoesNotRefresh() async throws {
        let disk = makeDisk()
        let dev = try await open(disk)
        disk.clearCommandLog()
        disk.inject(.checkCondition(.unitAttention, .reservationsPreempted, count: 1))
        try await dev.flush().get()
        try await Task.sleep(nanoseconds: 20_000_000)
        #expect(disk.opcodes == [.synchronizeCache10, .synchronizeCache10])
    }
}

@Suite struct LUNIdentityTests {
    @Test func sameLogicalUnitIgnoresCapacity() async throws {
        let a = try await open(makeDisk())
        let b = try await open(makeDisk { $0.blockCount = 4096 })
        let other = try await open(makeDisk { $0.naa = [0x60, 0, 0, 0, 0, 0, 0, 2] })
        let reserial = try await open(makeDisk { $0.serial = "OTHER" })
        func isDifferent(_ verdict: UnitAttentionIdentityVerdict) -> Bool {
            if case .different = verdict { return true }
            return false
        }
        #expect(a.identityGuard.afterUnitAttention(b.lunIdentity) == .same)
        #expect(a.lunIdentity != b.lunIdentity)
        #expect(isDifferent(a.identityGuard.afterUnitAttention(other.lunIdentity)))
        #expect(isDifferent(a.identityGuard.afterUnitAttention(reserial.lunIdentity)))
        #expect("\(a.lunIdentity)" == "FAKE SCSI DISK naa.6001405fabcdef01 serial FAKE0001 2048×512")
    }

    @Test func zeroLengthRequestsIssueNothing() async throws {
        let disk = makeDisk()
        let dev = try await open(disk)
        disk.clearCommandLog()
        #expect(try await dev.read(offset: 512, length: 0).get().readableBytes == 0)
        try await dev.write(offset: 512, data: ByteBuffer(), flags: []).get()
        try await dev.writeZeroes(offset: 512, length: 0, flags: []).get()
        #expect(disk.opcodes.isEmpty)
    }
}
