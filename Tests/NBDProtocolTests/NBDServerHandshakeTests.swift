import NBDProtocol
import NIOCore
import Testing

let testExport = NBDExport(
    name: "iqn.2026-11.test:disk/1", description: "test disk", size: 1 << 20,
    flags: [.hasFlags, .sendFlush, .sendFUA, .sendWriteZeroes, .canMultiConn],
    minimumBlockSize: 512, preferredBlockSize: 4096, maximumPayload: 1 << 20)

/// Helpers to build client input.
extension ByteBuffer {
    static func option(_ option: NBDOption, _ data: ByteBuffer = ByteBuffer()) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeNBDOptionRequest(NBDOptionRequest(option: option, data: data))
        return b
    }
    static func infoData(name: String, requests: [NBDInfoType] = []) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(UInt32(name.utf8.count))
        b.writeString(name)
        b.writeInteger(UInt16(requests.count))
        for r in requests { b.writeInteger(r.rawValue) }
        return b
    }
    static func metaData(name: String, queries: [String]) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(UInt32(name.utf8.count))
        b.writeString(name)
        b.writeInteger(UInt32(queries.count))
        for q in queries {
            b.writeInteger(UInt32(q.utf8.count))
            b.writeString(q)
        }
        return b
    }
}

/// A handshake that has received the client flags.
func haggling(_ flags: NBDClientFlags = [.fixedNewstyle, .noZeroes]) throws -> NBDServerHandshake {
    var h = NBDServerHandshake(export: testExport)
    var b = ByteBuffer()
    b.writeInteger(flags.rawValue)
    #expect(try h.receive(&b) == nil)
    return h
}

func replies(_ action: NBDHandshakeAction?) -> [NBDOptionReply] {
    let messages: [NBDHandshakeMessage]
    switch action {
    case .send(let m)?, .sendAndClose(let m)?, .sendAndStartTransmission(let m, _)?, .sendAndStartTLS(let m)?: messages = m
    case nil: messages = []
    }
    return messages.compactMap { if case .optionReply(let r) = $0 { r } else { nil } }
}

@Suite struct NBDServerHandshakeTests {
    @Test func offersFixedNewstyleAndNoZeroes() {
        #expect(NBDServerHandshake(export: testExport).handshakeFlags == [.fixedNewstyle, .noZeroes])
    }

    @Test(arguments: [UInt32(4), 0x8000_0000, 0xFFFF_FFFF])
    func unknownClientFlagsDisconnect(_ raw: UInt32) {
        var h = NBDServerHandshake(export: testExport)
        var b = ByteBuffer()
        b.writeInteger(raw)
        #expect(throws: NBDProtocolError(.badClientFlags, "")) { _ = try h.receive(&b) }
    }

    @Test func clientFlagsByteByByteThenNeedMore() throws {
        var h = NBDServerHandshake(export: testExport)
        var b = ByteBuffer()
        for byte: UInt8 in [0, 0, 0] {
            b.writeInteger(byte)
            #expect(try h.receive(&b) == nil)
        }
        b.writeInteger(UInt8(1))
        #expect(try h.receive(&b) == nil)
        #expect(b.readableBytes == 0)
    }

    @Test(arguments: ["", "iqn.2026-11.test:disk/1"])
    func exportNameEntersTransmission(_ name: String) throws {
        var h = try haggling([.fixedNewstyle])
        var b = ByteBuffer.option(.exportName, ByteBuffer(string: name))
        let action = try h.receive(&b)
        let flags: NBDTransmissionFlags = [.hasFlags, .sendFlush, .sendFUA, .sendWriteZeroes, .canMultiConn]
        #expect(action == .sendAndStartTransmission([.exportNameReply(size: 1 << 20, flags: flags, zeroes: true)],
                                                    NBDTransmissionParameters(export: testExport, structuredReplies: false)))
        #expect(h.isFinished)
    }

    @Test func exportNameWithNoZeroes() throws {
        var h = try haggling()
        var b = ByteBuffer.option(.exportName)
        guard case .sendAndStartTransmission(let m, _)? = try h.receive(&b) else { Issue.record("no transmission"); return }
        #expect(m == [.exportNameReply(size: 1 << 20, flags: [.hasFlags, .sendFlush, .sendFUA, .sendWriteZeroes, .canMultiConn], zeroes: false)])
    }

    @Test func unknownExportNameIsHardDisconnect() throws {
        var h = try haggling()
        var b = ByteBuffer.option(.exportName, ByteBuffer(string: "nope"))
        #expect(throws: NBDProtocolError(.exportNameRefused, "")) { _ = try h.receive(&b) }
    }

    @Test func goWithInfoRequests() throws {
        var h = try haggling()
        var b = ByteBuffer.option(.go, .infoData(name: "", requests: [.name, .description, .blockSize]))
        // Pipelined first request bytes stay in the buffer for the transmission phase.
        b.writeNBDRequestHeader(NBDRequestHeader(command: .read, cookie: 1, offset: 0, length: 512))
        let action = try h.receive(&b)
        guard case .sendAndStartTransmission(_, let parameters)? = action else { Issue.record("expected GO success"); return }
        #expect(parameters.structuredReplies == false)
        #expect(replies(action) == [
            .init(option: .go, type: .info, payload: .info(.export(size: 1 << 20, flags: [.hasFlags, .sendFlush, .sendFUA, .sendWriteZeroes, .canMultiConn]))),
            .init(option: .go, type: .info, payload: .info(.name("iqn.2026-11.test:disk/1"))),
            .init(option: .go, type: .info, payload: .info(.description("test disk"))),
            .init(option: .go, type: .info, payload: .info(.blockSize(minimum: 512, preferred: 4096, maximum: 1 << 20))),
            .ack(.go),
        ])
        #expect(b.readableBytes == 28)
        #expect(try h.receive(&b) == nil, "finished handshake consumes nothing")
    }

    @Test func infoKeepsHagglingAndSendsBlockSizeUnasked() throws {
        var h = try haggling()
        var b = ByteBuffer.option(.info, .infoData(name: "iqn.2026-11.test:disk/1"))
        let action = try h.receive(&b)
        guard case .send? = action else { Issue.record("INFO must not end haggling"); return }
        #expect(replies(action).map(\.type) == [.info, .info, .ack])
        #expect(!h.isFinished)
    }

    @Test func goUnknownExport() throws {
        var h = try haggling()
        var b = ByteBuffer.option(.go, .infoData(name: "other"))
        let r = replies(try h.receive(&b))
        #expect(r.map(\.type) == [.errUnknown])
        #expect(!h.isFinished)
    }

    @Test(arguments: [
        ByteBuffer(bytes: [0, 0, 0]),  // too short
        ByteBuffer(bytes: [0, 0, 0, 9, 0, 0]),  // name longer than data
        ByteBuffer(bytes: [0, 0, 0, 0, 0, 2, 0, 1]),  // 2 requests, 1 present
        ByteBuffer(bytes: [0, 0, 0, 0, 0, 0, 0]),  // trailing byte
    ])
    func malformedGo(_ data: ByteBuffer) throws {
        var h = try haggling()
        var b = ByteBuffer.option(.go, data)
        #expect(replies(try h.receive(&b)).map(\.type) == [.errInvalid])
        #expect(!h.isFinished)
    }

    @Test func structuredRepliesAddDF() throws {
        var h = try haggling()
        var b = ByteBuffer.option(.structuredReply)
        #expect(replies(try h.receive(&b)) == [.ack(.structuredReply)])
        b = .option(.go, .infoData(name: ""))
        guard case .sendAndStartTransmission(let m, let parameters)? = try h.receive(&b) else { Issue.record("no GO"); return }
        #expect(parameters.structuredReplies)
        #expect(parameters.transmissionFlags.contains(.sendDF))
        #expect(m.first == .optionReply(.init(option: .go, type: .info, payload: .info(.export(size: 1 << 20, flags: parameters.transmissionFlags)))))
    }

    @Test func structuredReplyWithDataIsInvalid() throws {
        var h = try haggling()
        var b = ByteBuffer.option(.structuredReply, ByteBuffer(bytes: [1]))
        #expect(replies(try h.receive(&b)).map(\.type) == [.errInvalid])
    }

    @Test func listShowsDescriptiveName() throws {
        var h = try haggling()
        var b = ByteBuffer.option(.list)
        #expect(replies(try h.receive(&b)) == [
            .init(option: .list, type: .server, payload: .server(name: "iqn.2026-11.test:disk/1", details: "test disk")), .ack(.list),
        ])
        b = .option(.list, ByteBuffer(bytes: [0]))
        #expect(replies(try h.receive(&b)).map(\.type) == [.errInvalid])
    }

    @Test func abortAcksThenCloses() throws {
        var h = try haggling()
        var b = ByteBuffer.option(.abort, ByteBuffer(bytes: [1, 2]))  // data is ignored
        #expect(try h.receive(&b) == .sendAndClose([.optionReply(.ack(.abort))]))
        #expect(h.isFinished)
    }

    @Test func startTLSIsRefusedByPolicy() throws {
        var h = try haggling()
        var b = ByteBuffer.option(.startTLS)
        #expect(replies(try h.receive(&b)).map(\.type) == [.errPolicy])
        b = .option(.startTLS, ByteBuffer(bytes: [0]))
        #expect(replies(try h.receive(&b)).map(\.type) == [.errInvalid])
    }

    @Test(arguments: [NBDOption(rawValue: 99), .peekExport, .extendedHeaders, NBDOption(rawValue: 0)])
    func unknownOptionsUnsupported(_ option: NBDOption) throws {
        var h = try haggling()
        var b = ByteBuffer.option(option, ByteBuffer(bytes: [1, 2, 3]))
        let r = replies(try h.receive(&b))
        #expect(r.map(\.type) == [.errUnsup])
        #expect(r.first?.option == option)
        #expect(!h.isFinished)
    }

    @Test(arguments: [NBDOption.setMetaContext, .listMetaContext])
    func metaContextNeedsStructuredReplies(_ option: NBDOption) throws {
        var h = try haggling()
        var b = ByteBuffer.option(option, .metaData(name: "", queries: ["base:allocation"]))
        #expect(replies(try h.receive(&b)).map(\.type) == [.errInvalid])
        b = .option(.structuredReply)
        _ = try h.receive(&b)
        b = .option(option, .metaData(name: "", queries: ["base:allocation"]))
        #expect(replies(try h.receive(&b)) == [.ack(option)], "no contexts offered")
        b = .option(option, .metaData(name: "other", queries: []))
        #expect(replies(try h.receive(&b)).map(\.type) == [.errUnknown])
        var bad = ByteBuffer.metaData(name: "", queries: ["base:allocation"])
        bad.moveWriterIndex(to: bad.writerIndex - 3)
        b = .option(option, bad)
        #expect(replies(try h.receive(&b)).map(\.type) == [.errInvalid])
    }

    @Test func optionLengthBoundIsHardDisconnect() throws {
        var h = try haggling()
        var b = ByteBuffer()
        b.writeInteger(NBDMagic.option)
        b.writeInteger(NBDOption.go.rawValue)
        b.writeInteger(UInt32(1 << 20))
        #expect(throws: NBDProtocolError(.optionTooLarge, "")) { _ = try h.receive(&b) }
    }

    @Test func badOptionMagicIsHardDisconnect() throws {
        var h = try haggling()
        var b = ByteBuffer.option(.list)
        b.setInteger(UInt8(0), at: 0)
        #expect(throws: NBDProtocolError(.badMagic, "")) { _ = try h.receive(&b) }
    }

    @Test func wholeTranscriptByteByByte() throws {
        var input = ByteBuffer()
        input.writeInteger(NBDClientFlags([.fixedNewstyle, .noZeroes]).rawValue)
        input.writeImmutableBuffer(.option(.structuredReply))
        input.writeImmutableBuffer(.option(.list))
        input.writeImmutableBuffer(.option(NBDOption(rawValue: 42)))
        input.writeImmutableBuffer(.option(.go, .infoData(name: "", requests: [.blockSize])))
        var h = NBDServerHandshake(export: testExport)
        let actions = try feedByteByByte(input) { try h.receive(&$0) }
        #expect(actions.count == 4)
        #expect(actions.flatMap { replies($0).map(\.type) } == [.ack, .server, .ack, .errUnsup, .info, .info, .ack])
        guard case .sendAndStartTransmission(_, let p)? = actions.last else { Issue.record("no GO"); return }
        #expect(p.structuredReplies)
    }

    @Test func exportNormalisesBlockSizes() {
        let e = NBDExport(name: "x", description: "", size: 1 << 20, flags: [], minimumBlockSize: 520, preferredBlockSize: 100, maximumPayload: 1000)
        #expect(e.minimumBlockSize == 1024)
        #expect(e.preferredBlockSize == 1024)
        #expect(e.maximumPayload == 1024)
        let f = NBDExport(name: "x", description: "", size: 1 << 20, flags: [], minimumBlockSize: 4096, preferredBlockSize: 4096, maximumPayload: 1_000_000)
        #expect(f.maximumPayload == 1_000_000 - 1_000_000 % 4096)
    }

    @Test func readOnlyDropsWriteFeaturesAndFastZeroNeedsZeroes() {
        let ro = NBDExport(name: "", description: "", size: 0, flags: [.readOnly, .sendTrim, .sendWriteZeroes, .sendFastZero, .sendFlush],
                           minimumBlockSize: 512, preferredBlockSize: 4096, maximumPayload: 1 << 20)
        #expect(NBDTransmissionParameters(export: ro, structuredReplies: false).transmissionFlags == [.hasFlags, .readOnly, .sendFlush])
        let fz = NBDExport(name: "", description: "", size: 0, flags: [.sendFastZero], minimumBlockSize: 512, preferredBlockSize: 4096, maximumPayload: 1 << 20)
        #expect(NBDTransmissionParameters(export: fz, structuredReplies: true).transmissionFlags == [.hasFlags, .sendDF])
    }
}
