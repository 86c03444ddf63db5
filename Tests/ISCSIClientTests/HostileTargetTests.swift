@testable import ISCSIClient
import ISCSIProtocol
import NIOCore
import NIOEmbedded
import SCSI
import Testing

/// A misbehaving target on an EmbeddedChannel: every violation drops the connection with a reason, never
/// crashes, never completes a command with bytes outside its request, and (with a session above) hands
/// the command back for re-issue on a new connection.
struct HostileTargetTests {
    final class Sink {
        var calls: [(ISCSISessionError, [PendingCommand])] = []
        /// Handed-back promises must be completed (NIO checks for leaked promises).
        deinit { for call in calls { for command in call.1 { command.promise.fail(ISCSISessionError.sessionClosed) } } }
    }

    /// Logs in, installs a recovery sink, submits a 4 KiB read and returns its ITT.
    func readInFlight(_ h: FakeTargetHarness) throws -> (Sink, EventLoopFuture<SCSICommandResult>, UInt32) {
        _ = try h.login()
        let sink = Sink()
        h.handler.connectionLostSink = { error, commands, _ in sink.calls.append((error, commands)) }
        let f = h.submit(SCSICommand(cdb: readCDB(blocks: 8), expectedDataInLength: 4096))
        let command = try ISCSIPDU.SCSICommand(try #require(try h.sent().first))
        return (sink, f, command.initiatorTaskTag)
    }

    func expectDroppedAndHandedBack(_ h: FakeTargetHarness, _ sink: Sink, _ f: EventLoopFuture<SCSICommandResult>,
                                    _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(!h.channel.isActive, "\(what): connection still open", sourceLocation: sourceLocation)
        #expect(outcome(f) == nil, "\(what): command completed instead of being re-issued", sourceLocation: sourceLocation)
        #expect(sink.calls.count == 1, "\(what)", sourceLocation: sourceLocation)
        #expect(sink.calls.first?.1.count == 1, "\(what): command not handed back", sourceLocation: sourceLocation)
        if let error = sink.calls.first?.0 {
            switch error {
            case .protocolViolation, .malformedPDU, .rejected: break
            default: Issue.record("\(what): unexpected reason \(error)", sourceLocation: sourceLocation)
            }
        }
    }

    @Test func dataInForUnknownITT() throws {
        let h = try FakeTargetHarness()
        let (sink, f, itt) = try readInFlight(h)
        try h.deliver(h.dataIn(itt: itt ^ 0x0001_0000, dataSN: 0, offset: 0, data: ByteBuffer(repeating: 1, count: 512)))
        expectDroppedAndHandedBack(h, sink, f, "unknown ITT")
    }

    @Test func responseForUnknownITT() throws {
        let h = try FakeTargetHarness()
        let (sink, f, itt) = try readInFlight(h)
        try h.deliver(h.response(itt: itt &+ 7))
        expectDroppedAndHandedBack(h, sink, f, "response for unknown ITT")
    }

    @Test func dataSNGap() throws {
        let h = try FakeTargetHarness()
        let (sink, f, itt) = try readInFlight(h)
        try h.deliver(h.dataIn(itt: itt, dataSN: 1, offset: 0, data: ByteBuffer(repeating: 1, count: 512)))
        expectDroppedAndHandedBack(h, sink, f, "DataSN gap")
    }

    @Test func wrongBufferOffset() throws {
        let h = try FakeTargetHarness()
        let (sink, f, itt) = try readInFlight(h)
        try h.deliver(h.dataIn(itt: itt, dataSN: 0, offset: 512, data: ByteBuffer(repeating: 1, count: 512)))
        expectDroppedAndHandedBack(h, sink, f, "buffer offset")
    }

    @Test func moreDataThanTheTransfer() throws {
        let h = try FakeTargetHarness()
        let (sink, f, itt) = try readInFlight(h)
        try h.deliver(h.dataIn(itt: itt, dataSN: 0, offset: 0, data: ByteBuffer(repeating: 1, count: 4096)))
        try h.deliver(h.dataIn(itt: itt, dataSN: 1, offset: 4096, data: ByteBuffer(repeating: 2, count: 512), status: 0))
        expectDroppedAndHandedBack(h, sink, f, "data beyond the transfer")
    }

    @Test func r2tOutsideTheWrite() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let sink = Sink()
        h.handler.connectionLostSink = { error, commands, _ in sink.calls.append((error, commands)) }
        // Larger than FirstBurstLength so an R2T is expected; the target asks for bytes past the end.
        let f = h.submit(SCSICommand(cdb: writeCDB(blocks: 64), dataOut: ByteBuffer(repeating: 7, count: 32768)))
        let command = try ISCSIPDU.SCSICommand(try #require(try h.sent().first))
        var r2t = ISCSIPDU.ReadyToTransfer()
        r2t.initiatorTaskTag = command.initiatorTaskTag
        r2t.targetTransferTag = 0x1234
        r2t.bufferOffset = 16384
        r2t.desiredDataTransferLength = 32768
        h.stamp(&r2t) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
        try h.deliver(.readyToTransfer(r2t))
        #expect(try h.sent().allSatisfy { $0.header.opcode != .dataOut }, "no Data-Out for a range outside the write")
        expectDroppedAndHandedBack(h, sink, f, "R2T outside the write")
    }

    @Test func oversizedDataSegmentIsRefusedBeforeAllocating() throws {
        let h = try FakeTargetHarness()
        let (sink, f, _) = try readInFlight(h)
        // A Data-In header that claims a 16 MiB data segment (more than MaxRecvDataSegmentLength).
        var header = ByteBuffer()
        header.writeInteger(UInt8(0x25))
        header.writeRepeatingByte(0, count: 4)
        header.writeInteger(UInt8(0xFF))
        header.writeInteger(UInt16(0xFFFF))
        header.writeRepeatingByte(0, count: 40)
        try h.channel.writeInbound(header)
        h.channel.embeddedEventLoop.run()
        expectDroppedAndHandedBack(h, sink, f, "oversized data segment")
    }

    @Test func statSNJumpDoesNotCrashAndTheCommandCompletes() throws {
        let h = try FakeTargetHarness()
        let (_, f, itt) = try readInFlight(h)
        h.statSN += 100_000
        try h.deliver(h.dataIn(itt: itt, dataSN: 0, offset: 0, data: ByteBuffer(repeating: 3, count: 4096), status: 0))
        #expect(try outcome(f)?.get().dataIn?.readableBytes == 4096)
    }

    @Test func oversizedTextResponseIsRefused() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let promise = h.channel.eventLoop.makePromise(of: ByteBuffer.self)
        h.handler.sendText(SendTargets.requestKeys("All"), promise: promise)
        let request = try #require(try h.sent().first)
        var delivered = 0
        while h.channel.isActive && delivered < (TextLimits.default.maxTotalBytes / 8192 + 4) {
            var response = ISCSIPDU.TextResponse()
            response.final = false
            response.continue = true
            response.initiatorTaskTag = request.header.initiatorTaskTag
            response.targetTransferTag = 9
            response.data = ByteBuffer(repeating: UInt8(ascii: "a"), count: 8192)
            h.stamp(&response) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
            h.statSN += 1
            try h.deliver(.textResponse(response))
            _ = try h.sent()
            delivered += 1
        }
        #expect(!h.channel.isActive)
        #expect(outcome(promise.futureResult).map { if case .failure = $0 { true } else { false } } == true)
    }

    @Test func loginThatNeverEndsTimesOut() throws {
        let h = try FakeTargetHarness()
        let promise = h.channel.eventLoop.makePromise(of: LoginOutcome.self)
        h.handler.startLogin(try LoginStateMachine(configuration: h.handler.testConfiguration.loginConfiguration), promise: promise)
        _ = try h.sent()
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(16))
        guard case .failure(let error as ISCSISessionError)? = outcome(promise.futureResult), case .timeout = error else {
            Issue.record("expected a login timeout, got \(String(describing: outcome(promise.futureResult)))")
            return
        }
        #expect(!h.channel.isActive)
    }
}
