@testable import ISCSIClient
import ISCSIProtocol
import NIOCore
import SCSI
import Testing

/// `ConnectionStateMachine` driven directly (`MachineDriver`): no channel, no sockets, no timers but the
/// ticks the tests fire.
struct ConnectionStateMachineTests {
    static let sense: [UInt8] = [0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0, 0, 0, 0, 0]

    func failure<T>(_ future: EventLoopFuture<T>) -> ISCSISessionError? {
        guard case .failure(let error as ISCSISessionError)? = outcome(future) else { return nil }
        return error
    }

    @Test func loginEntersTheFullFeaturePhaseWithTheNegotiatedFramingAndTimers() throws {
        let d = try MachineDriver(noopOutInterval: .seconds(5), commandTimeout: .seconds(30))
        let actions = try d.login()
        #expect(d.machine.isInFullFeaturePhase)
        let negotiated = actions.compactMap { if case .enterFullFeature(let p) = $0 { p } else { nil } }
        #expect(negotiated.first?.firstBurstLength == 16384 && negotiated.first?.targetMaxRecvDataSegmentLength == 8192)
        // Ticks at half the shorter ping time and a quarter of the shorter command/TMF timeout (2 s here).
        #expect(MachineDriver.armed(actions).map(\.0) == [.keepAlive, .commandTimeout])
        #expect(MachineDriver.armed(actions).map(\.1) == [.milliseconds(2500), .milliseconds(500)])
    }

    /// The full feature payload is held out of line (`FullFeatureStorage`) and copied on write: a copy of
    /// the machine is still an independent value.
    @Test func aCopiedMachineDoesNotShareItsFullFeatureState() throws {
        let d = try MachineDriver()
        try d.login()
        var copy = d.machine
        _ = d.submit(SCSICommand(cdb: writeCDB(blocks: 1), dataOut: ByteBuffer(repeating: 1, count: 512)))
        #expect(d.machine.outstandingTasks == 1 && copy.outstandingTasks == 0)
        let promise = d.loop.makePromise(of: SCSICommandResult.self)
        copy.submit(PendingCommand(command: SCSICommand(cdb: writeCDB(blocks: 1), dataOut: ByteBuffer(repeating: 2, count: 512)),
                                   lun: LogicalUnitNumber(1), promise: promise), now: d.now)
        copy.submit(PendingCommand(command: SCSICommand(cdb: writeCDB(blocks: 1), dataOut: ByteBuffer(repeating: 3, count: 512)),
                                   lun: LogicalUnitNumber(1), promise: d.loop.makePromise()), now: d.now)
        #expect(copy.outstandingTasks == 2 && d.machine.outstandingTasks == 1)
        #expect(copy.windowSnapshot?.cmdSN != d.machine.windowSnapshot?.cmdSN)
        copy.fail(.connectionClosed)
        var failed = 0
        while let action = copy.nextAction() {
            if case .failCommand(let promise, let error) = action {
                promise.fail(error)
                failed += 1
            }
        }
        #expect(failed == 2 && copy.isClosed && !d.machine.isClosed && d.machine.outstandingTasks == 1)
        d.machine.fail(.connectionClosed)
        d.take()
        #expect(failure(promise.futureResult) == .connectionClosed)
    }

    // MARK: - R2T and Data-Out (RFC 7143 §11.7, §11.8, §13.10, §13.11)

    @Test func writeDataGoesImmediateThenUnsolicitedThenPerR2T() throws {
        let d = try MachineDriver()
        try d.login()
        let total = 16384 + 40000
        let payload = ByteBuffer(bytes: (0..<total).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        let (future, actions) = d.submit(SCSICommand(cdb: writeCDB(blocks: UInt32(total / 512)), dataOut: payload))
        if case .scheduleFlush? = actions.last {} else { Issue.record("a submission outside a read schedules a flush") }
        var pdus = MachineDriver.pdus(actions)
        let command = try ISCSIPDU.SCSICommand(pdus.removeFirst())
        // ImmediateData up to min(FirstBurstLength, the target's MaxRecvDataSegmentLength) = 8192, F=0.
        #expect(command.write && !command.final && command.data.readableBytes == 8192)
        #expect(command.cmdSN == SerialNumber(1) && command.expectedDataTransferLength == UInt32(total))
        #expect(command.cdb.bytes == writeCDB(blocks: UInt32(total / 512)).bytes)
        var received = command.data
        // The unsolicited rest of FirstBurstLength: TTT 0xffffffff, DataSN 0, F.
        let unsolicited = try pdus.map(ISCSIPDU.DataOut.init)
        #expect(unsolicited.map(\.bufferOffset) == [8192] && unsolicited.allSatisfy { $0.final && $0.targetTransferTag == reservedTaskTag })
        #expect(unsolicited.map(\.dataSN) == [SerialNumber(0)])
        for out in unsolicited { received.writeImmutableBuffer(out.data) }
        for (r2tSN, (offset, length)) in [(16384, 32768), (49152, total - 49152)].enumerated() {
            let r2t = d.r2t(itt: command.initiatorTaskTag, ttt: 0x500 + UInt32(r2tSN), r2tSN: UInt32(r2tSN), offset: offset, length: length)
            let outs = try MachineDriver.pdus(d.deliver(r2t)).map(ISCSIPDU.DataOut.init)
            #expect(outs.count == (length + 8191) / 8192)
            for (i, out) in outs.enumerated() {
                #expect(out.targetTransferTag == 0x500 + UInt32(r2tSN) && out.initiatorTaskTag == command.initiatorTaskTag)
                #expect(out.dataSN == SerialNumber(UInt32(i)), "DataSN counts from 0 in each R2T's sequence")
                #expect(out.final == (i == outs.count - 1))
                #expect(Int(out.bufferOffset) == received.readableBytes && out.data.readableBytes <= 8192)
                received.writeImmutableBuffer(out.data)
            }
        }
        #expect(received == payload)
        #expect(outcome(future) == nil)
        d.deliver(d.response(itt: command.initiatorTaskTag))
        #expect(try outcome(future)?.get().status == .good)
    }

    @Test func withInitialR2TAndNoImmediateDataTheWriteWaitsForTheR2T() throws {
        let keys = FakeTargetHarness.defaultKeys.map {
            $0.0 == "InitialR2T" ? ($0.0, "Yes") : $0.0 == "ImmediateData" ? ($0.0, "No") : $0
        }
        let d = try MachineDriver(keys: keys)
        try d.login()
        let (_, actions) = d.submit(SCSICommand(cdb: writeCDB(blocks: 8), dataOut: ByteBuffer(repeating: 3, count: 4096)))
        let pdus = MachineDriver.pdus(actions)
        #expect(pdus.count == 1)
        let command = try ISCSIPDU.SCSICommand(try #require(pdus.first))
        #expect(command.final && command.data.readableBytes == 0)
        let outs = MachineDriver.pdus(d.deliver(d.r2t(itt: command.initiatorTaskTag, ttt: 7, r2tSN: 0, offset: 0, length: 4096)))
        #expect(try outs.map(ISCSIPDU.DataOut.init).map(\.data.readableBytes) == [4096])
    }

    enum BadR2T: CaseIterable { case outOfSequence, beyondMaxBurstLength, outsideTheWrite, forARead }

    @Test(arguments: BadR2T.allCases)
    func badR2TDropsTheConnectionWithoutSendingData(_ bad: BadR2T) throws {
        let d = try MachineDriver()
        try d.login()
        let command = bad == .forARead
            ? SCSICommand(cdb: readCDB(blocks: 8), expectedDataInLength: 4096)
            : SCSICommand(cdb: writeCDB(blocks: 128), dataOut: ByteBuffer(repeating: 1, count: 65536))
        let (future, sent) = d.submit(command)
        let itt = try #require(MachineDriver.pdus(sent).first).header.initiatorTaskTag
        let (r2tSN, offset, length): (UInt32, Int, Int) =
            switch bad {
            case .outOfSequence: (1, 16384, 8192)
            case .beyondMaxBurstLength: (0, 16384, 32768 + 512)
            case .outsideTheWrite: (0, 61440, 8192)
            case .forARead: (0, 0, 4096)
            }
        let actions = d.deliver(d.r2t(itt: itt, ttt: 9, r2tSN: r2tSN, offset: offset, length: length))
        #expect(MachineDriver.pdus(actions).isEmpty)
        #expect(MachineDriver.closes(actions))
        guard case .protocolViolation? = failure(future) else {
            Issue.record("\(bad): expected a protocol violation, got \(String(describing: outcome(future)))")
            return
        }
    }

    // MARK: - Data-In (RFC 7143 §11.7, §11.4)

    @Test func dataInWithStatusCompletesTheCommand() throws {
        let d = try MachineDriver()
        try d.login()
        let (future, sent) = d.submit(SCSICommand(cdb: readCDB(blocks: 32), expectedDataInLength: 16384))
        let itt = try #require(MachineDriver.pdus(sent).first).header.initiatorTaskTag
        let first = ByteBuffer(repeating: 1, count: 8192)
        let second = ByteBuffer(repeating: 2, count: 8192)
        #expect(d.deliver(d.dataIn(itt: itt, dataSN: 0, offset: 0, data: first)).isEmpty)
        d.deliver(d.dataIn(itt: itt, dataSN: 1, offset: 8192, data: second, status: 0))
        let result = try #require(try outcome(future)?.get())
        var expected = first
        expected.writeImmutableBuffer(second)
        #expect(result.status == .good && result.dataIn == expected && result.senseData == nil)
        #expect(d.machine.outstandingTasks == 0)
    }

    @Test func dataInWithoutStatusThenSCSIResponseWithSenseAndResidual() throws {
        let d = try MachineDriver()
        try d.login()
        let (future, sent) = d.submit(SCSICommand(cdb: readCDB(blocks: 16), expectedDataInLength: 8192))
        let itt = try #require(MachineDriver.pdus(sent).first).header.initiatorTaskTag
        let data = ByteBuffer(repeating: 5, count: 4096)
        d.deliver(d.dataIn(itt: itt, dataSN: 0, offset: 0, data: data))
        guard case .scsiResponse(var response) = d.response(itt: itt, status: SCSIStatus.checkCondition.rawValue, sense: Self.sense) else {
            Issue.record("not a SCSI Response")
            return
        }
        response.residualUnderflow = true
        response.residualCount = 4096
        d.deliver(.scsiResponse(response))
        let result = try #require(try outcome(future)?.get())
        #expect(result.status == .checkCondition && result.dataIn == data && result.residual == 4096)
        #expect(result.senseData.map { Array($0.readableBytesView) } == Self.sense)
    }

    /// `segmentedDataIn` with the handler's zero-copy path: a Data-In whose data came as the slices of
    /// several reads keeps them, and the caller gets the very same bytes (no copy, no join).
    @Test func segmentedDataInKeepsEveryPieceWithoutCopying() throws {
        let d = try MachineDriver()
        try d.login()
        let (future, sent) = d.submit(SCSICommand(cdb: readCDB(blocks: 24), expectedDataInLength: 12288, segmentedDataIn: true))
        let itt = try #require(MachineDriver.pdus(sent).first).header.initiatorTaskTag
        let whole = ByteBuffer(repeating: 1, count: 4096)
        let read = ByteBuffer(bytes: (0..<8192).map { UInt8(truncatingIfNeeded: $0) })
        let pieces = [read.getSlice(at: 0, length: 3000)!, read.getSlice(at: 3000, length: 5192)!]
        d.deliver(d.dataIn(itt: itt, dataSN: 0, offset: 0, data: whole))
        d.deliver(d.dataIn(itt: itt, dataSN: 1, offset: 4096, data: ISCSIPDU.emptyData, status: 0), pieces: pieces)
        let result = try #require(try outcome(future)?.get())
        #expect(result.dataIn == nil)
        #expect(result.dataInSegments == [whole] + pieces)
        func base(_ b: ByteBuffer) -> UnsafeRawPointer? { b.withUnsafeReadableBytes { $0.baseAddress } }
        #expect(result.dataInSegments.dropFirst().map(base) == pieces.map(base), "pieces handed over without a copy")
    }

    enum BadDataIn: CaseIterable { case dataSNGap, wrongOffset, beyondTheTransfer, unknownITT }

    @Test(arguments: BadDataIn.allCases)
    func dataInOutOfSequenceDropsTheConnection(_ bad: BadDataIn) throws {
        let d = try MachineDriver()
        try d.login()
        let (future, sent) = d.submit(SCSICommand(cdb: readCDB(blocks: 8), expectedDataInLength: 4096))
        let itt = try #require(MachineDriver.pdus(sent).first).header.initiatorTaskTag
        let chunk = ByteBuffer(repeating: 1, count: 2048)
        let message: ISCSIMessage =
            switch bad {
            case .dataSNGap: d.dataIn(itt: itt, dataSN: 1, offset: 0, data: chunk)
            case .wrongOffset: d.dataIn(itt: itt, dataSN: 0, offset: 512, data: chunk)
            case .beyondTheTransfer: d.dataIn(itt: itt, dataSN: 0, offset: 0, data: ByteBuffer(repeating: 1, count: 4608))
            case .unknownITT: d.dataIn(itt: itt ^ 0x0001_0000, dataSN: 0, offset: 0, data: chunk)
            }
        #expect(MachineDriver.closes(d.deliver(message)))
        guard case .protocolViolation? = failure(future) else {
            Issue.record("\(bad): expected a protocol violation, got \(String(describing: outcome(future)))")
            return
        }
    }

    // MARK: - Command numbering (RFC 7143 §4.2.2.1, RFC 1982)

    @Test func commandWindowFollowsMaxCmdSNAcrossTheWrap() throws {
        let d = try MachineDriver(initialCmdSN: 0xFFFF_FFFE, window: 4)  // ExpCmdSN 0xfffffffe, MaxCmdSN 1
        try d.login()
        var futures: [EventLoopFuture<SCSICommandResult>] = []
        var commands: [ISCSIPDU.SCSICommand] = []
        for _ in 0..<6 {
            let (future, actions) = d.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
            futures.append(future)
            commands += try MachineDriver.pdus(actions).map(ISCSIPDU.SCSICommand.init)
        }
        #expect(commands.map(\.cmdSN.rawValue) == [0xFFFF_FFFE, 0xFFFF_FFFF, 0, 1], "four fit, two wait")
        // An older MaxCmdSN (a reordered PDU) does not open the window.
        d.expCmdSN = SerialNumber(0xFFFF_FFFF)
        d.maxCmdSN = SerialNumber(0)
        #expect(MachineDriver.pdus(d.deliverRead(d.response(itt: commands[0].initiatorTaskTag))).isEmpty)
        // MaxCmdSN < ExpCmdSN - 1: both ignored (§4.2.2.1), though MaxCmdSN alone would open the window.
        d.expCmdSN = SerialNumber(10)
        d.maxCmdSN = SerialNumber(5)
        #expect(MachineDriver.pdus(d.deliverRead(d.response(itt: commands[1].initiatorTaskTag))).isEmpty)
        // MaxCmdSN 2, then 3: one more each, numbered on across the wrap.
        d.expCmdSN = SerialNumber(2)
        d.maxCmdSN = SerialNumber(2)
        let third = try MachineDriver.pdus(d.deliverRead(d.response(itt: commands[2].initiatorTaskTag))).map(ISCSIPDU.SCSICommand.init)
        d.maxCmdSN = SerialNumber(3)
        let fourth = try MachineDriver.pdus(d.deliverRead(d.response(itt: commands[3].initiatorTaskTag))).map(ISCSIPDU.SCSICommand.init)
        #expect((third + fourth).map(\.cmdSN.rawValue) == [2, 3])
        #expect(futures.prefix(4).allSatisfy { outcome($0) != nil })
    }

    /// RFC 7143 §4.2.2.2, §11.7.3, §11.8.3, §11.19.2: R2T, an unsolicited NOP-In and Data-In without S
    /// carry "the next StatSN" without numbering a status; SCSI Response and Data-In with S acknowledge one.
    @Test func expStatSNAdvancesOnlyForPDUsThatNumberAStatus() throws {
        let d = try MachineDriver()
        try d.login()
        func nextExpStatSN() throws -> SerialNumber {
            // A target ping's answer carries ExpStatSN without using a CmdSN.
            var ping = ISCSIPDU.NOPIn()
            ping.targetTransferTag = 0x77
            d.stamp(&ping) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
            return try ISCSIPDU.NOPOut(try #require(MachineDriver.pdus(d.deliver(.nopIn(ping))).first)).expStatSN
        }
        let start = try nextExpStatSN()
        #expect(start == d.statSN)
        let (_, sentWrite) = d.submit(SCSICommand(cdb: writeCDB(blocks: 64), dataOut: ByteBuffer(repeating: 1, count: 32768)))
        let (_, sentRead) = d.submit(SCSICommand(cdb: readCDB(blocks: 8), expectedDataInLength: 4096))
        let write = try #require(MachineDriver.pdus(sentWrite).first).header.initiatorTaskTag
        let read = try #require(MachineDriver.pdus(sentRead).first).header.initiatorTaskTag
        d.deliver(d.r2t(itt: write, ttt: 1, r2tSN: 0, offset: 16384, length: 16384))
        guard case .dataIn(var partial) = d.dataIn(itt: read, dataSN: 0, offset: 0, data: ByteBuffer(repeating: 1, count: 2048)) else {
            return
        }
        partial.statSN = d.statSN + 3  // without S the field means nothing (§11.7.3)
        d.deliver(.dataIn(partial))
        #expect(try nextExpStatSN() == start, "R2T, Data-In without S and an unsolicited NOP-In acknowledge nothing")
        d.deliver(d.dataIn(itt: read, dataSN: 1, offset: 2048, data: ByteBuffer(repeating: 1, count: 2048), status: 0))
        d.deliver(d.response(itt: write))
        #expect(try nextExpStatSN() == start + 2)
    }

    // MARK: - NOP-Out / NOP-In (RFC 7143 §11.18, §11.19)

    @Test func targetPingIsEchoedWithItsTagLUNAndData() throws {
        let d = try MachineDriver()
        try d.login()
        var ping = ISCSIPDU.NOPIn()
        ping.targetTransferTag = 0xABCD
        ping.lun = 0x0001_0000_0000_0000
        ping.data = ByteBuffer(string: "are you there")
        d.stamp(&ping) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
        let answer = try ISCSIPDU.NOPOut(try #require(MachineDriver.pdus(d.deliver(.nopIn(ping))).first))
        #expect(answer.immediate && answer.initiatorTaskTag == reservedTaskTag && answer.targetTransferTag == 0xABCD)
        #expect(answer.lun == 0x0001_0000_0000_0000 && answer.data == ByteBuffer(string: "are you there"))
        #expect(answer.cmdSN == SerialNumber(1), "immediate: the next command still gets CmdSN 1")
    }

    @Test func idleConnectionIsPingedAndDroppedWhenThePingGoesUnanswered() throws {
        let d = try MachineDriver(noopOutInterval: .seconds(4))  // ticks every 2 s, timeout 5 s
        try d.login()
        #expect(MachineDriver.pdus(d.tick(.keepAlive, after: .seconds(2))).isEmpty)
        let pinging = d.tick(.keepAlive, after: .seconds(2))
        let ping = try ISCSIPDU.NOPOut(try #require(MachineDriver.pdus(pinging).first))
        #expect(ping.initiatorTaskTag == ConnectionStateMachine.pingITT && ping.targetTransferTag == reservedTaskTag && ping.immediate)
        #expect(pinging.contains { if case .flush = $0 { true } else { false } })
        #expect(MachineDriver.armed(pinging).map(\.0) == [.keepAlive])
        // Answered: settled; the next ping comes after another idle interval.
        var answer = ISCSIPDU.NOPIn()
        answer.initiatorTaskTag = ping.initiatorTaskTag
        d.stamp(&answer) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
        d.statSN += 1
        d.machine.receivedBytes(at: d.now)
        d.deliver(.nopIn(answer))
        #expect(!MachineDriver.closes(d.tick(.keepAlive, after: .seconds(2))))
        #expect(MachineDriver.pdus(d.tick(.keepAlive, after: .seconds(2))).count == 1)
        // Unanswered for longer than noop_out_timeout: dropped, no more ticks.
        #expect(!MachineDriver.closes(d.tick(.keepAlive, after: .seconds(4))))
        let dropping = d.tick(.keepAlive, after: .seconds(2))
        #expect(MachineDriver.closes(dropping) && MachineDriver.armed(dropping).isEmpty)
        #expect(d.machine.closeReason == .timeout("NOP-Out ping"))
    }

    // MARK: - Async Message and logout (RFC 7143 §11.9, §11.14, §11.15)

    @Test func logoutWaitsForOutstandingAndQueuedCommandsAndRefusesNewOnes() throws {
        let d = try MachineDriver(window: 1)
        try d.login()
        let (a, sentA) = d.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        let (b, sentB) = d.submit(SCSICommand(cdb: readCDB(blocks: 2), expectedDataInLength: 1024))
        #expect(MachineDriver.pdus(sentB).isEmpty, "the window holds one")
        let logout = d.loop.makePromise(of: Void.self)
        d.machine.beginLogout(promise: logout)
        #expect(MachineDriver.armed(d.take()).map(\.0) == [.logout])
        let second = d.loop.makePromise(of: Void.self)
        d.machine.beginLogout(promise: second)
        d.take()
        let (refused, _) = d.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        #expect(failure(refused) == .sessionClosed)
        // A's answer opens the window: B goes, still no Logout.
        d.maxCmdSN = SerialNumber(2)
        let itt = try #require(MachineDriver.pdus(sentA).first).header.initiatorTaskTag
        let afterA = MachineDriver.pdus(d.deliverRead(d.response(itt: itt)))
        #expect(afterA.map(\.opcode) == [.scsiCommand])
        // B's answer: the Logout follows the completion at once, not only at the end of the read.
        let afterB = MachineDriver.pdus(d.deliver(d.response(itt: try #require(afterA.first).header.initiatorTaskTag)))
        let request = try ISCSIPDU.LogoutRequest(try #require(afterB.first))
        #expect(request.reason == .closeSession && request.immediate && request.initiatorTaskTag == ConnectionStateMachine.logoutITT)
        #expect(outcome(a) != nil && outcome(b) != nil && !d.machine.isInFullFeaturePhase)
        let done = d.deliver(d.logoutResponse(itt: try #require(afterB.first).header.initiatorTaskTag))
        #expect(MachineDriver.closes(done))
        // Logged out: whatever still arrives before the channel is down is ignored (no answer to a ping).
        var ping = ISCSIPDU.NOPIn()
        ping.targetTransferTag = 0x99
        d.stamp(&ping) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
        #expect(d.deliver(.nopIn(ping)).isEmpty && d.machine.isClosed)
        guard case .success? = outcome(logout.futureResult), case .success? = outcome(second.futureResult) else {
            Issue.record("logout did not succeed for both callers")
            return
        }
    }

    @Test func targetRequestedLogoutDrainsThenLogsOutAndHoldsNewCommandsForTheNextConnection() throws {
        let d = try MachineDriver()
        try d.login()
        d.recordHandBacks()
        let (inFlight, sent) = d.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        let asked = d.deliver(d.asyncMessage(.logoutRequested))
        #expect(MachineDriver.pdus(asked).isEmpty, "a command is outstanding: no Logout yet")
        #expect(MachineDriver.armed(asked).map(\.0) == [.logout])
        let (held, heldActions) = d.submit(SCSICommand(cdb: readCDB(blocks: 2), expectedDataInLength: 1024))
        #expect(heldActions.isEmpty && outcome(held) == nil, "held, neither sent nor failed")
        let drained = MachineDriver.pdus(d.deliver(d.response(itt: try #require(MachineDriver.pdus(sent).first).header.initiatorTaskTag)))
        #expect(try outcome(inFlight)?.get().status == .good)
        let request = try #require(drained.first)
        #expect(drained.map(\.opcode) == [.logoutRequest])
        #expect(MachineDriver.closes(d.deliver(d.logoutResponse(itt: request.header.initiatorTaskTag))))
        d.machine.connectionClosed()
        d.take()
        #expect(d.handedBack.count == 1)
        #expect(d.handedBack.first?.error == .targetRequestedLogout)
        #expect(d.handedBack.first?.commands.map(\.command.expectedDataInLength) == [1024])
    }

    @Test func announcedDropHandsBackWithTheTargetsTime2Wait() throws {
        let d = try MachineDriver()
        try d.login()
        d.recordHandBacks()
        _ = d.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        #expect(d.deliver(d.asyncMessage(.connectionWillDrop, parameter2: 7)).isEmpty)
        d.machine.connectionClosed()
        d.take()
        #expect(d.handedBack.first?.time2Wait == .seconds(7))
        #expect(d.handedBack.first?.error == .connectionClosed)
        #expect(d.handedBack.first?.commands.count == 1)
    }

    // MARK: - Command timeouts (RFC 7143 §7.11, §11.5, §11.6)

    @Test func unansweredCommandClimbsTheLadderAbortResetThenConnection() throws {
        let d = try MachineDriver(commandTimeout: .seconds(5))  // ticks every 500 ms; TMF timeout 2 s
        try d.login()
        d.recordHandBacks()
        let (future, sent) = d.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        let command = try ISCSIPDU.SCSICommand(try #require(MachineDriver.pdus(sent).first))
        #expect(MachineDriver.pdus(d.tick(.commandTimeout, after: .seconds(5))).isEmpty, "not yet: more than the timeout")
        let aborting = d.tick(.commandTimeout, after: .milliseconds(500))
        let abort = try ISCSIPDU.TaskManagementRequest(try #require(MachineDriver.pdus(aborting).first))
        #expect(abort.function == .abortTask && abort.immediate && abort.lun == LogicalUnitNumber(1).encoded)
        #expect(abort.referencedTaskTag == command.initiatorTaskTag && abort.refCmdSN == command.cmdSN)
        #expect(MachineDriver.armed(aborting).map(\.0) == [.commandTimeout])
        #expect(MachineDriver.pdus(d.tick(.commandTimeout, after: .seconds(2))).isEmpty)
        let reset = try ISCSIPDU.TaskManagementRequest(try #require(MachineDriver.pdus(d.tick(.commandTimeout, after: .milliseconds(500))).first))
        #expect(reset.function == .logicalUnitReset && reset.lun == LogicalUnitNumber(1).encoded)
        let dropping = d.tick(.commandTimeout, after: .milliseconds(2500))
        #expect(MachineDriver.closes(dropping) && MachineDriver.armed(dropping).isEmpty)
        #expect(outcome(future) == nil, "the session re-issues it")
        #expect(d.handedBack.first?.commands.map(\.timeoutRecoveries) == [1])
    }

    @Test func completedAbortReissuesTheCommandAndItsCompletionRestartsTheLadder() throws {
        let d = try MachineDriver(commandTimeout: .seconds(5))
        try d.login()
        let (future, sent) = d.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        let first = try ISCSIPDU.SCSICommand(try #require(MachineDriver.pdus(sent).first))
        #expect(MachineDriver.pdus(d.tick(.commandTimeout, after: .seconds(6))).count == 1)
        let again = try ISCSIPDU.SCSICommand(try #require(MachineDriver.pdus(d.deliverRead(d.taskManagementResponse(0))).first))
        #expect(again.cdb == first.cdb && again.initiatorTaskTag != first.initiatorTaskTag && again.cmdSN == first.cmdSN + 1)
        d.deliver(d.dataIn(itt: again.initiatorTaskTag, dataSN: 0, offset: 0, data: ByteBuffer(repeating: 9, count: 512), status: 0))
        #expect(try outcome(future)?.get().dataIn == ByteBuffer(repeating: 9, count: 512))
        // The next timeout starts at ABORT TASK again.
        let (_, next) = d.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        #expect(MachineDriver.pdus(next).count == 1)
        let tmf = try ISCSIPDU.TaskManagementRequest(try #require(MachineDriver.pdus(d.tick(.commandTimeout, after: .seconds(6))).first))
        #expect(tmf.function == .abortTask)
    }

    // MARK: - Text (RFC 7143 §11.10, §11.11)

    /// The continuation of a Text Response is a non-immediate request; with the window closed it cannot
    /// go. That used to trip a precondition; it is the target's error, reported as one.
    @Test func textContinuationWithTheWindowClosedDropsTheConnection() throws {
        let d = try MachineDriver(window: 1)  // the Text Request takes the only CmdSN
        try d.login()
        let promise = d.loop.makePromise(of: ByteBuffer.self)
        d.machine.sendText(SendTargets.requestKeys("All"), promise: promise)
        let request = try ISCSIPDU.TextRequest(try #require(MachineDriver.pdus(d.take()).first))
        var response = ISCSIPDU.TextResponse()
        response.final = false
        response.continue = true
        response.initiatorTaskTag = request.initiatorTaskTag
        response.targetTransferTag = 5
        response.data = ByteBuffer(string: "TargetName=iqn.2026-11.test:fake")
        d.expCmdSN = request.cmdSN + 1
        d.maxCmdSN = request.cmdSN  // MaxCmdSN = ExpCmdSN - 1: still closed
        d.stamp(&response) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
        let actions = d.deliver(.textResponse(response))
        #expect(MachineDriver.pdus(actions).isEmpty && MachineDriver.closes(actions))
        guard case .protocolViolation? = failure(promise.futureResult) else {
            Issue.record("expected a protocol violation, got \(String(describing: outcome(promise.futureResult)))")
            return
        }
    }
}
