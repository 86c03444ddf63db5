import BlockBackend
@testable import ISCSIBlockBackend
import ISCSITestSupport
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SCSI
import Testing

@Suite struct SCSIBlockDeviceIOTests {
    @Test func roundTripBelow2TiBUsesTenByteCommands() async throws {
        let disk = makeDisk()
        let dev = try await open(disk)
        disk.clearCommandLog()
        try await dev.write(offset: 4096, data: pattern(8192, seed: 1), flags: []).get()
        let back = try await dev.read(offset: 4096, length: 8192).get()
        #expect(back == pattern(8192, seed: 1))
        #expect(disk.opcodes == [.write10, .read10])
        #expect(disk.commands[0].uint32(at: 2) == 8 && disk.commands[0].uint16(at: 7) == 16)
        #expect(disk.bytes(atBlock: 8, count: 1) == Array(pattern(512, seed: 1).readableBytesView))
    }

    @Test func roundTripAbove2TiBUsesSixteenByteCommands() async throws {
        let disk = makeDisk { $0.blockCount = 1 << 33 }  // 4 TiB
        let dev = try await open(disk)
        disk.clearCommandLog()
        let offset: UInt64 = 3 << 40  // 3 TiB
        try await dev.write(offset: offset, data: pattern(4096, seed: 9), flags: []).get()
        #expect(try await dev.read(offset: offset, length: 4096).get() == pattern(4096, seed: 9))
        #expect(disk.opcodes == [.write16, .read16])
        #expect(disk.commands[1].uint64(at: 2) == offset / 512 && disk.commands[1].uint32(at: 10) == 8)
        // The last block of the LU.
        let last = (UInt64(1) << 33 - 1) * 512
        try await dev.write(offset: last, data: pattern(512, seed: 3), flags: []).get()
        #expect(try await dev.read(offset: last, length: 512).get() == pattern(512, seed: 3))
    }

    @Test func commandChoiceAtBoundaries() {
        // LBA range must fit 32 bits and the count 16 bits for the 10-byte forms.
        #expect(SCSIOpcode(rawValue: SCSIBlockDevice.readCDB(lba: 0xFFFF_FFFF, blocks: 1).opcode) == .read10)
        #expect(SCSIOpcode(rawValue: SCSIBlockDevice.readCDB(lba: 0xFFFF_FFFF, blocks: 2).opcode) == .read16)
        #expect(SCSIOpcode(rawValue: SCSIBlockDevice.readCDB(lba: 0, blocks: 0xFFFF).opcode) == .read10)
        #expect(SCSIOpcode(rawValue: SCSIBlockDevice.readCDB(lba: 0, blocks: 0x1_0000).opcode) == .read16)
        #expect(SCSIOpcode(rawValue: SCSIBlockDevice.writeCDB(lba: 1 << 32, blocks: 1, fua: false).opcode) == .write16)
    }

    @Test func fuaNative() async throws {
        let disk = makeDisk { $0.dpoFUA = true }
        let dev = try await open(disk)
        disk.clearCommandLog()
        try await dev.write(offset: 0, data: pattern(512, seed: 0), flags: .fua).get()
        #expect(disk.opcodes == [.write10])
        #expect(disk.commands[0][1] & 0x08 != 0)
        try await dev.write(offset: 0, data: pattern(512, seed: 0), flags: []).get()
        #expect(disk.commands[1][1] & 0x08 == 0)
    }

    @Test func fuaEmulatedWithSynchronizeCache() async throws {
        let disk = makeDisk { $0.dpoFUA = false; $0.writeCacheEnabled = true }
        let dev = try await open(disk)
        disk.clearCommandLog()
        try await dev.write(offset: 0, data: pattern(1024, seed: 0), flags: .fua).get()
        #expect(disk.opcodes == [.write10, .synchronizeCache10])
        #expect(disk.commands[0][1] & 0x08 == 0)
    }

    @Test func fuaWithoutWriteCacheNeedsNothing() async throws {
        let disk = makeDisk { $0.dpoFUA = false; $0.writeCacheEnabled = false }
        let dev = try await open(disk)
        disk.clearCommandLog()
        try await dev.write(offset: 0, data: pattern(1024, seed: 0), flags: .fua).get()
        #expect(disk.opcodes == [.write10])
    }

    @Test func flushAndSynchronizeCache16Fallback() async throws {
        let disk = makeDisk { $0.supportsSynchronizeCache10 = false }
        let dev = try await open(disk)
        disk.clearCommandLog()
        try await dev.flush().get()
        try await dev.flush().get()
        #expect(disk.opcodes == [.synchronizeCache10, .synchronizeCache16, .synchronizeCache16])
        #expect(disk.commands[1].uint64(at: 2) == 0 && disk.commands[1].uint32(at: 10) == 0)
    }

    @Test func largeRequestsAreSplitAtMaximumTransferLength() async throws {
        let disk = makeDisk {
            var bl = BlockLimits()
            bl.maximumTransferLength = 8
            $0.blockLimits = bl
        }
        let dev = try await open(disk)
        #expect(dev.info.maxTransferLength == 4096)
        disk.clearCommandLog()
        let data = pattern(100 * 512, seed: 5)
        try await dev.write(offset: 512 * 3, data: data, flags: []).get()
        #expect(disk.opcodes == Array(repeating: .write10, count: 13))
        #expect(disk.commands.map { $0.uint16(at: 7) }.reduce(0, +) == 100)
        disk.clearCommandLog()
        #expect(try await dev.read(offset: 512 * 3, length: 100 * 512).get() == data)
        #expect(disk.opcodes.count == 13 && Set(disk.opcodes) == [.read10])
    }

    /// A split read as pieces: one per command, in LBA order, joined equal to `read` (no copy on the way).
    @Test func splitReadSegmentsComeInOrder() async throws {
        let disk = makeDisk {
            var bl = BlockLimits()
            bl.maximumTransferLength = 8
            $0.blockLimits = bl
        }
        let dev = try await open(disk)
        let data = pattern(100 * 512, seed: 6)
        try await dev.write(offset: 512 * 3, data: data, flags: []).get()
        let pieces = try await dev.readSegments(offset: 512 * 3, length: 100 * 512).get()
        #expect(pieces.count == 13)
        #expect(pieces.allSatisfy { $0.readableBytes <= 4096 })
        var joined = ByteBuffer()
        for p in pieces { joined.writeImmutableBuffer(p) }
        #expect(joined == data)
    }

    @Test func piecesAreCutToTheRequestedLength() {
        let pieces = [ByteBuffer(repeating: 1, count: 100), ByteBuffer(repeating: 2, count: 100), ByteBuffer(repeating: 3, count: 50)]
        #expect(SCSIBlockDevice.prefix(pieces, bytes: 250) == pieces)
        #expect(SCSIBlockDevice.prefix(pieces, bytes: 150).map(\.readableBytes) == [100, 50])
        #expect(SCSIBlockDevice.prefix(pieces, bytes: 100) == [pieces[0]])
        #expect(SCSIBlockDevice.prefix(pieces, bytes: 0).isEmpty)
    }

    @Test func splitWriteFailureFailsTheRequest() async throws {
        let disk = makeDisk {
            var bl = BlockLimits()
            bl.maximumTransferLength = 4
            $0.blockLimits = bl
        }
        let dev = try await open(disk, policy: .none)
        disk.inject(.checkCondition(.mediumError, .writeError, count: 1, opcodes: [0x2A]))
        await expectErrno(.eio, dev.write(offset: 0, data: pattern(40 * 512, seed: 1), flags: []))
    }

    @Test func writeZeroesWithWriteSame() async throws {
        let disk = makeDisk()
        let dev = try await open(disk)
        try await dev.write(offset: 0, data: pattern(8192, seed: 7), flags: []).get()
        disk.clearCommandLog()
        try await dev.writeZeroes(offset: 1024, length: 4096, flags: []).get()
        #expect(disk.opcodes == [.writeSame16])
        #expect(disk.commands[0][1] == 0 && disk.commands[0].uint64(at: 2) == 2 && disk.commands[0].uint32(at: 10) == 8)
        #expect(disk.bytes(atBlock: 2, count: 8).allSatisfy { $0 == 0 })
        #expect(disk.bytes(atBlock: 10, count: 1) == Array(pattern(8192, seed: 7).readableBytesView[5120..<5632]))
        #expect(disk.isMapped(2), "without LBP the blocks are written, not unmapped")
    }

    private static func thin(_ c: inout FakeSCSIDisk.Configuration) {
        c.provisioningManagementEnabled = true
        var lbp = LogicalBlockProvisioning()
        lbp.unmapSupported = true
        lbp.writeSame16UnmapSupported = true
        c.provisioning = lbp
        var bl = BlockLimits()
        bl.maximumUnmapLBACount = 64
        bl.maximumUnmapBlockDescriptorCount = 1
        bl.maximumWriteSameLength = 100
        c.blockLimits = bl
    }

    @Test func writeZeroesUnmapsOnThinLUAndHonoursNoHole() async throws {
        let disk = makeDisk(Self.thin)
        let dev = try await open(disk)
        #expect(dev.info.canFastZero)
        try await dev.write(offset: 0, data: pattern(512 * 300, seed: 2), flags: []).get()
        disk.clearCommandLog()
        try await dev.writeZeroes(offset: 0, length: 512 * 250, flags: []).get()
        #expect(disk.opcodes == [.writeSame16, .writeSame16, .writeSame16], "split at MAXIMUM WRITE SAME LENGTH 100")
        #expect(disk.commands.allSatisfy { $0[1] == 0x08 })
        #expect(!disk.isMapped(0) && !disk.isMapped(249) && disk.isMapped(250))
        disk.clearCommandLog()
        try await dev.writeZeroes(offset: 512 * 250, length: 512 * 10, flags: .noHole).get()
        #expect(disk.opcodes == [.writeSame16] && disk.commands[0][1] == 0)
        #expect(disk.isMapped(250) && disk.bytes(atBlock: 250, count: 10).allSatisfy { $0 == 0 })
        #expect(try await dev.read(offset: 0, length: 512 * 260).get().readableBytesView.allSatisfy { $0 == 0 })
    }

    @Test func fastZero() async throws {
        let thin = makeDisk(Self.thin)
        let dev = try await open(thin)
        thin.clearCommandLog()
        try await dev.writeZeroes(offset: 0, length: 4096, flags: .fastZero).get()
        #expect(thin.opcodes == [.writeSame16] && thin.commands[0][1] == 0x08)
        thin.clearCommandLog()
        await expectErrno(.enotsup, dev.writeZeroes(offset: 0, length: 4096, flags: [.fastZero, .noHole]))
        #expect(thin.opcodes.isEmpty, "a fast-zero refusal must not touch the LU")

        let thick = makeDisk()
        let dev2 = try await open(thick)
        thick.clearCommandLog()
        await expectErrno(.enotsup, dev2.writeZeroes(offset: 0, length: 4096, flags: .fastZero))
        #expect(thick.opcodes.isEmpty)
    }

    @Test func writeZeroesEmulatedWhenWriteSameIsRejected() async throws {
        let disk = makeDisk { $0.supportsWriteSame = false }
        let dev = try await open(disk)
        try await dev.write(offset: 0, data: pattern(512 * 16, seed: 4), flags: []).get()
        disk.clearCommandLog()
        try await dev.writeZeroes(offset: 512, length: 512 * 4, flags: .fua).get()
        #expect(disk.opcodes == [.writeSame16, .write10, .synchronizeCache10], "write zeroes has no FUA bit: FUA is a flush")
        #expect(disk.bytes(atBlock: 1, count: 4).allSatisfy { $0 == 0 })
        disk.clearCommandLog()
        try await dev.writeZeroes(offset: 512 * 8, length: 512 * 2, flags: []).get()
        #expect(disk.opcodes == [.write10], "WRITE SAME is not tried again")
        #expect(disk.bytes(atBlock: 8, count: 2).allSatisfy { $0 == 0 })
    }

    @Test func writeZeroesFUAOnCachedLUFlushes() async throws {
        let disk = makeDisk { $0.dpoFUA = false }
        let dev = try await open(disk)
        disk.clearCommandLog()
        try await dev.writeZeroes(offset: 0, length: 512, flags: .fua).get()
        #expect(disk.opcodes == [.writeSame16, .synchronizeCache10])
    }

    @Test func trimWithUnmapSplitsAtMaximumUnmapCount() async throws {
        let disk = makeDisk(Self.thin)
        let dev = try await open(disk)
        #expect(dev.info.canTrim)
        try await dev.write(offset: 0, data: pattern(512 * 200, seed: 8), flags: []).get()
        disk.clearCommandLog()
        try await dev.trim(offset: 0, length: 512 * 200, flags: []).get()
        #expect(disk.opcodes == [.unmap, .unmap, .unmap, .unmap])
        #expect((0..<200).allSatisfy { !disk.isMapped(UInt64($0)) })
    }

    @Test func trimOnALIOLUWhoseVPDListIsEmpty() async throws {
        // LIO without a unit serial: VPD 00h lists nothing (not even itself), B0h and B2h are answered.
        let disk = makeDisk {
            Self.thin(&$0)
            $0.listsVPDPages = false
            $0.provisioning?.writeSame16UnmapSupported = false
            $0.blockLimits?.maximumTransferLength = 16384
            $0.blockLimits?.optimalTransferLength = 16384
        }
        let dev = try await open(disk)
        #expect(dev.info.canTrim && dev.strategy.useUnmap && dev.strategy.maxUnmapBlocks == 64)
        #expect(dev.info.maxTransferLength == 8 << 20 && dev.info.optimalTransferLength == 8 << 20)
        #expect(dev.lunIdentity.serialNumber == nil, "80h is not guessed at: the identity stays what the list allows")
        try await dev.write(offset: 0, data: pattern(512 * 100, seed: 9), flags: []).get()
        disk.clearCommandLog()
        try await dev.trim(offset: 0, length: 512 * 100, flags: []).get()
        #expect(disk.opcodes == [.unmap, .unmap])
        #expect((0..<100).allSatisfy { !disk.isMapped(UInt64($0)) })
    }

    @Test func trimWithWriteSameUnmapWhenOnlyLBPWS() async throws {
        let disk = makeDisk {
            Self.thin(&$0)
            $0.provisioning?.unmapSupported = false
        }
        let dev = try await open(disk)
        #expect(dev.info.canTrim && !dev.strategy.useUnmap)
        disk.clearCommandLog()
        try await dev.trim(offset: 0, length: 512 * 8, flags: []).get()
        #expect(disk.opcodes == [.writeSame16] && disk.commands[0][1] == 0x08)
    }

    @Test func trimRejectedAtRunTimeBecomesANoOp() async throws {
        let disk = makeDisk {
            Self.thin(&$0)
            $0.supportsUnmap = false
            $0.provisioning?.writeSame16UnmapSupported = false
        }
        let dev = try await open(disk)
        disk.clearCommandLog()
        try await dev.trim(offset: 0, length: 4096, flags: []).get()
        try await dev.trim(offset: 0, length: 4096, flags: []).get()
        #expect(disk.opcodes == [.unmap])
    }

    @Test func trimOnThickLUIsANoOp() async throws {
        let disk = makeDisk()
        let dev = try await open(disk)
        #expect(!dev.info.canTrim)
        disk.clearCommandLog()
        try await dev.trim(offset: 0, length: 4096, flags: []).get()
        #expect(disk.opcodes.isEmpty)
    }
}

@Suite struct SCSIBlockDeviceErrorTests {
    @Test(arguments: [false, true]) func retryOnUnitAttentionThenSuccess(descriptorSense: Bool) async throws {
        let disk = makeDisk { $0.descriptorSense = descriptorSense }
        let dev = try await open(disk)
        try await dev.write(offset: 0, data: pattern(512, seed: 1), flags: []).get()
        disk.clearCommandLog()
        disk.inject(.checkCondition(.unitAttention, .reportedLUNsDataChanged))
        #expect(try await dev.read(offset: 0, length: 512).get() == pattern(512, seed: 1))
        #expect(disk.opcodes == [.read10, .read10])
    }

    @Test func retryOnBusyAndTaskSetFullThenSuccess() async throws {
        let dev = try await open(makeDisk())
        let disk = dev.transport as! FakeSCSIDisk
        disk.clearCommandLog()
        disk.inject(FakeSCSIDisk.Fault(status: .busy, count: 2))
        disk.inject(FakeSCSIDisk.Fault(status: .taskSetFull, count: 1))
        try await dev.write(offset: 0, data: pattern(512, seed: 1), flags: []).get()
        #expect(disk.opcodes == [.write10, .write10, .write10, .write10])
        #expect(disk.bytes(atBlock: 0, count: 1) == Array(pattern(512, seed: 1).readableBytesView))
    }

    @Test func retryOnAbortedCommandThenSuccess() async throws {
        let disk = makeDisk()
        let dev = try await open(disk)
        disk.clearCommandLog()
        disk.inject(.checkCondition(.abortedCommand, .protocolServiceCRCError, count: 2))
        try await dev.flush().get()
        #expect(disk.opcodes == [.synchronizeCache10, .synchronizeCache10, .synchronizeCache10])
    }

    @Test func retriesAreBounded() async throws {
        let disk = makeDisk()
        let policy = RetryPolicy(maxUnitAttentionRetries: 3, maxBusyRetries: 2, maxAbortedRetries: 1,
            initialDelay: .milliseconds(1), maxDelay: .milliseconds(2))
        let dev = try await open(disk, policy: policy)
        disk.clearCommandLog()
        disk.inject(FakeSCSIDisk.Fault(status: .busy, count: 100))
        await expectErrno(.eio, dev.read(offset: 0, length: 512))
        #expect(disk.opcodes.count == 3)
        disk.clearFaults()
        disk.clearCommandLog()
        disk.inject(.checkCondition(.unitAttention, .powerOnResetOccurred, count: 100, opcodes: [0x28]))
        await expectErrno(.eio, dev.read(offset: 0, length: 512))
        #expect(disk.opcodes.filter { $0 == .read10 }.count == 4)
    }

    @Test func writeProtectedGivesEPERM() async throws {
        let disk = makeDisk { $0.writeProtected = true }
        let dev = try await open(disk)
        #expect(dev.info.readOnly)
        await expectErrno(.eperm, dev.write(offset: 0, data: pattern(512, seed: 0), flags: []))
        await expectErrno(.eperm, dev.writeZeroes(offset: 0, length: 512, flags: []))
        #expect(try await dev.read(offset: 0, length: 512).get().readableBytes == 512)
    }

    @Test func errorsSurfaceWithTheRightErrno() async throws {
        let disk = makeDisk()
        let dev = try await open(disk)
        // Out of range: ENOSPC for writes, EINVAL for reads (nbd-proto.md "Error values").
        await expectErrno(.enospc, dev.write(offset: 2048 * 512, data: pattern(512, seed: 0), flags: []))
        await expectErrno(.einval, dev.read(offset: 2048 * 512, length: 512))
        disk.inject(.checkCondition(.mediumError, .unrecoveredReadError))
        await expectErrno(.eio, dev.read(offset: 0, length: 512))
        disk.inject(.checkCondition(.dataProtect, .spaceAllocationFailedWriteProtect))
        await expectErrno(.enospc, dev.write(offset: 0, data: pattern(512, seed: 0), flags: []))
        disk.inject(FakeSCSIDisk.Fault(status: .reservationConflict))
        await expectErrno(.eio, dev.write(offset: 0, data: pattern(512, seed: 0), flags: []))
        disk.inject(.checkCondition(.hardwareError, .internalTargetFailure))
        await expectErrno(.eio, dev.flush())
        disk.failTransport(count: 1)
        await expectErrno(.eio, dev.read(offset: 0, length: 512))
        // CHECK CONDITION with garbage sense.
        disk.inject(FakeSCSIDisk.Fault(status: .checkCondition, sense: nil))
        await expectErrno(.eio, dev.read(offset: 0, length: 512))
    }

    @Test func misalignedRequestsGetEINVALNotACrash() async throws {
        let disk = makeDisk()
        let dev = try await open(disk)
        disk.clearCommandLog()
        await expectErrno(.einval, dev.read(offset: 1, length: 512))
        await expectErrno(.einval, dev.write(offset: 0, data: pattern(100, seed: 0), flags: []))
        await expectErrno(.einval, dev.trim(offset: 512, length: 3, flags: []))
        await expectErrno(.einval, dev.writeZeroes(offset: 7, length: 512, flags: []))
        #expect(disk.opcodes.isEmpty)
    }

    @Test func shortReadIsAnError() async throws {
        final class ShortReads: SCSITransport, @unchecked Sendable {
            // SAFETY: immutable after init.
            let inner: FakeSCSIDisk
            init(_ inner: FakeSCSIDisk) { self.inner = inner }
            var eventLoop: any EventLoop { inner.eventLoop }
            func execute(_ command: SCSICommand, lun: LogicalUnitNumber) -> EventLoopFuture<SCSICommandResult> {
                inner.execute(command, lun: lun).map { r in
                    var r = r
                    if command.cdb.opcode == 0x28, var d = r.dataIn {
                        d.moveWriterIndex(to: d.writerIndex - 1)
                        r.dataIn = d
                    }
                    return r
                }
            }
        }
        let t = ShortReads(makeDisk())
        let dev = try await SCSIBlockDevice.open(transport: t, lun: LogicalUnitNumber(0), logger: Logger(label: "t")).get()
        await expectErrno(.eio, dev.read(offset: 0, length: 512))
    }
}
