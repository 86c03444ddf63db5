import NIOCore

// MARK: - Option request

/// One option sent by the client during option haggling (nbd-proto.md "Newstyle negotiation"):
/// `IHAVEOPT`, 32-bit option, 32-bit length, data.
public struct NBDOptionRequest: Hashable, Sendable {
    public var option: NBDOption
    /// The option data, a slice of the receive buffer.
    public var data: ByteBuffer

    public init(option: NBDOption, data: ByteBuffer) {
        self.option = option
        self.data = data
    }
}

/// Incremental decoder of option requests: `nil` means more bytes are needed (nothing is consumed),
/// a throw means the stream is malformed and the connection must be closed.
public struct NBDOptionDecoder: Sendable {
    /// Upper bound of option data we are willing to buffer. The largest legitimate option is
    /// SET/LIST_META_CONTEXT with a few queries of ≤ 4096-byte strings; anything above this bound is treated
    /// as a denial-of-service attempt and the session is hard-disconnected
    /// (nbd-proto.md "Termination of the session during option haggling").
    public var maximumDataLength: UInt32

    public init(maximumDataLength: UInt32 = 64 * 1024) {
        self.maximumDataLength = maximumDataLength
    }

    public mutating func decode(_ buffer: inout ByteBuffer) throws(NBDProtocolError) -> NBDOptionRequest? {
        guard buffer.readableBytes >= 16,
            let magic = buffer.getInteger(at: buffer.readerIndex, as: UInt64.self),
            let option = buffer.getInteger(at: buffer.readerIndex + 8, as: UInt32.self),
            let length = buffer.getInteger(at: buffer.readerIndex + 12, as: UInt32.self)
        else { return nil }
        guard magic == NBDMagic.option else {
            throw NBDProtocolError(.badMagic, "option magic 0x\(String(magic, radix: 16))")
        }
        // Bound checked before waiting for (and buffering) the data.
        guard length <= maximumDataLength else {
            throw NBDProtocolError(.optionTooLarge, "option \(NBDOption(rawValue: option)) data length \(length)")
        }
        guard buffer.readableBytes >= 16 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 16)
        guard let data = buffer.readSlice(length: Int(length)) else { return nil }  // checked above
        return NBDOptionRequest(option: NBDOption(rawValue: option), data: data)
    }
}

extension ByteBuffer {
    /// Writes an option request (client side; used by tests and tools).
    @discardableResult
    public mutating func writeNBDOptionRequest(_ request: NBDOptionRequest) -> Int {
        var data = request.data
        return writeInteger(NBDMagic.option) + writeInteger(request.option.rawValue)
            + writeInteger(UInt32(data.readableBytes)) + writeBuffer(&data)
    }
}

// MARK: - Option reply

/// One item of `NBD_REP_INFO` (nbd-proto.md "Option reply types").
public enum NBDInfo: Hashable, Sendable {
    /// NBD_INFO_EXPORT: size and transmission flags.
    case export(size: UInt64, flags: NBDTransmissionFlags)
    /// NBD_INFO_NAME: the canonical export name.
    case name(String)
    /// NBD_INFO_DESCRIPTION.
    case description(String)
    /// NBD_INFO_BLOCK_SIZE: minimum, preferred, maximum payload.
    case blockSize(minimum: UInt32, preferred: UInt32, maximum: UInt32)
    /// An information type we do not know (decoding only).
    case unknown(NBDInfoType, ByteBuffer)
}

/// One fixed-newstyle option reply (nbd-proto.md "Fixed newstyle negotiation").
public struct NBDOptionReply: Hashable, Sendable {
    public enum Payload: Hashable, Sendable {
        /// No data (NBD_REP_ACK, errors without message).
        case none
        /// NBD_REP_SERVER: export name and human-readable details.
        case server(name: String, details: String)
        /// NBD_REP_INFO.
        case info(NBDInfo)
        /// NBD_REP_META_CONTEXT.
        case metaContext(id: UInt32, name: String)
        /// Error replies: a message for the user.
        case message(String)
        /// Raw data of a reply type we do not interpret (decoding only).
        case raw(ByteBuffer)
    }

    public var option: NBDOption
    public var type: NBDOptionReplyType
    public var payload: Payload

    public init(option: NBDOption, type: NBDOptionReplyType, payload: Payload = .none) {
        self.option = option
        self.type = type
        self.payload = payload
    }

    public static func ack(_ option: NBDOption) -> Self { .init(option: option, type: .ack) }
    public static func error(_ option: NBDOption, _ type: NBDOptionReplyType, _ message: String) -> Self {
        .init(option: option, type: type, payload: .message(message))
    }
}

extension ByteBuffer {
    /// Writes the 16-byte server greeting (nbd-proto.md "Newstyle negotiation").
    @discardableResult
    public mutating func writeNBDGreeting(flags: NBDHandshakeFlags) -> Int {
        writeInteger(NBDMagic.initPassword) + writeInteger(NBDMagic.option) + writeInteger(flags.rawValue)
    }

    /// Writes the reply to NBD_OPT_EXPORT_NAME: size, flags and (unless NO_ZEROES) 124 zero bytes.
    @discardableResult
    public mutating func writeNBDExportNameReply(size: UInt64, flags: NBDTransmissionFlags, zeroes: Bool) -> Int {
        var n = writeInteger(size) + writeInteger(flags.rawValue)
        if zeroes { n += writeRepeatingByte(0, count: 124) }
        return n
    }

    @discardableResult
    public mutating func writeNBDOptionReply(_ reply: NBDOptionReply) -> Int {
        let start = writerIndex
        writeInteger(NBDMagic.optionReply)
        writeInteger(reply.option.rawValue)
        writeInteger(reply.type.rawValue)
        let lengthIndex = writerIndex
        writeInteger(UInt32(0))
        switch reply.payload {
        case .none:
            break
        case .server(let name, let details):
            writeInteger(UInt32(name.utf8.count))
            writeString(name)
            writeString(details)
        case .info(let info):
            switch info {
            case .export(let size, let flags):
                writeInteger(NBDInfoType.export.rawValue)
                writeInteger(size)
                writeInteger(flags.rawValue)
            case .name(let name):
                writeInteger(NBDInfoType.name.rawValue)
                writeString(name)
            case .description(let text):
                writeInteger(NBDInfoType.description.rawValue)
                writeString(text)
            case .blockSize(let minimum, let preferred, let maximum):
                writeInteger(NBDInfoType.blockSize.rawValue)
                writeInteger(minimum)
                writeInteger(preferred)
                writeInteger(maximum)
            case .unknown(let type, var data):
                writeInteger(type.rawValue)
                writeBuffer(&data)
            }
        case .metaContext(let id, let name):
            writeInteger(id)
            writeString(name)
        case .message(let text):
            writeString(text)
        case .raw(var data):
            writeBuffer(&data)
        }
        setInteger(UInt32(writerIndex - lengthIndex - 4), at: lengthIndex)
        return writerIndex - start
    }

    /// Reads one option reply (client side, for tests and tools). `nil` = need more bytes (nothing consumed).
    public mutating func readNBDOptionReply(maximumLength: UInt32 = 1 << 20) throws(NBDProtocolError) -> NBDOptionReply? {
        guard readableBytes >= 20,
            let magic = getInteger(at: readerIndex, as: UInt64.self),
            let option = getInteger(at: readerIndex + 8, as: UInt32.self),
            let type = getInteger(at: readerIndex + 12, as: UInt32.self),
            let length = getInteger(at: readerIndex + 16, as: UInt32.self)
        else { return nil }
        guard magic == NBDMagic.optionReply else { throw NBDProtocolError(.badMagic, "option reply magic") }
        guard length <= maximumLength else { throw NBDProtocolError(.optionTooLarge, "option reply length \(length)") }
        guard readableBytes >= 20 + Int(length) else { return nil }
        moveReaderIndex(forwardBy: 20)
        guard var data = readSlice(length: Int(length)) else { return nil }
        let replyType = NBDOptionReplyType(rawValue: type)
        let payload: NBDOptionReply.Payload
        switch replyType {
        case .ack where length == 0:
            payload = .none
        case .server:
            guard let nameLength = data.readInteger(as: UInt32.self), nameLength <= data.readableBytes,
                let name = data.readString(length: Int(nameLength)),
                let details = data.readString(length: data.readableBytes)
            else { throw NBDProtocolError(.truncated, "NBD_REP_SERVER") }
            payload = .server(name: name, details: details)
        case .info:
            guard let infoType = data.readInteger(as: UInt16.self) else { throw NBDProtocolError(.truncated, "NBD_REP_INFO") }
            switch NBDInfoType(rawValue: infoType) {
            case .export:
                guard length == 12, let size = data.readInteger(as: UInt64.self),
                    let flags = data.readInteger(as: UInt16.self)
                else { throw NBDProtocolError(.truncated, "NBD_INFO_EXPORT") }
                payload = .info(.export(size: size, flags: NBDTransmissionFlags(rawValue: flags)))
            case .name:
                payload = .info(.name(data.readString(length: data.readableBytes) ?? ""))
            case .description:
                payload = .info(.description(data.readString(length: data.readableBytes) ?? ""))
            case .blockSize:
                guard length == 14, let a = data.readInteger(as: UInt32.self),
                    let b = data.readInteger(as: UInt32.self), let c = data.readInteger(as: UInt32.self)
                else { throw NBDProtocolError(.truncated, "NBD_INFO_BLOCK_SIZE") }
                payload = .info(.blockSize(minimum: a, preferred: b, maximum: c))
            default:
                payload = .info(.unknown(NBDInfoType(rawValue: infoType), data))
            }
        case .metaContext:
            guard let id = data.readInteger(as: UInt32.self) else { throw NBDProtocolError(.truncated, "NBD_REP_META_CONTEXT") }
            payload = .metaContext(id: id, name: data.readString(length: data.readableBytes) ?? "")
        default:
            if replyType.isError {
                payload = length == 0 ? .none : .message(data.readString(length: data.readableBytes) ?? "")
            } else {
                payload = length == 0 ? .none : .raw(data)
            }
        }
        return NBDOptionReply(option: NBDOption(rawValue: option), type: replyType, payload: payload)
    }
}
