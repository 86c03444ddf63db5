import NIOCore

// MARK: - Encoding (server side)

extension ByteBuffer {
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
