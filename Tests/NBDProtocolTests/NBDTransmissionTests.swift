import NBDProtocol
import NIOCore
import Testing

/// The transmission machine driven directly: bytes in, actions out, no channel.
private struct Harness {
    var machine: NBDTransmission
    var input = ByteBuffer()

    /// A 1 MiB export with 512-byte blocks and a 64 KiB maximum payload.
    init(
        structured: Bool = false, flags: NBDTransmissionFlags = [.sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .sendFastZero],
        size: UInt64 = 1 << 20, maxInFlight: Int = 8, maxInFlightBytes: Int = 1 << 20
    ) {
        let export = NBDExport(
            name: "e", description: "", size: size, flags: flags, minimumBlockSize: 512, preferredBlockSize: 4096,
            maximumPayload: 64 * 1024)
        machine = NBDTransmission(
            parameters: NBDTransmissionParameters(export: export, structuredReplies: structured), maximumInFlight: maxInFlight,
            maximumInFlightBytes: maxInFlightBytes)
    }

    /// Appends a request; a WRITE gets `payload` bytes (its length by default) of 0xA5.
    mutating func send(_ header: NBDRequestHeader, payload: Int? = nil) {
        input.writeNBDRequestHeader(header)
        if header.command == .write { input.writeRepeatingByte(0xA5, count: payload ?? Int(header.length)) }
    }

    mutating func receive() throws -> NBDTransmission.OnReceive {
        try machine.receive(&input)
    }
}

private func request(
    _ command: NBDCommand, cookie: UInt64 = 1, offset: UInt64 = 0, length: UInt32 = 0, flags: NBDCommandFlags = []
) -> NBDRequestHeader {
    NBDRequestHeader(flags: flags, command: command, cookie: cookie, offset: offset, length: length)
}

/// The error a reply reports and whether it is a structured chunk; nil for success.
private func errorOf(_ action: NBDTransmission.OnReceive) -> (NBDErrorCode, structured: Bool)? {
    guard case .reply(let reply) = action else { return nil }
    switch reply {
    case .simpleError(_, let rejection): return (rejection.code, false)
    case .structuredError(_, let rejection): return (rejection.code, true)
    case .simple, .simpleData, .structuredNone, .offsetData: return nil
    }
}

private func replyOf(_ action: NBDTransmission.OnCompletion) -> NBDReply? {
    switch action {
    case .reply(let reply), .replyAndClose(let reply): reply
    case .ignored: nil
    }
}

// MARK: - Admission

@Suite struct NBDTransmissionAdmissionTests {
    /// Every case of the validator's table, as bytes through the machine: refusals become error replies (the
    /// structured form when negotiated) and the WRITE payloads are consumed either way.
    @Test(arguments: validationCases)
    func validationDecidesTheReply(_ c: ValidationCase) throws {
        var flags = c.exportFlags
        if c.readOnly { flags.insert(.readOnly) }
        var h = Harness(structured: c.structured, flags: flags)
        h.input.writeNBDRequestHeader(c.header)
        var action = try h.receive()
        // A WRITE payload follows in 1 MiB pieces (the 4 GiB one is discarded as it arrives, never buffered).
        var left = c.header.command == .write ? Int(c.header.length) : 0
        while left > 0 {
            switch action {
            case .noRequest, .payloadArriving: break
            case .execute, .reply, .drain: Issue.record("\(c.name): \(action) before the whole payload arrived")
            }
            h.input.discardReadBytes()
            let n = min(left, 1 << 20)
            h.input.writeRepeatingByte(0, count: n)
            left -= n
            action = try h.receive()
            #expect(h.input.readableBytes <= 64 * 1024 + n)
        }
        let error = errorOf(action)
        #expect(error?.0 == c.expected, "\(c.name): \(action)")
        if c.expected != nil { #expect(error?.structured == c.structured, "\(c.name)") }
        #expect(h.input.readableBytes == 0, "\(c.name): the whole request is consumed")
    }

    @Test func zeroLengthRequestsAreAnsweredWithoutTheDevice() throws {
        for structured in [false, true] {
            var h = Harness(structured: structured)
            h.send(request(.read, cookie: 1))
            h.send(request(.write, cookie: 2))
            h.send(request(.trim, cookie: 3))
            h.send(request(.writeZeroes, cookie: 4))
            h.send(request(.cache, cookie: 5, length: 512))
            #expect(try h.receive() == .reply(structured ? .structuredNone(cookie: 1) : .simple(cookie: 1)))
            for cookie in 2...5 { #expect(try h.receive() == .reply(.simple(cookie: UInt64(cookie)))) }
            #expect(h.machine.inFlight == 0)
        }
    }

    @Test func windowBoundsTheRequestsTaken() throws {
        var h = Harness(maxInFlight: 2)
        for cookie in 1...3 { h.send(request(.read, cookie: UInt64(cookie), length: 512)) }
        #expect(try h.receive() == .execute(.read(request(.read, cookie: 1, length: 512))))
        #expect(try h.receive() == .execute(.read(request(.read, cookie: 2, length: 512))))
        #expect(!h.machine.canTakeRequest)
        #expect(try h.receive() == .noRequest)
        #expect(h.input.readableBytes == NBDRequestHeader.size, "the third request stays buffered")
        let data = [ByteBuffer(repeating: 0, count: 512)]
        #expect(replyOf(h.machine.deviceCompleted(request(.read, cookie: 1, length: 512), .success(data: data))) != nil)
        #expect(try h.receive() == .execute(.read(request(.read, cookie: 3, length: 512))))
    }

    @Test func byteWindowCountsReadAndWriteLengthsOnly() throws {
        var h = Harness(maxInFlightBytes: 8192)
        h.send(request(.flush, cookie: 1))
        h.send(request(.read, cookie: 2, length: 4096))
        h.send(request(.write, cookie: 3, length: 4096))
        h.send(request(.flush, cookie: 4))
        for _ in 1...3 { guard case .execute = try h.receive() else { Issue.record("not executed"); return } }
        #expect(!h.machine.canTakeRequest, "8 KiB of READ and WRITE in flight")
        #expect(try h.receive() == .noRequest)
        _ = h.machine.deviceCompleted(request(.flush, cookie: 1), .success(data: []))
        #expect(!h.machine.canTakeRequest, "a FLUSH frees no bytes")
        _ = h.machine.deviceCompleted(request(.write, cookie: 3, length: 4096), .success(data: []))
        #expect(try h.receive() == .execute(.flush(request(.flush, cookie: 4))))
    }

    @Test func badMagicThrowsAndCloses() throws {
        var h = Harness()
        h.send(request(.read, length: 512))
        h.input.setInteger(UInt32(0x1256_0953), at: 0)
        #expect(throws: NBDProtocolError(.badMagic, "")) { _ = try h.receive() }
        #expect(!h.machine.canTakeRequest)
        h.send(request(.read, cookie: 2, length: 512))
        #expect(try h.receive() == .noRequest)
    }

    @Test func partialRequestIsMidMessage() throws {
        var h = Harness()
        #expect(!h.machine.isMidMessage(buffered: 0))
        h.input.writeBytes([0x25, 0x60])
        #expect(try h.receive() == .noRequest)
        #expect(h.machine.isMidMessage(buffered: h.input.readableBytes))
        #expect(h.machine.bytesNeeded(given: 2) == 26)
    }

    /// Online resize: the range grows, never shrinks.
    @Test func exportGrowsButNeverShrinks() throws {
        var h = Harness(size: 1 << 20)
        h.send(request(.read, cookie: 1, offset: 1 << 20, length: 512))
        #expect(errorOf(try h.receive())?.0 == .einval)
        h.machine.grow(to: 2 << 20)
        h.machine.grow(to: 1 << 20)
        h.send(request(.read, cookie: 2, offset: 1 << 20, length: 512))
        #expect(try h.receive() == .execute(.read(request(.read, cookie: 2, offset: 1 << 20, length: 512))))
    }
}

// MARK: - Write budget

@Suite struct NBDTransmissionBudgetTests {
    @Test func payloadThatFitsIsExecutedAsASlice() throws {
        var h = Harness()
        h.send(request(.write, cookie: 7, offset: 4096, length: 4096, flags: .fua))
        guard case .execute(.write(let header, let payload, let flags)) = try h.receive() else {
            Issue.record("not executed")
            return
        }
        #expect(header.cookie == 7 && flags == .fua)
        #expect(payload == ByteBuffer(repeating: 0xA5, count: 4096))
        #expect(h.machine.inFlight == 1)
        #expect(h.machine.deviceCompleted(header, .success(data: [])) == .reply(.simple(cookie: 7)))
        #expect(h.machine.inFlight == 0)
    }

    /// A payload the budget cannot hold while it arrives: dropped at once and discarded as the rest arrives,
    /// then ENOMEM; the next request is served.
    @Test(arguments: [false, true])
    func payloadRefusedWhileArrivingIsAnsweredENOMEM(structured: Bool) throws {
        var h = Harness(structured: structured)
        h.send(request(.write, cookie: 1, length: 4096), payload: 1000)
        #expect(try h.receive() == .payloadArriving(buffered: 1000, length: 4096))
        h.machine.refusePayload(in: &h.input)
        #expect(h.input.readableBytes == 0, "the buffered part is dropped")
        h.input.writeRepeatingByte(0xA5, count: 3000)
        #expect(try h.receive() == .noRequest)
        #expect(h.input.readableBytes == 0, "the rest is discarded as it arrives")
        h.input.writeRepeatingByte(0xA5, count: 96)
        h.send(request(.read, cookie: 2, length: 512))
        let refused = try h.receive()
        #expect(errorOf(refused)?.0 == .enomem)
        #expect(errorOf(refused)?.structured == structured)
        #expect(try h.receive() == .execute(.read(request(.read, cookie: 2, length: 512))))
    }

    @Test func completePayloadRefusedIsAnsweredENOMEM() throws {
        var h = Harness()
        h.send(request(.write, cookie: 3, length: 4096))
        guard case .execute(let write) = try h.receive() else { Issue.record("not executed"); return }
        guard case .reply(.simpleError(3, let rejection)) = h.machine.refuseWrite(write.header) else {
            Issue.record("no error reply")
            return
        }
        #expect(rejection.code == .enomem)
        #expect(h.machine.inFlight == 0)
        #expect(h.machine.canTakeRequest)
    }

    /// Longer than the maximum payload: discarded as it arrives (never reported as arriving), EINVAL.
    @Test func payloadOverTheMaximumIsDiscardedAndAnsweredEINVAL() throws {
        var h = Harness()
        h.send(request(.write, cookie: 4, length: 128 * 1024), payload: 64 * 1024)
        #expect(try h.receive() == .noRequest)
        #expect(h.input.readableBytes == 0)
        h.input.writeRepeatingByte(0xA5, count: 64 * 1024)
        #expect(errorOf(try h.receive())?.0 == .einval)
        h.send(request(.flush, cookie: 5))
        #expect(try h.receive() == .execute(.flush(request(.flush, cookie: 5))))
    }

    /// Validation comes first: a refused payload of a WRITE past the end is ENOSPC, not ENOMEM.
    @Test func validationErrorWinsOverTheBudget() throws {
        var h = Harness()
        h.send(request(.write, cookie: 6, offset: 1 << 20, length: 4096), payload: 100)
        #expect(try h.receive() == .payloadArriving(buffered: 100, length: 4096))
        h.machine.refusePayload(in: &h.input)
        h.input.writeRepeatingByte(0xA5, count: 3996)
        #expect(errorOf(try h.receive())?.0 == .enospc)
    }
}

// MARK: - Flags and errors

@Suite struct NBDTransmissionMappingTests {
    struct FlagRow: Sendable, CustomTestStringConvertible {
        var command: NBDCommand
        var flags: NBDCommandFlags
        var expected: NBDCommandFlags
        var testDescription: String { "\(command) 0x\(String(flags.rawValue, radix: 16))" }
    }

    static let flagRows: [FlagRow] = [
        .init(command: .write, flags: [], expected: []),
        .init(command: .write, flags: .fua, expected: .fua),
        .init(command: .trim, flags: .fua, expected: .fua),
        .init(command: .writeZeroes, flags: [.fua, .noHole, .fastZero], expected: [.fua, .noHole, .fastZero]),
        .init(command: .writeZeroes, flags: .noHole, expected: .noHole),
        .init(command: .writeZeroes, flags: .fastZero, expected: .fastZero),
        .init(command: .read, flags: [.fua, .dontFragment], expected: []),
        .init(command: .flush, flags: .fua, expected: []),
        .init(command: .cache, flags: .fua, expected: []),
    ]

    @Test(arguments: flagRows)
    func commandFlagsMapToDeviceFlags(_ row: FlagRow) {
        #expect(row.flags.deviceFlags(for: row.command) == row.expected)
    }

    /// The mapping as the machine applies it to requests.
    @Test func deviceRequestsCarryTheMappedFlags() throws {
        var h = Harness(structured: true)
        let zeroes = request(.writeZeroes, cookie: 1, length: 4096, flags: [.fua, .noHole, .fastZero])
        let trim = request(.trim, cookie: 2, length: 4096, flags: .fua)
        let read = request(.read, cookie: 3, length: 4096, flags: [.fua, .dontFragment])
        for header in [zeroes, trim, read] { h.send(header) }
        #expect(try h.receive() == .execute(.writeZeroes(zeroes, flags: [.fua, .noHole, .fastZero])))
        #expect(try h.receive() == .execute(.trim(trim, flags: .fua)))
        #expect(try h.receive() == .execute(.read(read)))
    }

    static let errnoRows: [(UInt32?, NBDErrorCode)] = [
        (1, .eperm), (5, .eio), (12, .enomem), (22, .einval), (28, .enospc), (75, .eoverflow), (95, .enotsup),
        (108, .eshutdown), (122, .enospc), (27, .enospc), (30, .eperm), (13, .eperm), (2, .eio), (11, .eio), (0, .eio),
        (0xFFFF_FFFF, .eio), (nil, .eio),
    ]

    /// Device errors reach the wire as NBD error values (nbd-proto.md "Error values"), message kept.
    @Test(arguments: errnoRows)
    func deviceErrnoMapsToNBDError(_ errno: UInt32?, _ expected: NBDErrorCode) throws {
        var h = Harness(structured: true)
        let flush = request(.flush, cookie: 9)
        h.send(flush)
        _ = try h.receive()
        let reply = h.machine.deviceCompleted(flush, .failure(errno: errno, message: "device said no"))
        #expect(reply == .reply(.structuredError(cookie: 9, NBDRequestRejection(expected, "device said no"))))
        #expect(replyOf(reply)?.rejection?.code == expected)
        #expect(replyOf(reply)?.rejection?.message == "device said no")
    }
}

// MARK: - Replies and ordering

@Suite struct NBDTransmissionReplyTests {
    @Test func readRepliesAreSimpleOrOneDoneChunk() throws {
        let pieces = [ByteBuffer(repeating: 1, count: 1024), ByteBuffer(repeating: 2, count: 3072)]
        let header = request(.read, cookie: 4, offset: 8192, length: 4096)
        for structured in [false, true] {
            var h = Harness(structured: structured)
            h.send(header)
            _ = try h.receive()
            let reply = replyOf(h.machine.deviceCompleted(header, .success(data: pieces)))
            let expected: NBDReply =
                structured ? .offsetData(cookie: 4, offset: 8192, length: 4096, data: pieces) : .simpleData(cookie: 4, data: pieces)
            #expect(reply == expected)
            #expect(reply?.data == pieces, "the device's pieces, as they are")
        }
    }

    @Test func readWithTheWrongByteCountIsEIO() throws {
        var h = Harness(structured: true)
        let header = request(.read, cookie: 5, length: 4096)
        h.send(header)
        _ = try h.receive()
        let reply = replyOf(h.machine.deviceCompleted(header, .success(data: [ByteBuffer(repeating: 0, count: 512)])))
        #expect(reply?.rejection?.code == .eio)
    }

    @Test func otherSuccessesAreSimpleEvenWhenStructured() throws {
        var h = Harness(structured: true)
        let flush = request(.flush, cookie: 6)
        h.send(flush)
        _ = try h.receive()
        #expect(h.machine.deviceCompleted(flush, .success(data: [])) == .reply(.simple(cookie: 6)))
    }

    /// Nothing is answered before the device finished; replies follow completion order, not request order.
    @Test func repliesFollowCompletionOrder() throws {
        var h = Harness()
        let headers = (1...3).map { request(.write, cookie: UInt64($0), offset: UInt64($0) * 4096, length: 4096) }
        for header in headers { h.send(header) }
        for _ in headers { guard case .execute = try h.receive() else { Issue.record("not executed"); return } }
        #expect(try h.receive() == .noRequest)
        let order = [2, 0, 1].map { replyOf(h.machine.deviceCompleted(headers[$0], .success(data: [])))?.cookie }
        #expect(order == [3, 1, 2])
    }

    /// The wire form of each reply (the data pieces of a READ follow the header separately).
    @Test func repliesEncodeAsTheirWireMessages() throws {
        let rejection = NBDRequestRejection(.einval, "bad")
        var wire = ByteBuffer()
        for reply: NBDReply in [
            .simple(cookie: 1), .simpleError(cookie: 2, rejection), .simpleData(cookie: 3, data: [ByteBuffer(bytes: [9])]),
            .structuredNone(cookie: 4), .structuredError(cookie: 5, rejection),
            .offsetData(cookie: 6, offset: 4096, length: 1, data: [ByteBuffer(bytes: [9])]),
        ] {
            wire.writeNBDReply(reply)
            if var data = reply.data?.first { wire.writeBuffer(&data) }
        }
        #expect(try wire.readNBDReplyMessage() == .simple(cookie: 1, error: 0))
        #expect(try wire.readNBDReplyMessage() == .simple(cookie: 2, error: 22))
        #expect(try wire.readNBDReplyMessage() == .simple(cookie: 3, error: 0))
        #expect(wire.readInteger(as: UInt8.self) == 9)
        let chunks = (0..<3).compactMap { _ -> NBDStructuredReplyChunk? in
            guard case .structured(let chunk) = try? wire.readNBDReplyMessage() else { return nil }
            return chunk
        }
        #expect(chunks.map(\.type) == [.none, .error, .offsetData])
        #expect(chunks.map(\.cookie) == [4, 5, 6])
        #expect(chunks.allSatisfy { $0.flags == .done })
        #expect(Array(chunks[1].payload.readableBytesView) == [0, 0, 0, 22, 0, 3] + Array("bad".utf8))
        #expect(Array(chunks[2].payload.readableBytesView) == [0, 0, 0, 0, 0, 0, 0x10, 0, 9])
        #expect(wire.readableBytes == 0)
    }
}

// MARK: - Drain

@Suite struct NBDTransmissionDrainTests {
    @Test func disconnectWithNothingInFlightClosesAtOnce() throws {
        var h = Harness()
        h.send(request(.disconnect, flags: .fua))
        h.send(request(.read, cookie: 2, length: 512))
        #expect(try h.receive() == .drain(.closeNow))
        #expect(try h.receive() == .noRequest)
        #expect(h.input.readableBytes == NBDRequestHeader.size, "nothing after NBD_CMD_DISC is taken")
        #expect(!h.machine.canTakeRequest)
    }

    /// NBD_CMD_DISC has no reply; the requests in flight are answered, the last one closes.
    @Test func disconnectWaitsForTheRequestsInFlight() throws {
        var h = Harness()
        let first = request(.flush, cookie: 1)
        let second = request(.write, cookie: 2, length: 512)
        h.send(first)
        h.send(second)
        h.send(request(.disconnect, cookie: 3))
        h.send(request(.read, cookie: 4, length: 512))
        _ = try h.receive()
        _ = try h.receive()
        #expect(try h.receive() == .drain(.awaitInFlight))
        #expect(!h.machine.isMidMessage(buffered: h.input.readableBytes), "what follows NBD_CMD_DISC is not waited for")
        #expect(try h.receive() == .noRequest)
        #expect(h.machine.deviceCompleted(second, .success(data: [])) == .reply(.simple(cookie: 2)))
        let last = h.machine.deviceCompleted(first, .failure(errno: 5, message: "x"))
        #expect(last == .replyAndClose(.simpleError(cookie: 1, NBDRequestRejection(.eio, "x"))))
        #expect(h.machine.refuseWrite(second) == .ignored, "closed: nothing more is sent")
    }

    @Test func shutdownDrainsLikeADisconnect() throws {
        var idle = Harness()
        #expect(idle.machine.startDrain() == .closeNow)
        #expect(idle.machine.startDrain() == .closeNow)

        var h = Harness()
        let read = request(.read, cookie: 1, length: 512)
        h.send(read)
        _ = try h.receive()
        #expect(h.machine.startDrain() == .awaitInFlight)
        #expect(h.machine.startDrain() == .awaitInFlight)
        #expect(h.machine.inFlight == 1)
        h.send(request(.flush, cookie: 2))
        #expect(try h.receive() == .noRequest)
        let done = h.machine.deviceCompleted(read, .success(data: [ByteBuffer(repeating: 0, count: 512)]))
        guard case .replyAndClose(.simpleData(1, _)) = done else { Issue.record("\(done)"); return }
        #expect(h.machine.inFlight == 0)
    }
}
