@testable import ISCSIClient
import ISCSIProtocol
import Logging
import NIOCore
import NIOEmbedded
import SCSI
import Testing

/// The connection handler against a scripted target on an EmbeddedChannel: no sockets, no timers.
final class FakeTargetHarness: ScriptedTarget {
    let channel = EmbeddedChannel()
    let handler: ISCSIConnectionHandler
    var statSN = SerialNumber(100)
    var expCmdSN = SerialNumber(1)
    var maxCmdSN: SerialNumber
    var targetKeys: [(String, String)]
    private var outboundBytes = ByteBuffer()
    var parser = PDUParser(maxDataSegmentLength: 1 << 24, direction: .initiatorToTarget)

    init(window: UInt32 = 64, targetKeys: [(String, String)] = FakeTargetHarness.defaultKeys,
         noopOutInterval: TimeAmount? = nil, commandTimeout: TimeAmount? = nil, digests: Bool = false) throws {
        var configuration = ISCSISessionConfiguration.scripted(noopOutInterval: noopOutInterval, commandTimeout: commandTimeout)
        var targetKeys = targetKeys
        if digests {
            configuration.proposal.headerDigests = [.crc32c, .none]
            configuration.proposal.dataDigests = [.crc32c, .none]
            targetKeys = targetKeys.map { $0.0.hasSuffix("Digest") ? ($0.0, "CRC32C") : $0 }
        }
        handler = ISCSIConnectionHandler(configuration: configuration, logger: Logger(label: "test.fake"))
        maxCmdSN = SerialNumber(window)
        self.targetKeys = targetKeys
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 3260)).wait()
    }

    static let defaultKeys: [(String, String)] = [
        ("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "8192"),
        ("InitialR2T", "No"), ("ImmediateData", "Yes"), ("MaxBurstLength", "32768"),
        ("FirstBurstLength", "16384"), ("MaxOutstandingR2T", "1"), ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"), ("ErrorRecoveryLevel", "0"), ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"), ("MaxConnections", "1"),
    ]

    /// PDUs the initiator wrote since the last call.
    func sent() throws -> [ISCSIPDU] {
        channel.embeddedEventLoop.run()
        while var chunk = try channel.readOutbound(as: ByteBuffer.self) { outboundBytes.writeBuffer(&chunk) }
        var result: [ISCSIPDU] = []
        while let pdu = try parser.parse(&outboundBytes) { result.append(pdu) }
        return result
    }

    func deliver(_ message: ISCSIMessage) throws {
        var wire = ByteBuffer()
        PDUEncoder(digests: parser.digests).encode(message.pdu, into: &wire)
        try channel.writeInbound(wire)
        channel.embeddedEventLoop.run()
    }

    /// Runs the login to the full feature phase.
    func login() throws -> EventLoopFuture<LoginOutcome> {
        let promise = channel.eventLoop.makePromise(of: LoginOutcome.self)
        handler.startLogin(
            try LoginStateMachine(configuration: handler.testConfiguration.loginConfiguration), promise: promise
        )
        for _ in 0..<8 {
            let requests = try sent()
            guard let pdu = requests.first else { break }
            try deliver(loginResponse(answering: try ISCSIPDU.LoginRequest(pdu)))
        }
        // Digests start with the first PDU after the Login Phase (RFC 7143 §13.1).
        let digests = Dictionary(targetKeys, uniquingKeysWith: { a, _ in a })
        parser.digests = DigestSettings(header: digests["HeaderDigest"] == "CRC32C", data: digests["DataDigest"] == "CRC32C")
        return promise.futureResult
    }

    func submit(_ command: SCSICommand, lun: UInt16 = 1) -> EventLoopFuture<SCSICommandResult> {
        let promise = channel.eventLoop.makePromise(of: SCSICommandResult.self)
        handler.submit(command, lun: LogicalUnitNumber(lun), promise: promise)
        return promise.futureResult
    }
}

func readCDB(blocks: UInt32) -> CDB { CDB([0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, UInt8(blocks >> 24), UInt8((blocks >> 16) & 0xFF), UInt8((blocks >> 8) & 0xFF), UInt8(blocks & 0xFF), 0, 0]) }
func writeCDB(blocks: UInt32) -> CDB { CDB([0x8A, 0, 0, 0, 0, 0, 0, 0, 0, 0, UInt8(blocks >> 24), UInt8((blocks >> 16) & 0xFF), UInt8((blocks >> 8) & 0xFF), UInt8(blocks & 0xFF), 0, 0]) }

func outcome<T>(_ future: EventLoopFuture<T>) -> Result<T, any Error>? {
    var result: Result<T, any Error>?
    future.whenComplete { result = $0 }
    return result
}

struct ConnectionHandlerTests {
    @Test func loginNegotiatesAndEntersFullFeature() throws {
        let h = try FakeTargetHarness()
        let login = try h.login()
        guard case .success(.loggedIn(let parameters, let tsih))? = outcome(login) else {
            Issue.record("login did not complete: \(String(describing: outcome(login)))")
            return
        }
        #expect(tsih == 0x22)
        #expect(parameters.targetMaxRecvDataSegmentLength == 8192)
        #expect(parameters.firstBurstLength == 16384)
        #expect(h.handler.parameters.immediateData)
    }

    @Test func splitDataInIsAssembledAndStatusOnLastPDU() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let future = h.submit(SCSICommand(cdb: readCDB(blocks: 32), expectedDataInLength: 16384))
        let sent = try h.sent()
        #expect(sent.count == 1)
        let command = try ISCSIPDU.SCSICommand(try #require(sent.first))
        #expect(command.read && !command.write && command.final)
        #expect(command.expectedDataTransferLength == 16384)
        #expect(command.cmdSN == SerialNumber(1))
        #expect(command.expStatSN == h.statSN)
        #expect(command.cdb.bytes[0] == 0x88)
        let first = ByteBuffer(repeating: 1, count: 8192)
        let second = ByteBuffer(repeating: 2, count: 8192)
        try h.deliver(h.dataIn(itt: command.initiatorTaskTag, dataSN: 0, offset: 0, data: first))
        #expect(outcome(future) == nil)
        try h.deliver(h.dataIn(itt: command.initiatorTaskTag, dataSN: 1, offset: 8192, data: second, status: 0))
        let result = try #require(try outcome(future)?.get())
        #expect(result.status == .good)
        var expected = first
        expected.writeImmutableBuffer(second)
        #expect(result.dataIn == expected)
        // The next command acknowledges the status.
        _ = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        let next = try ISCSIPDU.SCSICommand(try #require(try h.sent().first))
        #expect(next.expStatSN == h.statSN)
        #expect(next.cmdSN == SerialNumber(2))
    }

    /// `segmentedDataIn`: each Data-In PDU's data is handed over as it came (no joining copy), in order,
    /// with the status on the last PDU or in a separate SCSI Response.
    @Test(arguments: [true, false])
    func segmentedDataInKeepsEachPDUsSlice(statusInResponse: Bool) throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let future = h.submit(SCSICommand(cdb: readCDB(blocks: 48), expectedDataInLength: 24576, segmentedDataIn: true))
        let command = try ISCSIPDU.SCSICommand(try #require(try h.sent().first))
        let parts = (0..<3).map { ByteBuffer(repeating: UInt8($0 + 1), count: 8192) }
        for (i, part) in parts.enumerated() {
            let last = i == parts.count - 1 && !statusInResponse
            try h.deliver(h.dataIn(itt: command.initiatorTaskTag, dataSN: UInt32(i), offset: UInt32(i * 8192), data: part, status: last ? 0 : nil))
        }
        if statusInResponse { try h.deliver(h.response(itt: command.initiatorTaskTag)) }
        let result = try #require(try outcome(future)?.get())
        #expect(result.status == .good)
        #expect(result.dataIn == nil)
        #expect(result.dataInSegments == parts)
        #expect(result.dataInPieces == parts)
    }

    @Test func segmentedDataInWithOnePDUStaysInDataIn() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let future = h.submit(SCSICommand(cdb: readCDB(blocks: 8), expectedDataInLength: 4096, segmentedDataIn: true))
        let command = try ISCSIPDU.SCSICommand(try #require(try h.sent().first))
        let data = ByteBuffer(repeating: 7, count: 4096)
        try h.deliver(h.dataIn(itt: command.initiatorTaskTag, dataSN: 0, offset: 0, data: data, status: 0))
        let result = try #require(try outcome(future)?.get())
        #expect(result.dataIn == data)
        #expect(result.dataInSegments.isEmpty)
        #expect(result.dataInPieces == [data])
    }

    /// The receive path completes a PDU cut by a read from the front of the next read (the rest is parsed
    /// in place): cuts inside the BHS, right after it, inside payloads and trailers, and a 48 KiB Data-In
    /// spread over many reads must all frame correctly and deliver byte-exact data, with and without
    /// digests, assembled or as pieces.
    @Test(arguments: [1, 7, 47, 48, 49, 1000, 4145, 65536], [false, true])
    func pdusCutAcrossReadsAreFramedAndPayloadsIntact(chunk: Int, digests: Bool) throws {
        for segmented in [false, true] {
            let h = try FakeTargetHarness(digests: digests)
            _ = try h.login()
            #expect(h.parser.digests == DigestSettings(header: digests, data: digests))
            func pattern(_ count: Int, seed: Int) -> ByteBuffer {
                var b = ByteBuffer()
                for i in 0..<count { b.writeInteger(UInt8(truncatingIfNeeded: i &* 31 &+ seed)) }
                return b
            }
            let lengths = [4096, 49152, 12288, 1022]
            let futures = lengths.map {
                h.submit(SCSICommand(cdb: readCDB(blocks: UInt32(($0 + 511) / 512)), expectedDataInLength: UInt32($0),
                                     segmentedDataIn: segmented))
            }
            let itts = try h.sent().map { try ISCSIPDU.SCSICommand($0).initiatorTaskTag }
            try #require(itts.count == 4)
            let data = lengths.enumerated().map { pattern($0.element, seed: $0.offset + 1) }
            var messages: [ISCSIMessage] = []
            messages.append(h.dataIn(itt: itts[0], dataSN: 0, offset: 0, data: data[0], status: 0))
            messages.append(h.dataIn(itt: itts[1], dataSN: 0, offset: 0, data: data[1]))
            messages.append(h.response(itt: itts[1]))
            messages.append(h.dataIn(itt: itts[2], dataSN: 0, offset: 0, data: data[2].getSlice(at: 0, length: 8192)!))
            messages.append(h.dataIn(itt: itts[2], dataSN: 1, offset: 8192, data: data[2].getSlice(at: 8192, length: 4096)!, status: 0))
            messages.append(h.dataIn(itt: itts[3], dataSN: 0, offset: 0, data: data[3], status: 0))  // padded
            var wire = ByteBuffer()
            for message in messages { PDUEncoder(digests: h.parser.digests).encode(message.pdu, into: &wire) }
            while wire.readableBytes > 0 {
                let piece = wire.readSlice(length: min(chunk, wire.readableBytes))!
                try h.channel.writeInbound(piece)
                h.channel.embeddedEventLoop.run()
            }
            for (i, future) in futures.enumerated() {
                let result = try #require(try outcome(future)?.get(), "command \(i) did not complete")
                #expect(result.status == .good)
                var joined = ByteBuffer()
                for piece in result.dataInPieces { joined.writeImmutableBuffer(piece) }
                #expect(joined == data[i], "command \(i): data differs")
                if !segmented { #expect(result.dataIn == data[i] && result.dataInSegments.isEmpty) }
            }
            // A non-Data-In PDU with data (sense data on a SCSI Response) cut the same way is joined whole.
            let senseFuture = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
            let senseITT = try ISCSIPDU.SCSICommand(try #require(try h.sent().first)).initiatorTaskTag
            let sense: [UInt8] = [0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0, 0, 0, 0, 0]
            var senseWire = ByteBuffer()
            PDUEncoder(digests: h.parser.digests).encode(h.response(itt: senseITT, status: 0x02, sense: sense).pdu, into: &senseWire)
            while senseWire.readableBytes > 0 {
                try h.channel.writeInbound(senseWire.readSlice(length: min(chunk, senseWire.readableBytes))!)
                h.channel.embeddedEventLoop.run()
            }
            let senseResult = try #require(try outcome(senseFuture)?.get())
            #expect(senseResult.status == .checkCondition)
            #expect(senseResult.senseData.map { Array($0.readableBytesView) } == sense)
            if segmented && chunk < 49152 {
                // The 48 KiB Data-In came over several reads: kept as their slices, not copied into one buffer.
                let result = try #require(try outcome(futures[1])?.get())
                #expect(result.dataInPieces.count > 1)
            }
            #expect(h.channel.isActive)
        }
    }

    /// A header segment group longer than the BHS (an AHS, and the header digest) cut anywhere, the cut
    /// header gathered across reads: the PDU is framed by its whole header group and its data delivered.
    @Test(arguments: [1, 3, 47, 50, 53, 57, 61, 1000])
    func headerGroupWithAHSCutAcrossReads(chunk: Int) throws {
        let h = try FakeTargetHarness(digests: true)
        _ = try h.login()
        let future = h.submit(SCSICommand(cdb: readCDB(blocks: 6), expectedDataInLength: 3000, segmentedDataIn: true))
        let itt = try ISCSIPDU.SCSICommand(try #require(try h.sent().first)).initiatorTaskTag
        let data = ByteBuffer(bytes: (0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        var pdu = h.dataIn(itt: itt, dataSN: 0, offset: 0, data: data, status: 0).pdu
        pdu = ISCSIPDU(header: pdu.header, additionalHeaderSegments: ByteBuffer(bytes: [0, 8, 0xFF, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
                       data: pdu.data)
        var wire = ByteBuffer()
        PDUEncoder(digests: h.parser.digests).encode(pdu, into: &wire)
        #expect(wire.readableBytes == 48 + 12 + 4 + 3000 + 4)
        while wire.readableBytes > 0 {
            try h.channel.writeInbound(wire.readSlice(length: min(chunk, wire.readableBytes))!)
            h.channel.embeddedEventLoop.run()
        }
        let result = try #require(try outcome(future)?.get())
        var joined = ByteBuffer()
        for piece in result.dataInPieces { joined.writeImmutableBuffer(piece) }
        #expect(result.status == .good && joined == data)
        #expect(h.channel.isActive)
    }

    /// A data digest over a Data-In that spans reads is checked too: one flipped payload byte drops the
    /// connection and fails the command instead of handing over bad data.
    @Test(arguments: [1000, 4145])
    func dataDigestOverPiecesIsChecked(chunk: Int) throws {
        let h = try FakeTargetHarness(digests: true)
        _ = try h.login()
        let future = h.submit(SCSICommand(cdb: readCDB(blocks: 96), expectedDataInLength: 49152, segmentedDataIn: true))
        let itt = try ISCSIPDU.SCSICommand(try #require(try h.sent().first)).initiatorTaskTag
        var wire = ByteBuffer()
        let message = h.dataIn(itt: itt, dataSN: 0, offset: 0, data: ByteBuffer(repeating: 0x5A, count: 49152), status: 0)
        PDUEncoder(digests: h.parser.digests).encode(message.pdu, into: &wire)
        wire.setInteger(UInt8(0x5B), at: 48 + 4 + 30000)
        while wire.readableBytes > 0, h.channel.isActive {
            let piece = wire.readSlice(length: min(chunk, wire.readableBytes))!
            try h.channel.writeInbound(piece)
            h.channel.embeddedEventLoop.run()
        }
        #expect(!h.channel.isActive)
        #expect(throws: (any Error).self) { try outcome(future)?.get() }
    }

    @Test func writeUsesImmediateUnsolicitedAndR2TData() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let total = 16384 + 40000
        let payload = ByteBuffer(bytes: (0..<total).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        let future = h.submit(SCSICommand(cdb: writeCDB(blocks: UInt32(total / 512)), dataOut: payload))
        var pdus = try h.sent()
        let command = try ISCSIPDU.SCSICommand(pdus.removeFirst())
        // ImmediateData up to min(FirstBurstLength, target MRDSL) = 8192; F=0 as unsolicited Data-Out follows.
        #expect(command.write && !command.final && command.data.readableBytes == 8192)
        #expect(command.expectedDataTransferLength == UInt32(total))
        var received = command.data
        // Unsolicited Data-Out: 8192..<16384, TTT 0xffffffff, one PDU with F.
        #expect(pdus.count == 1)
        let unsolicited = try ISCSIPDU.DataOut(pdus[0])
        #expect(unsolicited.targetTransferTag == 0xFFFF_FFFF && unsolicited.final && unsolicited.bufferOffset == 8192)
        #expect(unsolicited.dataSN == SerialNumber(0))
        received.writeImmutableBuffer(unsolicited.data)

        // Two R2Ts of at most MaxBurstLength (32768) cover the rest.
        var offset = 16384
        var r2tSN: UInt32 = 0
        while offset < total {
            let length = min(32768, total - offset)
            var r2t = ISCSIPDU.ReadyToTransfer()
            r2t.initiatorTaskTag = command.initiatorTaskTag
            r2t.targetTransferTag = 0x500 + r2tSN
            r2t.r2tSN = SerialNumber(r2tSN)
            r2t.bufferOffset = UInt32(offset)
            r2t.desiredDataTransferLength = UInt32(length)
            r2t.statSN = h.statSN
            r2t.expCmdSN = h.expCmdSN
            r2t.maxCmdSN = h.maxCmdSN
            try h.deliver(.readyToTransfer(r2t))
            let outs = try h.sent().map { try ISCSIPDU.DataOut($0) }
            #expect(outs.count == (length + 8191) / 8192)
            for (i, out) in outs.enumerated() {
                #expect(out.targetTransferTag == 0x500 + r2tSN)
                #expect(out.dataSN == SerialNumber(UInt32(i)))
                #expect(out.final == (i == outs.count - 1))
                #expect(Int(out.bufferOffset) == received.readableBytes)
                #expect(out.data.readableBytes <= 8192)
                received.writeImmutableBuffer(out.data)
            }
            offset += length
            r2tSN += 1
        }
        #expect(received == payload)
        #expect(outcome(future) == nil)
        try h.deliver(h.response(itt: command.initiatorTaskTag))
        #expect(try outcome(future)?.get().status == .good)
    }

    @Test func closedWindowQueuesCommandsUntilMaxCmdSNGrows() throws {
        let h = try FakeTargetHarness(window: 1)  // ExpCmdSN 1, MaxCmdSN 1: one command may go
        _ = try h.login()
        let futures = (0..<3).map { _ in h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512)) }
        let first = try h.sent().map { try ISCSIPDU.SCSICommand($0) }
        #expect(first.count == 1)
        h.expCmdSN = SerialNumber(2)
        h.maxCmdSN = SerialNumber(3)
        try h.deliver(h.response(itt: first[0].initiatorTaskTag, status: 0x02, sense: [0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0, 0, 0, 0, 0]))
        let firstResult = try #require(try outcome(futures[0])?.get())
        #expect(firstResult.status == .checkCondition)
        #expect(firstResult.senseData?.readableBytes == 18)
        let rest = try h.sent().map { try ISCSIPDU.SCSICommand($0) }
        #expect(rest.map(\.cmdSN) == [SerialNumber(2), SerialNumber(3)])
    }

    @Test func queueDepthLimitsTasksInFlight() throws {
        let h = try FakeTargetHarness(window: 1000)
        _ = try h.login()
        _ = (0..<20).map { _ in h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512)) }
        let sent = try h.sent().map { try ISCSIPDU.SCSICommand($0) }
        #expect(sent.count == 8)  // queueDepth
        #expect(Set(sent.map(\.initiatorTaskTag)).count == 8)
        try h.deliver(h.response(itt: sent[3].initiatorTaskTag))
        #expect(try h.sent().count == 1)
    }

    @Test func targetPingIsAnswered() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        var ping = ISCSIPDU.NOPIn()
        ping.targetTransferTag = 0xABCD
        ping.lun = 0x0001_0000_0000_0000
        ping.statSN = h.statSN
        ping.expCmdSN = h.expCmdSN
        ping.maxCmdSN = h.maxCmdSN
        try h.deliver(.nopIn(ping))
        let answer = try ISCSIPDU.NOPOut(try #require(try h.sent().first))
        #expect(answer.targetTransferTag == 0xABCD)
        #expect(answer.initiatorTaskTag == 0xFFFF_FFFF)
        #expect(answer.immediate)
        #expect(answer.lun == 0x0001_0000_0000_0000)
    }

    @Test func outOfOrderDataSNDropsTheConnectionAndFailsTasks() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let a = h.submit(SCSICommand(cdb: readCDB(blocks: 16), expectedDataInLength: 8192))
        let b = h.submit(SCSICommand(cdb: readCDB(blocks: 16), expectedDataInLength: 8192))
        let sent = try h.sent().map { try ISCSIPDU.SCSICommand($0) }
        try h.deliver(h.dataIn(itt: sent[0].initiatorTaskTag, dataSN: 1, offset: 0, data: ByteBuffer(repeating: 0, count: 512)))
        for future in [a, b] {
            guard case .failure(ISCSISessionError.protocolViolation)? = outcome(future) else {
                Issue.record("expected a protocol violation, got \(String(describing: outcome(future)))")
                continue
            }
        }
        #expect(!h.channel.isActive)
    }

    @Test func malformedPDUDropsTheConnection() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let a = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        var garbage = ByteBuffer(repeating: 0, count: 48)
        garbage.setInteger(UInt8(0x3C), at: 0)  // vendor-specific opcode
        try? h.channel.writeInbound(garbage)
        guard case .failure(ISCSISessionError.malformedPDU)? = outcome(a) else {
            Issue.record("expected malformedPDU, got \(String(describing: outcome(a)))")
            return
        }
        #expect(!h.channel.isActive)
    }

    @Test func dataInBeyondExpectedLengthIsRejected() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let a = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        let cmd = try ISCSIPDU.SCSICommand(try #require(try h.sent().first))
        try h.deliver(h.dataIn(itt: cmd.initiatorTaskTag, dataSN: 0, offset: 0, data: ByteBuffer(repeating: 0, count: 1024), status: 0))
        guard case .failure(ISCSISessionError.protocolViolation)? = outcome(a) else {
            Issue.record("expected protocolViolation, got \(String(describing: outcome(a)))")
            return
        }
    }

    @Test func rejectedCommandFailsOnlyThatTask() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let a = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        let b = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        let sent = try h.sent()
        var reject = ISCSIPDU.Reject()
        reject.reason = .commandNotSupported
        reject.statSN = h.statSN
        h.statSN += 1
        reject.expCmdSN = h.expCmdSN
        reject.maxCmdSN = h.maxCmdSN
        var header = ByteBuffer()
        header.writeBasicHeaderSegment(sent[0].header)
        reject.data = header
        try h.deliver(.reject(reject))
        guard case .failure(ISCSISessionError.rejected)? = outcome(a) else {
            Issue.record("expected rejected, got \(String(describing: outcome(a)))")
            return
        }
        #expect(outcome(b) == nil)
        #expect(h.channel.isActive)
        try h.deliver(h.response(itt: sent[1].header.initiatorTaskTag))
        #expect(try outcome(b)?.get().status == .good)
    }

    @Test func logoutWaitsForOutstandingCommands() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        let a = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        let cmd = try h.sent()[0]
        let logout = h.channel.eventLoop.makePromise(of: Void.self)
        h.handler.beginLogout(promise: logout)
        #expect(try h.sent().isEmpty)
        // New commands are refused while logging out.
        guard case .failure(ISCSISessionError.sessionClosed)? = outcome(h.submit(SCSICommand(cdb: readCDB(blocks: 1)))) else {
            Issue.record("command accepted during logout")
            return
        }
        try h.deliver(h.response(itt: cmd.header.initiatorTaskTag))
        #expect(try outcome(a)?.get().status == .good)
        let request = try ISCSIPDU.LogoutRequest(try #require(try h.sent().first))
        #expect(request.reason == .closeSession)
        var response = ISCSIPDU.LogoutResponse()
        response.initiatorTaskTag = request.initiatorTaskTag
        response.statSN = h.statSN
        response.expCmdSN = h.expCmdSN
        response.maxCmdSN = h.maxCmdSN
        try h.deliver(.logoutResponse(response))
        guard case .success? = outcome(logout.futureResult) else {
            Issue.record("logout did not succeed")
            return
        }
    }

    @Test func asyncLogoutRequestLogsOut() throws {
        let h = try FakeTargetHarness()
        _ = try h.login()
        var message = ISCSIPDU.AsyncMessage()
        message.event = .logoutRequested
        message.statSN = h.statSN
        message.expCmdSN = h.expCmdSN
        message.maxCmdSN = h.maxCmdSN
        try h.deliver(.asyncMessage(message))
        let request = try ISCSIPDU.LogoutRequest(try #require(try h.sent().first))
        #expect(request.reason == .closeSession)
    }

    @Test func connectionLossFailsOutstandingAndQueuedCommands() throws {
        let h = try FakeTargetHarness(window: 1)
        _ = try h.login()
        let a = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))
        let b = h.submit(SCSICommand(cdb: readCDB(blocks: 1), expectedDataInLength: 512))  // queued: window closed
        _ = try h.sent()
        h.channel.pipeline.fireChannelInactive()
        for future in [a, b] {
            guard case .failure(ISCSISessionError.connectionClosed)? = outcome(future) else {
                Issue.record("expected connectionClosed, got \(String(describing: outcome(future)))")
                continue
            }
        }
    }

    @Test func loginTimesOut() throws {
        let h = try FakeTargetHarness()
        let promise = h.channel.eventLoop.makePromise(of: LoginOutcome.self)
        h.handler.startLogin(try LoginStateMachine(configuration: h.handler.testConfiguration.loginConfiguration), promise: promise)
        _ = try h.sent()  // the target never answers
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(14))
        #expect(outcome(promise.futureResult) == nil)
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        guard case .failure(ISCSISessionError.timeout)? = outcome(promise.futureResult) else {
            Issue.record("expected a login timeout, got \(String(describing: outcome(promise.futureResult)))")
            return
        }
    }

    @Test func idleConnectionIsPingedAndDroppedWhenThePingGoesUnanswered() throws {
        let h = try FakeTargetHarness(noopOutInterval: .seconds(5))
        _ = try h.login()
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(6))
        let ping = try ISCSIPDU.NOPOut(try #require(try h.sent().first))
        #expect(ping.initiatorTaskTag != 0xFFFF_FFFF)
        #expect(ping.targetTransferTag == 0xFFFF_FFFF)
        #expect(ping.immediate)
        // Answered: the connection stays up.
        var answer = ISCSIPDU.NOPIn()
        answer.initiatorTaskTag = ping.initiatorTaskTag
        answer.statSN = h.statSN
        h.statSN += 1
        answer.expCmdSN = h.expCmdSN
        answer.maxCmdSN = h.maxCmdSN
        try h.deliver(.nopIn(answer))
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(4))
        #expect(h.channel.isActive)
        // Next ping unanswered for longer than noopOutTimeout (5 s): dropped.
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        #expect(try h.sent().count == 1)
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(7))
        #expect(!h.channel.isActive)
    }
}
