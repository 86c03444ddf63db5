import BlockBackend
import Foundation
import ISCSIBlockBackend
import ISCSIClient
import ISCSITestSupport
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SCSI
import Testing

/// The bridge against a real tgtd over the project's iSCSI client: probe, I/O round trips checked in
/// the backing file, write zeroes, trim, flush, REPORT LUNS. Skipped outside CI when tgtd is missing.
@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm")), .timeLimit(.minutes(2)))
struct TGTBridgeTests {
    static let iqn = "iqn.2026-11.test.iscsi-nbd:bridge"
    static let size: UInt64 = 64 << 20

    /// tgtd with LUN 1 (512-byte blocks, thin provisioned) and LUN 2 (4096-byte blocks), file-backed.
    final class Fixture {
        let tgt: TGTD
        let disk1: String
        let disk2: String
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var session: ISCSISession?

        init() throws {
            tgt = try TGTD.start()
            do {
                try tgt.addTarget(tid: 1, iqn: TGTBridgeTests.iqn)
                disk1 = try tgt.makeBackingFile(name: "d1.img", size: TGTBridgeTests.size)
                disk2 = try tgt.makeBackingFile(name: "d2.img", size: TGTBridgeTests.size)
                try tgt.addLUN(tid: 1, lun: 1, backingFile: disk1)
                try tgt.tgtadm([
                    "--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "--params",
                    "thin_provisioning=1",
                ])
                try tgt.addLUN(tid: 1, lun: 2, backingFile: disk2, blockSize: 4096)
            } catch {
                tgt.stop()
                throw error
            }
        }

        func connect() async throws -> ISCSISession {
            var logger = Logger(label: "test.bridge")
            logger.logLevel = .warning
            let s = try await ISCSISession.connect(
                ISCSISessionConfiguration(
                    host: "127.0.0.1", port: tgt.port, targetName: TGTBridgeTests.iqn,
                    initiatorName: "iqn.2026-11.test.iscsi-nbd:bridge-initiator"),
                on: group.next(), logger: logger
            ).get()
            session = s
            return s
        }

        func close() async {
            if let session { try? await session.logout().get() }
            tgt.stop()
            try? await group.shutdownGracefully()
        }

        func fileBytes(_ path: String, at offset: UInt64, count: Int) throws -> [UInt8] {
            let h = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
            defer { try? h.close() }
            try h.seek(toOffset: offset)
            return [UInt8](try h.read(upToCount: count) ?? Data())
        }
    }

    /// Passes commands through and records each opcode with the status it got.
    final class Recorder: SCSITransport {
        let inner: any SCSITransport
        let log = NIOLockedValueBox<[(SCSIOpcode, SCSIStatus)]>([])
        init(_ inner: any SCSITransport) { self.inner = inner }
        var eventLoop: any EventLoop { inner.eventLoop }
        func execute(_ command: SCSICommand, lun: LogicalUnitNumber) -> EventLoopFuture<SCSICommandResult> {
            inner.execute(command, lun: lun).map { r in
                self.log.withLockedValue { $0.append((SCSIOpcode(rawValue: command.cdb.opcode), r.status)) }
                return r
            }
        }
        func take() -> [(SCSIOpcode, SCSIStatus)] { log.withLockedValue { l in defer { l = [] }; return l } }
    }

    static func pattern(_ n: Int, _ seed: UInt8) -> ByteBuffer {
        ByteBuffer(bytes: (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ Int(seed) &+ $0 >> 9) })
    }

    @Test func probeAndIOOnThinLUN() async throws {
        let f = try Fixture()
        do {
            let session = try await f.connect()
            let logger = Logger(label: "test.bridge")
            let luns = try await SCSIBlockDevice.reportLUNs(transport: session, logger: logger).get()
            #expect(luns.compactMap(\.number).sorted() == [0, 1, 2])

            // LUN 0 is tgt's controller, not a disk.
            await #expect(throws: SCSIProbeError.self) {
                try await SCSIBlockDevice.open(transport: session, lun: LogicalUnitNumber(0), logger: logger).get()
            }

            let recorder = Recorder(session)
            let dev = try await SCSIBlockDevice.open(transport: recorder, lun: LogicalUnitNumber(1), logger: logger).get()
            let info = dev.info
            // tgt with thin_provisioning=1: LBPME, LBPU, LBPWS, LBPRZ.
            #expect(info.canTrim && info.canFastZero)
            #expect(dev.properties.usedReadCapacity16 && dev.properties.supportedVPDPages != nil)
            #expect(info.size == Self.size && info.logicalBlockSize == 512)
            #expect(!info.readOnly && info.canFUA && info.canWriteZeroes)
            #expect(info.maxTransferLength >= 512 && info.maxTransferLength <= 32 << 20)
            #expect(dev.lunIdentity.serialNumber?.isEmpty == false || dev.lunIdentity.designator != nil)

            // Writes land in the backing file; reads come back identical.
            for (offset, length, seed) in [(UInt64(0), 4096, UInt8(1)), (Self.size - 8192, 8192, 2), (1 << 20, 1 << 20, 3)] {
                let data = Self.pattern(length, seed)
                try await dev.write(offset: offset, data: data, flags: seed == 2 ? .fua : []).get()
                #expect(try await dev.read(offset: offset, length: UInt32(length)).get() == data)
                #expect(try f.fileBytes(f.disk1, at: offset, count: length) == Array(data.readableBytesView))
            }
            try await dev.flush().get()

            // Write zeroes (with and without NO_HOLE) reads back as zeros.
            _ = recorder.take()
            try await dev.writeZeroes(offset: 1 << 20, length: 65536, flags: []).get()
            try await dev.writeZeroes(offset: (1 << 20) + 65536, length: 4096, flags: .noHole).get()
            try await dev.writeZeroes(offset: 3 << 20, length: 1 << 20, flags: .fastZero).get()
            #expect(recorder.take().map { "\($0.0) \($0.1)" } == ["WRITE SAME(16) GOOD", "WRITE SAME(16) GOOD", "WRITE SAME(16) GOOD"])
            let zeros = try await dev.read(offset: 1 << 20, length: 65536 + 4096).get()
            #expect(zeros.readableBytesView.allSatisfy { $0 == 0 })
            #expect(try f.fileBytes(f.disk1, at: (1 << 20) + 69632, count: 512)
                == Array(Self.pattern(1 << 20, 3).readableBytesView[69632..<70144]), "neighbours untouched")

            // Trim is advisory: it must succeed (or be a no-op) and leave the LU usable.
            try await dev.write(offset: 2 << 20, data: Self.pattern(1 << 20, 8), flags: []).get()
            _ = recorder.take()
            try await dev.trim(offset: 2 << 20, length: 1 << 20, flags: []).get()
            #expect(recorder.take().map { "\($0.0) \($0.1)" } == ["UNMAP GOOD"])
            // LBPRZ: the unmapped range reads back as zeros (tgt punches a hole in the file).
            #expect(try await dev.read(offset: 2 << 20, length: 1 << 20).get().readableBytesView.allSatisfy { $0 == 0 })
            try await dev.write(offset: 2 << 20, data: Self.pattern(512, 9), flags: []).get()
            #expect(try await dev.read(offset: 2 << 20, length: 512).get() == Self.pattern(512, 9))

            // Beyond the end: ENOSPC for a write, EINVAL for a read (the NBD server normally stops these).
            do {
                try await dev.write(offset: Self.size, data: Self.pattern(512, 0), flags: []).get()
                Issue.record("write past the end succeeded")
            } catch let e as BlockDeviceError { #expect(e.code == .enospc) }
            do {
                _ = try await dev.read(offset: Self.size, length: 512).get()
                Issue.record("read past the end succeeded")
            } catch let e as BlockDeviceError { #expect(e.code == .einval) }
        } catch {
            await f.close()
            throw error
        }
        await f.close()
    }

    @Test func fourKiBLogicalBlocks() async throws {
        let f = try Fixture()
        do {
            let session = try await f.connect()
            let dev = try await SCSIBlockDevice.open(
                transport: session, lun: LogicalUnitNumber(2), logger: Logger(label: "test.bridge")
            ).get()
            #expect(dev.info.logicalBlockSize == 4096 && dev.info.size == Self.size)
            let data = Self.pattern(3 * 4096, 5)
            try await dev.write(offset: 4096 * 7, data: data, flags: .fua).get()
            #expect(try await dev.read(offset: 4096 * 7, length: 3 * 4096).get() == data)
            #expect(try f.fileBytes(f.disk2, at: 4096 * 7, count: 3 * 4096) == Array(data.readableBytesView))
            try await dev.writeZeroes(offset: 4096 * 8, length: 4096, flags: []).get()
            #expect(try await dev.read(offset: 4096 * 8, length: 4096).get().readableBytesView.allSatisfy { $0 == 0 })
        } catch {
            await f.close()
            throw error
        }
        await f.close()
    }
}
