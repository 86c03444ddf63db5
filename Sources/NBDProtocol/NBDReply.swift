import NIOCore

/// The reply to one request, in the form the transmission machine chose (nbd-proto.md "Simple reply message",
/// "Structured reply chunk message"): simple replies unless structured replies were negotiated; then a READ
/// gets a structured reply (never a simple one) and errors get an error chunk with their message, while other
/// successes keep the simple reply, which is allowed for any request other than READ without a payload.
public enum NBDReply: Hashable, Sendable {
    /// Success without data.
    case simple(cookie: UInt64)
    /// An error as a simple reply (the message is for logs: a simple reply carries none).
    case simpleError(cookie: UInt64, NBDRequestRejection)
    /// A successful READ as a simple reply: the data follows the header.
    case simpleData(cookie: UInt64, data: [ByteBuffer])
    /// NBD_REPLY_TYPE_NONE with NBD_REPLY_FLAG_DONE: a successful READ of length 0.
    case structuredNone(cookie: UInt64)
    /// NBD_REPLY_TYPE_ERROR with NBD_REPLY_FLAG_DONE and the message.
    case structuredError(cookie: UInt64, NBDRequestRejection)
    /// A successful READ as one NBD_REPLY_TYPE_OFFSET_DATA chunk with NBD_REPLY_FLAG_DONE: the data is complete,
    /// no error can follow.
    case offsetData(cookie: UInt64, offset: UInt64, length: UInt32, data: [ByteBuffer])

    public var cookie: UInt64 {
        switch self {
        case .simple(let cookie), .simpleError(let cookie, _), .simpleData(let cookie, _), .structuredNone(let cookie),
            .structuredError(let cookie, _), .offsetData(let cookie, _, _, _):
            cookie
        }
    }

    /// The data pieces of a READ reply, sent after the header as they are (no copy); nil for replies that are
    /// written whole by `writeNBDReply`.
    public var data: [ByteBuffer]? {
        switch self {
        case .simpleData(_, let data), .offsetData(_, _, _, let data): data
        case .simple, .simpleError, .structuredNone, .structuredError: nil
        }
    }

    /// The error this reply reports, if any.
    public var rejection: NBDRequestRejection? {
        switch self {
        case .simpleError(_, let rejection), .structuredError(_, let rejection): rejection
        case .simple, .simpleData, .structuredNone, .offsetData: nil
        }
    }
}

// MARK: - Encoding (server side)

extension ByteBuffer {
    /// Writes `reply`, except the data of a READ reply (`reply.data`), which the caller sends next.
    @discardableResult
    public mutating func writeNBDReply(_ reply: NBDReply) -> Int {
        switch reply {
        case .simple(let cookie), .simpleData(let cookie, _):
            writeNBDSimpleReply(cookie: cookie)
        case .simpleError(let cookie, let rejection):
            writeNBDSimpleReply(cookie: cookie, error: rejection.code)
        case .structuredNone(let cookie):
            writeNBDStructuredNone(cookie: cookie)
        case .structuredError(let cookie, let rejection):
            writeNBDStructuredError(cookie: cookie, error: rejection.code, message: rejection.message)
        case .offsetData(let cookie, let offset, let length, _):
            writeNBDOffsetDataHeader(cookie: cookie, flags: .done, offset: offset, dataLength: length)
        }
    }

    /// Simple reply header (nbd-proto.md "Simple reply message"); for a successful READ the data follows.
    @discardableResult
    public mutating func writeNBDSimpleReply(cookie: UInt64, error: NBDErrorCode? = nil) -> Int {
        writeMultipleIntegers(NBDMagic.simpleReply, error?.rawValue ?? 0, cookie)
    }

    /// Structured reply chunk header (nbd-proto.md "Structured reply chunk message").
    @discardableResult
    public mutating func writeNBDStructuredReplyHeader(
        cookie: UInt64, type: NBDReplyType, flags: NBDReplyFlags, length: UInt32
    ) -> Int {
        writeMultipleIntegers(NBDMagic.structuredReply, flags.rawValue, type.rawValue, cookie, length)
    }

    /// NBD_REPLY_TYPE_NONE with NBD_REPLY_FLAG_DONE (the flag MUST always be set on this type).
    @discardableResult
    public mutating func writeNBDStructuredNone(cookie: UInt64) -> Int {
        writeNBDStructuredReplyHeader(cookie: cookie, type: .none, flags: .done, length: 0)
    }

    /// Header of an NBD_REPLY_TYPE_OFFSET_DATA chunk up to and including the offset field; the caller
    /// writes `dataLength` bytes of data next (kept as a separate buffer, not copied). nbd-proto.md: the
    /// chunk length is 8 + data length and MUST be at least 9.
    @discardableResult
    public mutating func writeNBDOffsetDataHeader(
        cookie: UInt64, flags: NBDReplyFlags, offset: UInt64, dataLength: UInt32
    ) -> Int {
        writeNBDStructuredReplyHeader(cookie: cookie, type: .offsetData, flags: flags, length: dataLength + 8)
            + writeInteger(offset)
    }

    /// NBD_REPLY_TYPE_ERROR (or ERROR_OFFSET when `offset` is given). The message is cut to the 4096-byte
    /// string limit (nbd-proto.md "Conventions"), at a UTF-8 character boundary.
    @discardableResult
    public mutating func writeNBDStructuredError(
        cookie: UInt64, error: NBDErrorCode, message: String, offset: UInt64? = nil, flags: NBDReplyFlags = .done
    ) -> Int {
        var utf8 = Substring(message).utf8
        if utf8.count > 4096 {
            var end = utf8.index(utf8.startIndex, offsetBy: 4096)
            while end > utf8.startIndex && (utf8[end] & 0xC0) == 0x80 { end = utf8.index(before: end) }
            utf8 = utf8[..<end]
        }
        let messageLength = utf8.count
        let type: NBDReplyType = offset == nil ? .error : .errorOffset
        let length = UInt32(6 + messageLength + (offset == nil ? 0 : 8))
        var n = writeNBDStructuredReplyHeader(cookie: cookie, type: type, flags: flags, length: length)
        n += writeInteger(error.rawValue) + writeInteger(UInt16(messageLength))
        n += writeBytes(utf8)
        if let offset { n += writeInteger(offset) }
        return n
    }
}

// MARK: - Decoding (client side: tests and tools)

/// One structured reply chunk as received.
public struct NBDStructuredReplyChunk: Hashable, Sendable {
    public var flags: NBDReplyFlags
    public var type: NBDReplyType
    public var cookie: UInt64
    public var payload: ByteBuffer
}

/// One reply message: a simple reply header (data, if any, follows and depends on the request) or a
/// structured chunk.
public enum NBDReplyMessage: Hashable, Sendable {
    case simple(cookie: UInt64, error: UInt32)
    case structured(NBDStructuredReplyChunk)
}

extension ByteBuffer {
    /// Reads a simple reply header or a whole structured chunk. `nil` = need more bytes (nothing consumed).
    public mutating func readNBDReplyMessage(maximumChunkLength: UInt32 = 64 << 20) throws(NBDProtocolError)
        -> NBDReplyMessage?
    {
        guard let magic = getInteger(at: readerIndex, as: UInt32.self) else { return nil }
        switch magic {
        case NBDMagic.simpleReply:
            guard readableBytes >= 16, let fields = readMultipleIntegers(as: (UInt32, UInt32, UInt64).self)
            else { return nil }
            return .simple(cookie: fields.2, error: fields.1)
        case NBDMagic.structuredReply:
            guard readableBytes >= 20,
                let length = getInteger(at: readerIndex + 16, as: UInt32.self)
            else { return nil }
            guard length <= maximumChunkLength else { throw NBDProtocolError(.optionTooLarge, "chunk length \(length)") }
            guard readableBytes >= 20 + Int(length),
                let fields = readMultipleIntegers(as: (UInt32, UInt16, UInt16, UInt64, UInt32).self),
                let payload = readSlice(length: Int(length))
            else { return nil }
            return .structured(
                NBDStructuredReplyChunk(
                    flags: NBDReplyFlags(rawValue: fields.1), type: NBDReplyType(rawValue: fields.2),
                    cookie: fields.3, payload: payload))
        default:
            throw NBDProtocolError(.badMagic, "reply magic 0x\(String(magic, radix: 16))")
        }
    }
}
