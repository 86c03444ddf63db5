import BlockBackend
@testable import ISCSIBlockBackend
import ISCSITestSupport
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SCSI
import Testing

/// Fake disks and devices on them with fast retries, shared by the SCSIBlockDevice*Tests files.
let fastRetries = RetryPolicy(initialDelay: .milliseconds(1), maxDelay: .milliseconds(4))

func makeDisk(_ mutate: (inout FakeSCSIDisk.Configuration) -> Void = { _ in }) -> FakeSCSIDisk {
    var c = FakeSCSIDisk.Configuration()
    mutate(&c)
    return FakeSCSIDisk(eventLoop: MultiThreadedEventLoopGroup.singleton.next(), configuration: c)
}

func open(_ disk: FakeSCSIDisk, lun: UInt16 = 0, policy: RetryPolicy = fastRetries) async throws -> SCSIBlockDevice {
    try await SCSIBlockDevice.open(
        transport: disk, lun: LogicalUnitNumber(lun), logger: Logger(label: "test"), retryPolicy: policy
    ).get()
}

func pattern(_ count: Int, seed: UInt8) -> ByteBuffer {
    ByteBuffer(bytes: (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) })
}

/// Expects the future to fail with a `BlockDeviceError` carrying `code`.
func expectErrno<T: Sendable>(_ code: BlockDeviceError.Code, _ future: EventLoopFuture<T>, sourceLocation: SourceLocation = #_sourceLocation) async {
    do {
        _ = try await future.get()
        Issue.record("expected errno \(code.rawValue), got success", sourceLocation: sourceLocation)
    } catch let error as BlockDeviceError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected BlockDeviceError, got \(error)", sourceLocation: sourceLocation)
    }
}

@Suite struct SCSIBlockDeviceProbeTests {
    @Test func defaultDisk() async throws {
        let disk = makeDisk()
        let dev = try await open(disk)
        let info = dev.info
        #expect(info.size == 2048 * 512)
        #expect(info.logicalBlockSize == 512 && info.preferredBlockSize == 512)
        #expect(info.maxTransferLength == 32 << 20)
        #expect(!info.readOnly && info.canFlush && info.canFUA && info.canWriteZeroes && info.canMultiConn)
        #expect(!info.canTrim && !info.canFastZero && !info.rotational)
        #expect(info.description == "FAKE SCSI DISK (serial FAKE0001)")
        #expect(dev.lunIdentity.designator.map { "\($0)" } == "naa.6001405fabcdef01")
        #expect(dev.lunIdentity.serialNumber == "FAKE0001")
        #expect(dev.lunIdentity.blockCount == 2048)
        #expect(dev.properties.usedReadCapacity16 && dev.properties.dpoFUA)
        #expect(dev.preferredEventLoop === disk.eventLoop)
        #expect(disk.opcodes == [.testUnitReady, .inquiry, .inquiry, .inquiry, .inquiry, .inquiry, .inquiry,
            .serviceActionIn16, .modeSense10])
        // VPD pages asked for: 00, 80, 83, B0, B1 (the fake lists no B2 by default).
        #expect(disk.commands.filter { $0.opcode == 0x12 && $0[1] == 1 }.map { $0[2] } == [0x00, 0x80, 0x83, 0xB0, 0xB1])
    }

    @Test func thinProvisionedWriteProtectedNoCache() async throws {
        let disk = makeDisk {
            $0.blockSize = 4096
            $0.blockCount = 1 << 20
            $0.physicalBlockExponent = 1
            $0.writeProtected = true
            $0.writeCacheEnabled = false
            $0.dpoFUA = false
            $0.provisioningManagementEnabled = true
            var lbp = LogicalBlockProvisioning()
            lbp.unmapSupported = true
            lbp.writeSame16UnmapSupported = true
            $0.provisioning = lbp
            var bl = BlockLimits()
            bl.maximumTransferLength = 256
            bl.optimalTransferLengthGranularity = 4
            bl.maximumUnmapLBACount = 1024
            bl.maximumUnmapBlockDescriptorCount = 1
            $0.blockLimits = bl
            $0.rotationRate = 7200
        }
        let dev = try await open(disk)
        let info = dev.info
        #expect(info.size == UInt64(1 << 20) * 4096)
        #expect(info.logicalBlockSize == 4096)
        #expect(info.preferredBlockSize == 16384, "granularity 4 blocks beats the 8 KiB physical block")
        #expect(info.maxTransferLength == 256 * 4096)
        #expect(info.readOnly && !info.canFlush && info.canFUA)
        #expect(info.canTrim && info.canFastZero && info.rotational)
        #expect(dev.strategy.useUnmap && dev.strategy.maxUnmapBlocks == 1024 && dev.strategy.writeSameUnmap)
        #expect(!dev.strategy.fuaNeedsFlush)
    }

    @Test func physicalExponentGivesPreferredBlockSize() async throws {
        let dev = try await open(makeDisk { $0.physicalBlockExponent = 3; $0.blockLimits = nil })
        #expect(dev.info.preferredBlockSize == 4096)
        #expect(dev.properties.blockLimits == nil)
    }

    @Test func notADisk() async throws {
        do {
            _ = try await open(makeDisk { $0.peripheralDeviceType = 0x05 })
            Issue.record("opened a CD-ROM")
        } catch let error as SCSIProbeError {
            #expect(error.kind == .notDirectAccess)
            #expect(error.message.contains("CD/DVD"))
        }
    }

    @Test func noLogicalUnit() async throws {
        do {
            _ = try await open(makeDisk(), lun: 5)
            Issue.record("opened a missing LUN")
        } catch let error as SCSIProbeError {
            #expect(error.kind == .commandFailed || error.kind == .noLogicalUnit)
        }
        do {
            _ = try await open(makeDisk { $0.peripheralQualifier = 3 })
            Issue.record("opened qualifier 011b")
        } catch let error as SCSIProbeError {
            #expect(error.kind == .noLogicalUnit)
        }
    }

    @Test func fallbacksToReadCapacity10AndModeSense6() async throws {
        let disk = makeDisk {
            $0.supportsReadCapacity16 = false
            $0.supportsModeSense10 = false
            $0.writeProtected = true
        }
        let dev = try await open(disk)
        #expect(!dev.properties.usedReadCapacity16)
        #expect(dev.info.size == 2048 * 512 && dev.info.readOnly)
        #expect(disk.opcodes.suffix(4) == [.serviceActionIn16, .readCapacity10, .modeSense10, .modeSense6])
    }

    @Test func noVPDStartsWithReadCapacity10AndMovesTo16WhenLarge() async throws {
        let small = makeDisk { $0.supportsVPD = false }
        let d1 = try await open(small)
        #expect(!small.opcodes.contains(.serviceActionIn16) && d1.info.size == 2048 * 512)
        #expect(d1.lunIdentity.designator == nil && d1.info.description == "FAKE SCSI DISK")

        let large = makeDisk { $0.supportsVPD = false; $0.blockCount = 1 << 33 }
        let d2 = try await open(large)
        #expect(d2.info.size == UInt64(1 << 33) * 512)
        #expect(large.opcodes.contains(.readCapacity10) && large.opcodes.contains(.serviceActionIn16))
    }

    @Test func noModeSenseAtAllAssumesWriteCache() async throws {
        let dev = try await open(makeDisk { $0.supportsModeSense10 = false; $0.supportsModeSense6 = false })
        #expect(dev.info.canFlush && !dev.info.readOnly && !dev.properties.dpoFUA)
    }

    @Test func unitAttentionsAfterLoginAreRetried() async throws {
        let disk = makeDisk()
        disk.inject(.checkCondition(.unitAttention, .powerOnResetOccurred, count: 1, opcodes: [0x00]))
        disk.inject(.checkCondition(.unitAttention, .reportedLUNsDataChanged, count: 1, opcodes: [0x00]))
        _ = try await open(disk)
        #expect(disk.opcodes.prefix(4) == [.testUnitReady, .testUnitReady, .testUnitReady, .inquiry])
    }

    @Test func becomingReadyIsRetriedWithBackoff() async throws {
        let disk = makeDisk()
        disk.inject(.checkCondition(.notReady, .becomingReady, count: 3, opcodes: [0x00]))
        _ = try await open(disk)
        #expect(disk.opcodes.prefix(5) == [.testUnitReady, .testUnitReady, .testUnitReady, .testUnitReady, .inquiry])
    }

    @Test func probeFailsClearlyWhenNeverReady() async throws {
        let disk = makeDisk()
        disk.inject(.checkCondition(.notReady, .mediumNotPresent, count: 1, opcodes: [0x00]))
        do {
            _ = try await open(disk)
            Issue.record("opened")
        } catch let error as SCSIProbeError {
            #expect(error.kind == .commandFailed)
            #expect(error.message.contains("MEDIUM NOT PRESENT"), "\(error.message)")
        }
    }

    @Test func garbageOptionalVPDPagesAreIgnored() async throws {
        let disk = makeDisk()
        // B0h too short (page length 4), 83h with a designator running past the page.
        disk.inject(.data([0, 0xB0, 0, 4, 0, 0, 0, 8], opcode: 0x12, vpdPage: 0xB0))
        disk.inject(.data([0, 0x83, 0, 6, 1, 3, 0, 40, 1, 2], opcode: 0x12, vpdPage: 0x83))
        let dev = try await open(disk)
        #expect(dev.properties.blockLimits == nil && dev.properties.deviceIdentification == nil)
        #expect(dev.lunIdentity.designator == nil && dev.lunIdentity.serialNumber == "FAKE0001")
        #expect(dev.info.maxTransferLength == 32 << 20)
    }

    @Test func garbageMandatoryDataFailsTheProbe() async throws {
        let disk = makeDisk()
        disk.inject(.data([0, 0, 6, 2, 10], opcode: 0x12))  // standard INQUIRY with ADDITIONAL LENGTH 10
        do {
            _ = try await open(disk)
            Issue.record("opened")
        } catch let error as SCSIProbeError {
            #expect(error.kind == .invalidData)
        }
        let disk2 = makeDisk()
        disk2.inject(.data([0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0], opcode: 0x9E))  // 12-byte RC(16) answer
        do {
            _ = try await open(disk2)
            Issue.record("opened")
        } catch let error as SCSIProbeError {
            #expect(error.kind == .invalidData)
        }
        let disk3 = makeDisk()
        disk3.inject(.data([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], opcode: 0x9E))  // block length 0
        await #expect(throws: SCSIProbeError.self) { try await open(disk3) }
    }

    @Test func longVPDPageIsReissuedWithTheRightAllocationLength() async throws {
        let serial = String(repeating: "S", count: 300)
        let disk = makeDisk { $0.serial = serial }
        let dev = try await open(disk)
        #expect(dev.lunIdentity.serialNumber == serial)
        let serialInquiries = disk.commands.filter { $0.opcode == 0x12 && $0[1] == 1 && $0[2] == 0x80 }
        #expect(serialInquiries.map { $0.uint16(at: 3) } == [255, 304])
    }

    @Test func blockSizeMustBeAPowerOfTwo() async throws {
        do {
            _ = try await open(makeDisk { $0.blockSize = 520 })
            Issue.record("opened 520-byte blocks")
        } catch let error as SCSIProbeError {
            #expect(error.kind == .unsupportedGeometry)
        }
    }

    @Test func unitAttentionSemanticsOfTheFake() async throws {
        let disk = makeDisk()
        disk.queueUnitAttention(.powerOnResetOccurred)
        disk.queueUnitAttention(.capacityDataChanged)
        // INQUIRY and REPORT LUNS pass; TEST UNIT READY meets both attentions in turn.
        let inq = try await disk.execute(SCSICommand(cdb: .inquiry(allocationLength: 36), expectedDataInLength: 36), lun: LogicalUnitNumber(0)).get()
        #expect(inq.status == .good)
        _ = try await open(disk)
        #expect(disk.opcodes.prefix(5) == [.inquiry, .testUnitReady, .testUnitReady, .testUnitReady, .inquiry])
    }

    @Test func reportLUNs() async throws {
        let disk = makeDisk { $0.luns = [LogicalUnitNumber(0), LogicalUnitNumber(1), LogicalUnitNumber(300)] }
        let luns = try await SCSIBlockDevice.reportLUNs(transport: disk, retryPolicy: fastRetries).get()
        #expect(luns.map(\.number) == [0, 1, 300])
        #expect(disk.opcodes == [.reportLUNs])
    }

    @Test func reportLUNsFailureIsAProbeError() async throws {
        let disk = makeDisk()
        disk.inject(.checkCondition(.illegalRequest, .invalidCommandOperationCode, opcodes: [0xA0]))
        do {
            _ = try await SCSIBlockDevice.reportLUNs(transport: disk, retryPolicy: fastRetries).get()
            Issue.record("succeeded")
        } catch let error as SCSIProbeError {
            #expect(error.kind == .commandFailed && error.message.contains("INVALID COMMAND OPERATION CODE"))
        }
    }

    @Test func reportLUNsReissuesWithLargerAllocation() async throws {
        let many = (0..<600).map { LogicalUnitNumber(UInt16($0)) }
        let disk = makeDisk { $0.luns = many }
        let luns = try await SCSIBlockDevice.reportLUNs(transport: disk, retryPolicy: fastRetries).get()
        #expect(luns == many)
        #expect(disk.opcodes == [.reportLUNs, .reportLUNs])
        #expect(disk.commands[1].uint32(at: 6) == 8 + 600 * 8)
    }
}
