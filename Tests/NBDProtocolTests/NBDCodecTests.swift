import NBDProtocol
import NIOCore
import Testing

/// Feeds `bytes` to `decode` one byte at a time; returns every decoded value.
func feedByteByByte<T>(_ bytes: ByteBuffer, _ decode: (inout ByteBuffer) throws -> T?) rethrows -> [T] {
    var input = ByteBuffer()
    var out: [T] = []
    for byte in bytes.readableBytesView {
        input.writeInteger(byte)
        while let value = try decode(&input) { out.append(value) }
    }
    return out
}

@Suite struct OptionDecoderTests {
    @Test func roundTripByteByByte() throws {
        var wire = ByteBuffer()
        wire.writeNBDOptionRequest(NBDOptionRequest(option: .go, data: ByteBuffer(bytes: [0, 0, 0, 0, 0, 0])))
        wire.writeNBDOptionRequest(NBDOptionRequest(option: .list, data: ByteBuffer()))
        var decoder = NBDOptionDecoder()
        let decoded = try feedByteByByte(wire) { try decoder.decode(&$0) }
        #expect(decoded.map(\.option) == [.go, .list])
        #expect(decoded[0].data == ByteBuffer(bytes: [0, 0, 0, 0, 0, 0]))
        #expect(decoded[1].data.readableBytes == 0)
    }

    @Test func badMagicThrows() {
        var wire = ByteBuffer()
        wire.writeInteger(UInt64(0x1122_3344_5566_7788))
        wire.writeInteger(UInt32(7))
        wire.writeInteger(UInt32(0))
        var decoder = NBDOptionDecoder()
        #expect(throws: NBDProtocolError(.badMagic, "")) { _ = try decoder.decode(&wire) }
    }

    @Test func oversizedOptionThrowsBeforeDataArrives() {
        var wire = ByteBuffer()
        wire.writeInteger(NBDMagic.option)
        wire.writeInteger(NBDOption.go.rawValue)
        wire.writeInteger(UInt32(64 * 1024 + 1))
        var decoder = NBDOptionDecoder()
        #expect(throws: NBDProtocolError(.optionTooLarge, "")) { _ = try decoder.decode(&wire) }
    }

    @Test func incompleteConsumesNothing() throws {
        var wire = ByteBuffer()
        wire.writeNBDOptionRequest(NBDOptionRequest(option: .go, data: ByteBuffer(bytes: [1, 2, 3])))
        var partial = wire.getSlice(at: 0, length: wire.readableBytes - 1)!
        var decoder = NBDOptionDecoder()
        #expect(try decoder.decode(&partial) == nil)
        #expect(partial.readerIndex == 0)
    }
}

@Suite struct OptionReplyCodecTests {
    static let replies: [NBDOptionReply] = [
        .ack(.go),
        .init(option: .list, type: .server, payload: .server(name: "iqn.x:disk", details: "a disk")),
        .init(option: .go, type: .info, payload: .info(.export(size: 1 << 30, flags: [.hasFlags, .sendFlush]))),
        .init(option: .go, type: .info, payload: .info(.name("n"))),
        .init(option: .go, type: .info, payload: .info(.description("d"))),
        .init(option: .info, type: .info, payload: .info(.blockSize(minimum: 512, preferred: 4096, maximum: 1 << 25))),
        .init(option: .setMetaContext, type: .metaContext, payload: .metaContext(id: 7, name: "base:allocation")),
        .error(.startTLS, .errPolicy, "no TLS"),
    ]

    @Test(arguments: replies) func roundTrip(_ reply: NBDOptionReply) throws {
        var wire = ByteBuffer()
        wire.writeNBDOptionReply(reply)
        let decoded = try feedByteByByte(wire) { try $0.readNBDOptionReply() }
        #expect(decoded == [reply])
    }

    @Test func ackGoldenBytes() {
        var wire = ByteBuffer()
        wire.writeNBDOptionReply(.ack(.abort))
        #expect(Array(wire.readableBytesView) == [0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0])
    }

    @Test func greetingAndExportNameReply() {
        var wire = ByteBuffer()
        wire.writeNBDGreeting(flags: [.fixedNewstyle, .noZeroes])
        #expect(Array(wire.readableBytesView) == Array("NBDMAGICIHAVEOPT".utf8) + [0, 3])
        var reply = ByteBuffer()
        reply.writeNBDExportNameReply(size: 4096, flags: [.hasFlags], zeroes: true)
        #expect(reply.readableBytes == 8 + 2 + 124)
        reply.clear()
        reply.writeNBDExportNameReply(size: 4096, flags: [.hasFlags], zeroes: false)
        #expect(Array(reply.readableBytesView) == [0, 0, 0, 0, 0, 0, 0x10, 0, 0, 1])
    }
}

@Suite struct RequestDecoderTests {
    @Test func headerRoundTripByteByByte() throws {
        let headers = [
            NBDRequestHeader(flags: [.fua], command: .trim, cookie: 0xdead_beef_0000_0001, offset: 1 << 40, length: 4096),
            NBDRequestHeader(command: .read, cookie: 2, offset: 512, length: 1 << 20),
            NBDRequestHeader(command: .disconnect, cookie: 3, offset: 0, length: 0),
        ]
        var wire = ByteBuffer()
        for h in headers { wire.writeNBDRequestHeader(h) }
        var decoder = NBDRequestDecoder(maximumBufferedPayload: 1 << 20)
        let decoded = try feedByteByByte(wire) { try decoder.decode(&$0) }
        #expect(decoded.map(\.header) == headers)
        #expect(decoded.allSatisfy { $0.payload == nil && !$0.payloadDiscarded })
    }

    @Test func goldenRequestBytes() {
        var wire = ByteBuffer()
        wire.writeNBDRequestHeader(NBDRequestHeader(flags: [.fua], command: .write, cookie: 1, offset: 2, length: 3))
        #expect(Array(wire.readableBytesView) == [0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3])
    }

    @Test func writePayloadIsSliceAndByteExact() throws {
        var wire = ByteBuffer()
        let payload = (0..<1024).map { UInt8($0 & 0xff) }
        wire.writeNBDRequestHeader(NBDRequestHeader(command: .write, cookie: 9, offset: 0, length: 1024))
        wire.writeBytes(payload)
        wire.writeNBDRequestHeader(NBDRequestHeader(command: .flush, cookie: 10, offset: 0, length: 0))
        var decoder = NBDRequestDecoder(maximumBufferedPayload: 4096)
        let decoded = try feedByteByByte(wire) { try decoder.decode(&$0) }
        #expect(decoded.count == 2)
        #expect(decoded[0].payload.map { Array($0.readableBytesView) } == payload)
        #expect(decoded[1].header.command == .flush)
        // Whole-buffer decoding hands out a slice of the input (same storage, no copy).
        var whole = wire
        let base = whole.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress!) }
        let first = try decoder.decode(&whole)
        let slice = try #require(first?.payload)
        let payloadAddress = slice.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress!) }
        #expect(payloadAddress == base + 28)
    }

    @Test func oversizedWriteIsDiscardedWithoutBuffering() throws {
        var decoder = NBDRequestDecoder(maximumBufferedPayload: 1 << 20)
        var wire = ByteBuffer()
        wire.writeNBDRequestHeader(NBDRequestHeader(command: .write, cookie: 5, offset: 0, length: 8 << 20))
        #expect(try decoder.decode(&wire) == nil)
        let chunk = ByteBuffer(repeating: 0xAB, count: 1 << 20)
        for i in 0..<8 {
            var input = chunk
            let result = try decoder.decode(&input)
            #expect(input.readableBytes == 0, "discarded bytes are consumed at once")
            if i < 7 { #expect(result == nil) } else {
                #expect(result?.payloadDiscarded == true)
                #expect(result?.payload == nil)
                #expect(result?.header.cookie == 5)
            }
        }
        #expect(decoder.isIdle)
    }

    @Test func hugeWriteHeaderNeedsNoAllocation() throws {
        var decoder = NBDRequestDecoder(maximumBufferedPayload: 32 << 20)
        var wire = ByteBuffer()
        wire.writeNBDRequestHeader(NBDRequestHeader(command: .write, cookie: 5, offset: 0, length: UInt32.max))
        #expect(try decoder.decode(&wire) == nil)
        #expect(!decoder.isIdle)
        #expect(decoder.bytesNeeded(given: 0) == 0, "discarding: no buffer sizing hint")
    }

    @Test func badMagicThrows() {
        var wire = ByteBuffer()
        wire.writeNBDRequestHeader(NBDRequestHeader(command: .read, cookie: 1, offset: 0, length: 512))
        wire.setInteger(UInt32(0x1256_0953), at: 0)
        var decoder = NBDRequestDecoder(maximumBufferedPayload: 4096)
        #expect(throws: NBDProtocolError(.badMagic, "")) { _ = try decoder.decode(&wire) }
    }
}

@Suite struct ReplyCodecTests {
    @Test func simpleReply() throws {
        var wire = ByteBuffer()
        wire.writeNBDSimpleReply(cookie: 77, error: .eperm)
        #expect(Array(wire.readableBytesView) == [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 77])
        #expect(try wire.readNBDReplyMessage() == .simple(cookie: 77, error: 1))
    }

    @Test func structuredChunksByteByByte() throws {
        var wire = ByteBuffer()
        wire.writeNBDOffsetDataHeader(cookie: 1, flags: .done, offset: 4096, dataLength: 4)
        wire.writeBytes([1, 2, 3, 4])
        wire.writeNBDStructuredNone(cookie: 2)
        wire.writeNBDStructuredError(cookie: 3, error: .einval, message: "bad")
        wire.writeNBDStructuredError(cookie: 4, error: .eio, message: "", offset: 8192, flags: [])
        let messages = try feedByteByByte(wire) { try $0.readNBDReplyMessage() }
        #expect(messages.count == 4)
        guard case .structured(let data) = messages[0], case .structured(let none) = messages[1],
            case .structured(let error) = messages[2], case .structured(let errorOffset) = messages[3]
        else { Issue.record("expected structured chunks"); return }
        #expect(data.type == .offsetData && data.flags == .done && data.cookie == 1)
        #expect(Array(data.payload.readableBytesView) == [0, 0, 0, 0, 0, 0, 0x10, 0, 1, 2, 3, 4])
        #expect(none.type == .none && none.flags == .done && none.payload.readableBytes == 0)
        #expect(error.type == .error && Array(error.payload.readableBytesView) == [0, 0, 0, 22, 0, 3] + Array("bad".utf8))
        #expect(errorOffset.type == .errorOffset && errorOffset.flags == [])
        #expect(Array(errorOffset.payload.readableBytesView) == [0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0])
    }

    @Test func longErrorMessageIsCutAtCharacterBoundary() throws {
        var wire = ByteBuffer()
        wire.writeNBDStructuredError(cookie: 1, error: .eio, message: String(repeating: "é", count: 3000))
        guard case .structured(var chunk) = try wire.readNBDReplyMessage() else { Issue.record("no chunk"); return }
        _ = chunk.payload.readInteger(as: UInt32.self)
        let read = chunk.payload.readInteger(as: UInt16.self)
        let length = try #require(read)
        #expect(length == 4096)
        #expect(chunk.payload.readString(length: Int(length)) == String(repeating: "é", count: 2048))
    }

    @Test func badReplyMagicThrows() {
        var wire = ByteBuffer(bytes: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])
        #expect(throws: NBDProtocolError(.badMagic, "")) { _ = try wire.readNBDReplyMessage() }
    }
}

@Suite struct ErrorCodeTests {
    @Test(arguments: [(UInt32(1), NBDErrorCode.eperm), (5, .eio), (22, .einval), (28, .enospc), (122, .enospc), (27, .enospc),
                      (30, .eperm), (95, .enotsup), (108, .eshutdown), (75, .eoverflow), (4, .eio), (0xFFFF, .eio)])
    func errnoMapping(_ errno: UInt32, _ expected: NBDErrorCode) {
        #expect(NBDErrorCode(errno: errno) == expected)
    }
}
