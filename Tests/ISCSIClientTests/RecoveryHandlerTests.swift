@testable import ISCSIClient
import ISCSIProtocol
import NIOCore
import NIOEmbedded
import SCSI
import Testing

/// The connection handler's part of recovery: on loss, unanswered commands go back to the session
/// (in order, with their payload) instead of failing; answered ones are not re-issued.
struct RecoveryHandlerTests {
    final class Sink {
        var calls: [(ISCSISessionError, [PendingCommand], TimeAmount?)] = []
        /// Handed-back promises must be completed (NIO checks for leaked promises).
        deinit { for call in calls { for command in call.1 { command.promise.fail(ISCSISessionError.sessionClosed) } } }
    }

    func install(_ h: FakeTargetHarness) -> Sink {
        let sink = Sink()
        h.handler.connectionLostSink = { error, commands, hint in sink.calls.append((error, commands, hint)) }
        return sink
    }

    @Test func unansweredCommandsGoBackInOrderAnsweredOnesDoNot() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let sink = install(h)
        let payload = ByteBuffer(repeating: 0xAB, count: 4096)
        let f1 = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        let f2 = h.submit(SCSICommand(cdb: writeCDB(blocks: 8), dataOut: payload))
        let f3 = h.submit(SCSICommand(cdb: readCDB(blocks: 2), expectedDataInLength: 1024))
        let sent = try h.sent().filter { $0.header.opcode == .scsiCommand }.map { try ISCSIPDU.SCSICommand($0) }
        #expect(sent.count == 3)
        // The target answers the second only, then the connection drops.
        try h.deliver(h.response(itt: sent[1].initiatorTaskTag))
        #expect(try outcome(f2)?.get().status == .good)
        h.channel.pipeline.fireChannelInactive()
        #expect(outcome(f1) == nil && outcome(f3) == nil, "nothing failed: the session re-issues")
        #expect(sink.calls.count == 1)
        let (error, commands, hint) = try #require(sink.calls.first)
        #expect(error == .connectionClosed)
        #expect(hint == nil)
        #expect(commands.map { $0.command.cdb.opcode } == [0x88, 0x88])
        #expect(commands.map { $0.command.expectedDataInLength } == [512, 1024])
        // Completing the handed-back promises completes the callers' futures.
        commands[0].promise.succeed(SCSICommandResult(status: .good))
        commands[1].promise.fail(ISCSISessionError.replacementTimeout(seconds: 1))
        sink.calls.removeAll()
        #expect(try outcome(f1)?.get().status == .good)
        #expect(outcome(f3).map { if case .failure = $0 { true } else { false } } == true)
    }

    @Test func writesKeepTheirPayloadForReissue() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let sink = install(h)
        let payload = ByteBuffer(bytes: (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 13) })
        _ = h.submit(SCSICommand(cdb: writeCDB(blocks: 128), dataOut: payload))
        _ = try h.sent()
        h.channel.pipeline.fireChannelInactive()
        let commands = try #require(sink.calls.first).1
        #expect(commands.count == 1)
        #expect(commands[0].command.dataOut == payload)
    }

    @Test func queuedCommandsBeyondTheWindowFollowTheSentOnes() throws {
        let h = try FakeTargetHarness(window: 2)
        _ = try h.login()
        let sink = install(h)
        for blocks in 1...4 { _ = h.submit(SCSICommand(cdb: readCDB(blocks: UInt32(blocks)), expectedDataInLength: UInt32(blocks) * 512)) }
        #expect(try h.sent().count == 2)
        h.channel.pipeline.fireChannelInactive()
        let commands = try #require(sink.calls.first).1
        #expect(commands.map { $0.command.expectedDataInLength } == [512, 1024, 1536, 2048])
    }

    @Test func asyncDropAnnouncementPassesTime2Wait() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let sink = install(h)
        var message = ISCSIPDU.AsyncMessage()
        message.event = .connectionWillDrop
        message.parameter2 = 7
        h.stamp(&message) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
        try h.deliver(.asyncMessage(message))
        h.channel.pipeline.fireChannelInactive()
        #expect(try #require(sink.calls.first).2 == .seconds(7))
    }

    @Test func targetRequestedLogoutHoldsNewCommandsForTheNextConnection() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let sink = install(h)
        var message = ISCSIPDU.AsyncMessage()
        message.event = .logoutRequested
        message.parameter3 = 5
        h.stamp(&message) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
        try h.deliver(.asyncMessage(message))
        let logout = try #require(try h.sent().first)
        #expect(logout.header.opcode == .logoutRequest)
        let held = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        #expect(try h.sent().isEmpty, "nothing goes out on a connection that is logging out")
        var response = ISCSIPDU.LogoutResponse()
        response.initiatorTaskTag = logout.header.initiatorTaskTag
        h.stamp(&response) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
        try h.deliver(.logoutResponse(response))
        h.channel.pipeline.fireChannelInactive()
        #expect(outcome(held) == nil)
        let call = try #require(sink.calls.first)
        #expect(call.0 == .targetRequestedLogout)
        #expect(call.1.count == 1)
    }

    @Test func withoutASessionCommandsFailAsBefore() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let f = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        _ = try h.sent()
        h.channel.pipeline.fireChannelInactive()
        #expect(outcome(f).map { if case .failure = $0 { true } else { false } } == true)
    }
}

/// Per-command timeouts: ABORT TASK, then LOGICAL UNIT RESET, then dropping the connection.
struct CommandTimeoutTests {
    @Test func timedOutCommandIsAbortedAndReissued() throws {
        let h = try FakeTargetHarness(commandTimeout: .seconds(5))
        _ = try h.login()
        let f = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        let first = try ISCSIPDU.SCSICommand(try #require(try h.sent().first))
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(4))
        #expect(try h.sent().isEmpty, "nothing before the timeout")
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        let abort = try ISCSIPDU.TaskManagementRequest(try #require(try h.sent().first))
        #expect(abort.function == .abortTask)
        #expect(abort.referencedTaskTag == first.initiatorTaskTag)
        #expect(abort.refCmdSN == first.cmdSN)
        #expect(abort.immediate)
        try h.deliver(h.taskManagementResponse(0))
        let again = try ISCSIPDU.SCSICommand(try #require(try h.sent().first))
        #expect(again.cdb.bytes == first.cdb.bytes)
        #expect(again.initiatorTaskTag != first.initiatorTaskTag)
        try h.deliver(h.dataIn(itt: again.initiatorTaskTag, dataSN: 0, offset: 0, data: ByteBuffer(repeating: 9, count: 512), status: 0))
        #expect(try outcome(f)?.get().dataIn == ByteBuffer(repeating: 9, count: 512))
    }

    @Test func unansweredAbortEscalatesToLUResetThenToTheConnection() throws {
        let h = try FakeTargetHarness(commandTimeout: .seconds(5))
        _ = try h.login()
        var calls: [[PendingCommand]] = []
        h.handler.connectionLostSink = { _, commands, _ in calls.append(commands) }
        defer { for c in calls.joined() { c.promise.fail(ISCSISessionError.sessionClosed) } }
        let f = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        _ = try h.sent()
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(6))
        #expect(try ISCSIPDU.TaskManagementRequest(try #require(try h.sent().first)).function == .abortTask)
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        let reset = try ISCSIPDU.TaskManagementRequest(try #require(try h.sent().first))
        #expect(reset.function == .logicalUnitReset)
        #expect(reset.lun == LogicalUnitNumber(1).encoded)
        #expect(h.channel.isActive)
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        #expect(!h.channel.isActive, "connection dropped after the LU reset timed out")
        #expect(outcome(f) == nil)
        #expect(calls.first?.count == 1, "the command goes to session recovery")
    }

    /// A command whose timeout already dropped `maxTimeoutRecoveries - 1` connections drops this one too,
    /// and then fails with a timeout instead of going back to the session; the others go back as usual.
    @Test func commandUnansweredThroughEveryRecoveryFailsInsteadOfCyclingForEver() throws {
        let h = try FakeTargetHarness(commandTimeout: .seconds(5))
        _ = try h.login()
        var calls: [[PendingCommand]] = []
        h.handler.connectionLostSink = { _, commands, _ in calls.append(commands) }
        defer { for c in calls.joined() { c.promise.fail(ISCSISessionError.sessionClosed) } }
        let promise = h.channel.eventLoop.makePromise(of: SCSICommandResult.self)
        var stuck = PendingCommand(
            command: SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512), lun: LogicalUnitNumber(1), promise: promise)
        stuck.timeoutRecoveries = 2  // as handed back by two earlier connections (default cap 3)
        h.handler.submit(stuck)
        let other = h.submit(SCSICommand(cdb: readCDB(blocks: 2), expectedDataInLength: 1024))
        #expect(try h.sent().count == 2)
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(6))  // ABORT TASK
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(3))  // LOGICAL UNIT RESET
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(3))  // the connection
        #expect(!h.channel.isActive)
        guard case .failure(let error)? = outcome(promise.futureResult) else {
            Issue.record("the stuck command did not fail")
            return
        }
        #expect("\(error)".contains("3 connection recoveries"))
        #expect(outcome(other) == nil)
        #expect(calls.first?.map(\.command.expectedDataInLength) == [1024], "only the other command goes to recovery")
        #expect(calls.first?.first?.timeoutRecoveries == 0)
    }

    @Test func refusedAbortEscalatesAtOnceAndResetReissuesTheLUsTasks() throws {
        let h = try FakeTargetHarness(commandTimeout: .seconds(5))
        _ = try h.login()
        let f1 = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        let f2 = h.submit(SCSICommand(cdb: readCDB(blocks: 2), expectedDataInLength: 1024))
        #expect(try h.sent().count == 2)
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(6))
        _ = try h.sent()
        try h.deliver(h.taskManagementResponse(5))  // TMF not supported
        let reset = try ISCSIPDU.TaskManagementRequest(try #require(try h.sent().first))
        #expect(reset.function == .logicalUnitReset)
        try h.deliver(h.taskManagementResponse(0))
        let reissued = try h.sent().map { try ISCSIPDU.SCSICommand($0) }
        #expect(reissued.map(\.expectedDataTransferLength) == [512, 1024])
        for command in reissued { try h.deliver(h.response(itt: command.initiatorTaskTag)) }
        #expect(try outcome(f1)?.get().status == .good)
        #expect(try outcome(f2)?.get().status == .good)
    }
}

struct QueueDepthHandlerTests {
    @Test func taskSetFullLowersCommandsInFlight() throws {
        let h = try FakeTargetHarness()  // queue depth 8
        _ = try h.login()
        var futures: [EventLoopFuture<SCSICommandResult>] = []
        for _ in 0..<8 { futures.append(h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))) }
        let first = try h.sent().map { try ISCSIPDU.SCSICommand($0) }
        #expect(first.count == 8)
        try h.deliver(h.response(itt: first[0].initiatorTaskTag, status: SCSIStatus.taskSetFull.rawValue))
        // Depth 4 now, 7 in flight: new commands wait until fewer than 4 are outstanding.
        for _ in 0..<4 { futures.append(h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))) }
        #expect(try h.sent().isEmpty)
        for command in first.dropFirst().prefix(4) { try h.deliver(h.response(itt: command.initiatorTaskTag)) }
        let more = try h.sent().map { try ISCSIPDU.SCSICommand($0).initiatorTaskTag }
        #expect(more.count == 1, "3 outstanding, depth 4: one more goes out")
        // Let every outstanding and queued command complete.
        var outstanding = first.dropFirst(5).map(\.initiatorTaskTag) + more
        for _ in 0..<50 {
            outstanding += try h.sent().map { try ISCSIPDU.SCSICommand($0).initiatorTaskTag }
            guard let next = outstanding.first else { break }
            outstanding.removeFirst()
            try h.deliver(h.response(itt: next))
        }
        let done = futures.filter { outcome($0) != nil }.count
        #expect(done == futures.count, "\(done) of \(futures.count) completed")
    }
}

/// Liveness: any PDU received counts as proof of life, also while a ping is outstanding.
struct LivenessTests {
    @Test func trafficAfterAnUnansweredPingKeepsTheConnection() throws {
        let h = try FakeTargetHarness(noopOutInterval: .seconds(5))
        _ = try h.login()
        let f = h.submit(SCSICommand(cdb: readCDB(blocks: 8), expectedDataInLength: 4096))
        let command = try ISCSIPDU.SCSICommand(try #require(try h.sent().first))
        // Nothing received for 6 s: a ping goes out.
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(6))
        #expect(try h.sent().first?.header.opcode == .nopOut)
        // The target never answers the ping but keeps sending data for the read.
        for i in 0..<7 {
            h.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
            let last = i == 6
            try h.deliver(h.dataIn(itt: command.initiatorTaskTag, dataSN: UInt32(i), offset: UInt32(i * 512),
                                   data: ByteBuffer(repeating: UInt8(i), count: last ? 1024 : 512), status: last ? 0 : nil))
        }
        #expect(h.channel.isActive, "a busy link is not declared dead for a late NOP-In")
        #expect(try outcome(f)?.get().dataIn?.readableBytes == 4096)
    }

    @Test func noPingWhileDataFlows() throws {
        let h = try FakeTargetHarness(noopOutInterval: .seconds(2))
        _ = try h.login()
        let f = h.submit(SCSICommand(cdb: readCDB(blocks: 16), expectedDataInLength: 8192))
        let command = try ISCSIPDU.SCSICommand(try #require(try h.sent().first))
        for i in 0..<16 {
            h.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
            try h.deliver(h.dataIn(itt: command.initiatorTaskTag, dataSN: UInt32(i), offset: UInt32(i * 512),
                                   data: ByteBuffer(repeating: 1, count: 512), status: i == 15 ? 0 : nil))
            #expect(try h.sent().isEmpty, "no NOP-Out at second \(i + 1)")
        }
        #expect(try outcome(f)?.get().status == .good)
    }
}
