import ISCSIClient
import ISCSIProtocol
import ISCSITestSupport
import NIOCore
import SCSI
import Testing

/// `ISCSISession.statistics()` against a real tgtd: the PDU counters move by what RFC 7143 says one command
/// needs, worked out here from the negotiated values (not from the initiator's own planner).
@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm")), .timeLimit(.minutes(3)))
struct SessionStatisticsTGTDTests {
    /// The PDUs one write of `total` bytes takes (RFC 7143 §13.10 immediate data and the unsolicited burst,
    /// §11.8 R2Ts of at most MaxBurstLength, Data-Out PDUs of at most the target's MaxRecvDataSegmentLength).
    static func expectedWrite(total: Int, _ p: OperationalParameters) -> (dataOut: UInt64, r2t: UInt64) {
        let segment = p.targetMaxRecvDataSegmentLength
        let immediate = p.immediateData ? min(total, p.firstBurstLength, segment) : 0
        let unsolicited = p.initialR2T ? immediate : min(total, p.firstBurstLength)
        var dataOut = (unsolicited - immediate + segment - 1) / segment
        var r2t = 0
        var offset = unsolicited
        while offset < total {
            let burst = min(total - offset, p.maxBurstLength)
            r2t += 1
            dataOut += (burst + segment - 1) / segment
            offset += burst
        }
        return (UInt64(dataOut), UInt64(r2t))
    }

    @Test func oneMebibyteWriteCountsItsDataOutAndR2TPDUs() async throws {
        let fixture = try TGTFixture()
        defer { fixture.stop() }
        // tgtd's defaults: FirstBurstLength 64 KiB, MaxBurstLength 256 KiB, MaxRecvDataSegmentLength 8 KiB.
        let session = try await fixture.connect()
        let p = session.parameters
        #expect(p.firstBurstLength == 64 << 10)
        let before = try await session.statistics().get()

        let total = 1 << 20
        let write = SCSICommand(cdb: TestCDB.write16(lba: 0, blocks: UInt32(total / 512)), dataOut: pattern(length: total, seed: 7))
        #expect(try await session.execute(write, lun: TGTSessionTests.lun1).get().status == .good)
        let after = try await session.statistics().get()

        let expected = Self.expectedWrite(total: total, p)
        print("1 MiB write: FirstBurstLength \(p.firstBurstLength), MaxBurstLength \(p.maxBurstLength), MaxXmitDataSegmentLength \(p.targetMaxRecvDataSegmentLength), ImmediateData \(p.immediateData), InitialR2T \(p.initialR2T): expecting \(expected.dataOut) Data-Out, \(expected.r2t) R2T")
        #expect(expected.r2t > 0)
        #expect(after.pdus.sent(.scsiCommand) - before.pdus.sent(.scsiCommand) == 1)
        #expect(after.pdus.sent(.dataOut) - before.pdus.sent(.dataOut) == expected.dataOut)
        #expect(after.pdus.received(.readyToTransfer) - before.pdus.received(.readyToTransfer) == expected.r2t)
        #expect(after.pdus.received(.scsiResponse) - before.pdus.received(.scsiResponse) == 1)
        // Every byte of the write went out once, in immediate data or Data-Out (txdata_octets).
        #expect(after.pdus.txDataOctets - before.pdus.txDataOctets == UInt64(total))
        #expect(after.pdus.sent(.loginRequest) >= 1)
        #expect(after.pdus.received(.loginResponse) == after.pdus.sent(.loginRequest))
        #expect(after.pdus.digestErrors == 0)
        let window = try #require(after.window)
        #expect(window.outstanding == 0)
        #expect(window.window > 0)
        #expect(after.recoveries == 0)

        // A 64 KiB read: Data-In PDUs of at most our MaxRecvDataSegmentLength, the bytes in rxdata_octets.
        let read = SCSICommand(cdb: TestCDB.read16(lba: 0, blocks: 128), expectedDataInLength: 64 << 10)
        #expect(try await session.execute(read, lun: TGTSessionTests.lun1).get().status == .good)
        let afterRead = try await session.statistics().get()
        let segments = UInt64((64 << 10 + p.initiatorMaxRecvDataSegmentLength - 1) / p.initiatorMaxRecvDataSegmentLength)
        #expect(afterRead.pdus.received(.dataIn) - after.pdus.received(.dataIn) == segments)
        #expect(afterRead.pdus.rxDataOctets - after.pdus.rxDataOctets == UInt64(64 << 10))
        try await session.logout().get()
    }

    @Test func countersSurviveARecovery() async throws {
        let fixture = try TGTFixture()
        defer { fixture.stop() }
        let session = try await fixture.connect()
        let read = SCSICommand(cdb: TestCDB.read16(lba: 0, blocks: 8), expectedDataInLength: 4096)
        _ = try await session.execute(read, lun: TGTSessionTests.lun1).get()
        let before = try await session.statistics().get()
        session.dropConnection()
        // The dropped connection's counters stay in the session's; the new login adds its own.
        var recovered = before
        for _ in 0..<100 where recovered.recoveries == 0 {
            try await Task.sleep(for: .milliseconds(100))
            recovered = try await session.statistics().get()
        }
        #expect(recovered.recoveries == 1)
        #expect(recovered.reloginAttempts >= 1)
        #expect(recovered.pdus.sent(.loginRequest) > before.pdus.sent(.loginRequest))
        #expect(recovered.pdus.sent(.scsiCommand) >= before.pdus.sent(.scsiCommand))
        let last = try #require(recovered.lastRecovery)
        #expect(last.durationSeconds != nil)
        #expect(!last.reason.isEmpty)
        _ = try await session.execute(read, lun: TGTSessionTests.lun1).get()
        let after = try await session.statistics().get()
        #expect(after.pdus.sent(.scsiCommand) > recovered.pdus.sent(.scsiCommand))
        try await session.logout().get()
    }
}
