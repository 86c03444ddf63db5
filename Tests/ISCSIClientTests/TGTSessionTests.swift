import Foundation
import ISCSIClient
import ISCSIProtocol
import ISCSITestSupport
import Logging
import NIOCore
import NIOPosix
import SCSI
import Testing

/// CDBs built by hand (SBC-4 / SPC-5 layouts; the SCSI library is another helper's).
enum TestCDB {
    static func inquiry(allocationLength: UInt16 = 96) -> CDB {
        CDB([0x12, 0, 0, UInt8(allocationLength >> 8), UInt8(allocationLength & 0xFF), 0])
    }

    static func readCapacity16() -> CDB {
        var bytes = [UInt8](repeating: 0, count: 16)
        bytes[0] = 0x9E
        bytes[1] = 0x10
        bytes[13] = 32
        return CDB(bytes)
    }

    static func rw16(opcode: UInt8, lba: UInt64, blocks: UInt32) -> CDB {
        var bytes = [UInt8](repeating: 0, count: 16)
        bytes[0] = opcode
        for i in 0..<8 { bytes[2 + i] = UInt8((lba >> (56 - 8 * UInt64(i))) & 0xFF) }
        for i in 0..<4 { bytes[10 + i] = UInt8((blocks >> (24 - 8 * UInt32(i))) & 0xFF) }
        return CDB(bytes)
    }

    static func read16(lba: UInt64, blocks: UInt32) -> CDB { rw16(opcode: 0x88, lba: lba, blocks: blocks) }
    static func write16(lba: UInt64, blocks: UInt32) -> CDB { rw16(opcode: 0x8A, lba: lba, blocks: blocks) }
}

/// A tgtd with target 1: LUN 1 file-backed (64 MiB), LUN 2 `--bstype null`.
final class TGTFixture {
    static let iqn = "iqn.2026-11.test.iscsi-nbd:disk"
    static let diskSize: UInt64 = 64 << 20
    let tgt: TGTD
    let backingFile: String
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    init() throws {
        tgt = try TGTD.start()
        do {
            try tgt.addTarget(tid: 1, iqn: Self.iqn)
            backingFile = try tgt.makeBackingFile(name: "disk.img", size: Self.diskSize)
            try tgt.addLUN(tid: 1, lun: 1, backingFile: backingFile)
            try tgt.addLUN(tid: 1, lun: 2, backingFile: nil)
            // tgt offers only None unless the target allows CRC32C (RFC 7143 §13.1).
            try tgt.tgtadm(["--op", "update", "--mode", "target", "--tid", "1", "-n", "HeaderDigest", "-v", "CRC32C,None"])
            try tgt.tgtadm(["--op", "update", "--mode", "target", "--tid", "1", "-n", "DataDigest", "-v", "CRC32C,None"])
        } catch {
            tgt.stop()
            throw error
        }
    }

    func configuration(digests: DigestSettings = .none) -> ISCSISessionConfiguration {
        var proposal = SessionParameterProposal()
        proposal.headerDigests = digests.header ? [.crc32c] : [.none]
        proposal.dataDigests = digests.data ? [.crc32c] : [.none]
        return ISCSISessionConfiguration(
            host: "127.0.0.1", port: tgt.port, targetName: Self.iqn,
            initiatorName: "iqn.2026-11.test.iscsi-nbd:initiator", proposal: proposal
        )
    }

    func connect(digests: DigestSettings = .none) async throws -> ISCSISession {
        var logger = Logger(label: "test.iscsi")
        logger.logLevel = .info
        let session = try await ISCSISession.connect(configuration(digests: digests), on: group.next(), logger: logger)
        // A new I_T nexus starts with a UNIT ATTENTION (power on / reset) per LUN: consume it with
        // TEST UNIT READY, as initiators do.
        for lun in [LogicalUnitNumber(1), LogicalUnitNumber(2)] {
            for _ in 0..<3 {
                let tur = try await session.execute(SCSICommand(cdb: CDB([0, 0, 0, 0, 0, 0])), lun: lun).get()
                if tur.status == .good { break }
            }
        }
        return session
    }

    func stop() {
        tgt.stop()
        try? group.syncShutdownGracefully()
    }
}

func pattern(length: Int, seed: UInt8) -> ByteBuffer {
    var buffer = ByteBufferAllocator().buffer(capacity: length)
    var x = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15 | 1
    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { raw in
        let words = length / 8
        let p = raw.baseAddress!.bindMemory(to: UInt64.self, capacity: words)
        for i in 0..<words {
            x ^= x << 13
            x ^= x >> 7
            x ^= x << 17
            p[i] = x
        }
        for i in (words * 8)..<length { raw[i] = UInt8(truncatingIfNeeded: x >> (i % 8)) }
        return length
    }
    return buffer
}

func sameBytes(_ data: Data, _ buffer: ByteBuffer) -> Bool {
    guard data.count == buffer.readableBytes else { return false }
    return data.withUnsafeBytes { a in buffer.withUnsafeReadableBytes { b in memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 } }
}

@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm")), .timeLimit(.minutes(5)))
struct TGTSessionTests {
    static let lun1 = LogicalUnitNumber(1)
    static let lun2 = LogicalUnitNumber(2)

    @Test func loginInquiryCapacityAndLogout() async throws {
        let fixture = try TGTFixture()
        defer { fixture.stop() }
        let session = try await fixture.connect()
        #expect(session.tsih != 0)

        let inquiry = try await session.execute(SCSICommand(cdb: TestCDB.inquiry(), expectedDataInLength: 96), lun: Self.lun1).get()
        #expect(inquiry.status == .good)
        let data = try #require(inquiry.dataIn)
        #expect(data.readableBytes >= 36)
        #expect(data.getInteger(at: data.readerIndex, as: UInt8.self).map { $0 & 0x1F } == 0)  // direct access block device

        let capacity = try await session.execute(SCSICommand(cdb: TestCDB.readCapacity16(), expectedDataInLength: 32), lun: Self.lun1).get()
        #expect(capacity.status == .good)
        let cap = try #require(capacity.dataIn)
        let lastLBA = try #require(cap.getInteger(at: cap.readerIndex, as: UInt64.self))
        let blockSize = try #require(cap.getInteger(at: cap.readerIndex + 8, as: UInt32.self))
        #expect(blockSize == 512)
        #expect((lastLBA + 1) * UInt64(blockSize) == TGTFixture.diskSize)

        try await session.logout().get()
        // After logout, commands fail with a transport error, not a SCSI status.
        await #expect(throws: (any Error).self) {
            _ = try await session.execute(SCSICommand(cdb: TestCDB.inquiry(), expectedDataInLength: 96), lun: Self.lun1).get()
        }
    }

    @Test func checkConditionCarriesSense() async throws {
        let fixture = try TGTFixture()
        defer { fixture.stop() }
        let session = try await fixture.connect()
        // READ(16) beyond the end: LBA OUT OF RANGE (CHECK CONDITION, ILLEGAL REQUEST).
        let result = try await session.execute(
            SCSICommand(cdb: TestCDB.read16(lba: TGTFixture.diskSize / 512, blocks: 1), expectedDataInLength: 512),
            lun: Self.lun1
        ).get()
        #expect(result.status == .checkCondition)
        let sense = try #require(result.senseData)
        #expect(sense.readableBytes >= 14)
        let responseCode = sense.getInteger(at: sense.readerIndex, as: UInt8.self).map { $0 & 0x7F }
        let senseKey: UInt8? =
            responseCode == 0x72
            ? sense.getInteger(at: sense.readerIndex + 1, as: UInt8.self).map { $0 & 0x0F }
            : sense.getInteger(at: sense.readerIndex + 2, as: UInt8.self).map { $0 & 0x0F }
        #expect(senseKey == 0x05)
        try await session.logout().get()
    }

    @Test(arguments: [DigestSettings.none, DigestSettings(header: true, data: true)])
    func writeThenReadVariousSizes(digests: DigestSettings) async throws {
        let fixture = try TGTFixture()
        defer { fixture.stop() }
        let session = try await fixture.connect(digests: digests)
        #expect(session.sessionParameters.digests == digests)
        // 512 B to 8 MiB: crosses ImmediateData, FirstBurstLength and MaxBurstLength, so R2Ts happen.
        let sizes = [512, 4096, 8192 + 512, 65536, 65536 + 4096, 262_144 + 512, 1 << 20, (1 << 20) + 3 * 512, 8 << 20]
        var lba: UInt64 = 8
        var written: [(UInt64, ByteBuffer)] = []
        for (i, size) in sizes.enumerated() {
            let payload = pattern(length: size, seed: UInt8(i + 1))
            let blocks = UInt32(size / 512)
            let w = try await session.execute(
                SCSICommand(cdb: TestCDB.write16(lba: lba, blocks: blocks), dataOut: payload), lun: Self.lun1
            ).get()
            #expect(w.status == .good, "write of \(size) bytes")
            let r = try await session.execute(
                SCSICommand(cdb: TestCDB.read16(lba: lba, blocks: blocks), expectedDataInLength: UInt32(size)),
                lun: Self.lun1
            ).get()
            #expect(r.status == .good, "read of \(size) bytes")
            #expect(r.dataIn == payload, "read back \(size) bytes")
            #expect(r.residual == 0)
            written.append((lba, payload))
            lba += UInt64(blocks) + 8
        }
        try await session.logout().get()

        // The backing file holds exactly what was written.
        let file = try #require(FileHandle(forReadingAtPath: fixture.backingFile))
        defer { try? file.close() }
        for (lba, payload) in written {
            try file.seek(toOffset: lba * 512)
            let bytes = try #require(try file.read(upToCount: payload.readableBytes))
            #expect(sameBytes(bytes, payload), "backing file at LBA \(lba)")
        }
    }

    @Test func sixtyFourConcurrentCommands() async throws {
        let fixture = try TGTFixture()
        defer { fixture.stop() }
        let session = try await fixture.connect()
        let size = 65536 + 512
        let blocks = UInt32(size / 512)
        let payloads = (0..<64).map { pattern(length: size, seed: UInt8($0)) }
        let writes = payloads.enumerated().map { i, payload in
            session.execute(SCSICommand(cdb: TestCDB.write16(lba: UInt64(i) * 256, blocks: blocks), dataOut: payload), lun: Self.lun1)
        }
        for w in writes { #expect(try await w.get().status == .good) }
        let reads = (0..<64).map { i in
            session.execute(SCSICommand(cdb: TestCDB.read16(lba: UInt64(i) * 256, blocks: blocks), expectedDataInLength: UInt32(size)), lun: Self.lun1)
        }
        for (i, r) in reads.enumerated() {
            let result = try await r.get()
            #expect(result.status == .good)
            #expect(result.dataIn == payloads[i])
        }
        // Mixed reads and writes against the null LUN, all in flight at once.
        let mixed = (0..<64).map { i in
            i % 2 == 0
                ? session.execute(SCSICommand(cdb: TestCDB.write16(lba: UInt64(i) * 64, blocks: 64), dataOut: pattern(length: 32768, seed: 7)), lun: Self.lun2)
                : session.execute(SCSICommand(cdb: TestCDB.read16(lba: UInt64(i) * 64, blocks: 64), expectedDataInLength: 32768), lun: Self.lun2)
        }
        for m in mixed { #expect(try await m.get().status == .good) }
        try await session.logout().get()
    }
}

@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm")), .timeLimit(.minutes(3)))
struct TGTLoginTests {
    @Test func discoveryFindsTheTarget() async throws {
        let fixture = try TGTFixture()
        defer { fixture.stop() }
        let targets = try await ISCSISession.discover(
            host: "127.0.0.1", port: fixture.tgt.port, initiatorName: "iqn.2026-11.test.iscsi-nbd:initiator",
            on: fixture.group.next(), logger: Logger(label: "test.discovery")
        ).get()
        let target = try #require(targets.first { $0.name == TGTFixture.iqn })
        #expect(target.portals.contains { $0.port == fixture.tgt.port })
    }

    @Test func chapLoginOneWayAndMutual() async throws {
        let fixture = try TGTFixture()
        defer { fixture.stop() }
        try fixture.tgt.addAccount(tid: 1, user: "alice", password: "alicesecret123")

        // Without credentials the target refuses (authentication failure, RFC 7143 §11.13.5).
        await #expect(throws: ISCSISessionError.self) { _ = try await fixture.connect() }

        var config = fixture.configuration()
        config.chap = CHAPCredentials(username: "alice", secret: "alicesecret123")
        let session = try await ISCSISession.connect(config, on: fixture.group.next(), logger: Logger(label: "test.chap"))
        let inquiry = try await session.execute(SCSICommand(cdb: TestCDB.inquiry(), expectedDataInLength: 96), lun: LogicalUnitNumber(1)).get()
        #expect(inquiry.dataIn != nil)
        try await session.logout().get()

        // A wrong secret fails the login.
        config.chap = CHAPCredentials(username: "alice", secret: "wrongsecret1234")
        await #expect(throws: ISCSISessionError.self) {
            _ = try await ISCSISession.connect(config, on: fixture.group.next(), logger: Logger(label: "test.chap")).get()
        }

        // Mutual CHAP: the target proves it knows its own secret.
        try fixture.tgt.addAccount(tid: 1, user: "target1", password: "targetsecret99", outgoing: true)
        config.chap = CHAPCredentials(
            username: "alice", secret: "alicesecret123",
            mutual: .init(username: "target1", secret: "targetsecret99")
        )
        let mutual = try await ISCSISession.connect(config, on: fixture.group.next(), logger: Logger(label: "test.chap"))
        try await mutual.logout().get()

        config.chap = CHAPCredentials(
            username: "alice", secret: "alicesecret123",
            mutual: .init(username: "target1", secret: "notthetargetsecret")
        )
        await #expect(throws: ISCSISessionError.self) {
            _ = try await ISCSISession.connect(config, on: fixture.group.next(), logger: Logger(label: "test.chap")).get()
        }
    }
}
