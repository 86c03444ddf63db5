import NIOCore

/// The 12-byte iSNSP PDU header (RFC 4171 §5.1).
public struct ISNSPDUHeader: Hashable, Sendable {
    public static let size = 12
    /// §5.1.1: "The iSNSP version described in this document is 0x0001."
    public static let version: UInt16 = 1

    public var version: UInt16 = ISNSPDUHeader.version
    public var functionID: ISNSFunctionID
    /// §5.1.3: length of the payload in bytes, 4-byte aligned.
    public var length: UInt16
    public var flags: ISNSFlags
    public var transactionID: UInt16
    public var sequenceID: UInt16

    public init(functionID: ISNSFunctionID, length: UInt16, flags: ISNSFlags, transactionID: UInt16, sequenceID: UInt16) {
        self.functionID = functionID
        self.length = length
        self.flags = flags
        self.transactionID = transactionID
        self.sequenceID = sequenceID
    }
}

/// A complete iSNSP message: header fields shared by all its PDUs and the reassembled payload.
public struct ISNSMessage: Hashable, Sendable {
    public var functionID: ISNSFunctionID
    /// Flags without the first/last PDU bits (those are per PDU).
    public var flags: ISNSFlags
    public var transactionID: UInt16
    public var payload: ByteBuffer

    public init(functionID: ISNSFunctionID, flags: ISNSFlags, transactionID: UInt16, payload: ByteBuffer) {
        self.functionID = functionID
        self.flags = flags
        self.transactionID = transactionID
        self.payload = payload
    }

    /// Largest payload one PDU carries when we send (the 16-bit length field, rounded down to 4).
    public static let maximumPDUPayload = 0xFFFC

    /// Writes the message as one or more PDUs (§5.2): first PDU has the First flag, last the Last
    /// flag, SEQUENCE_ID counts from 0.
    public func write(to buffer: inout ByteBuffer) {
        precondition(payload.readableBytes % 4 == 0, "iSNS payloads are built from 4-byte aligned TLVs")
        var remaining = payload
        var sequence: UInt16 = 0
        repeat {
            let chunk = remaining.readSlice(length: min(remaining.readableBytes, Self.maximumPDUPayload)) ?? ByteBuffer()
            var pduFlags = flags.subtracting([.firstPDU, .lastPDU])
            if sequence == 0 { pduFlags.insert(.firstPDU) }
            if remaining.readableBytes == 0 { pduFlags.insert(.lastPDU) }
            buffer.writeInteger(ISNSPDUHeader.version)
            buffer.writeInteger(functionID.rawValue)
            buffer.writeInteger(UInt16(chunk.readableBytes))
            buffer.writeInteger(pduFlags.rawValue)
            buffer.writeInteger(transactionID)
            buffer.writeInteger(sequence)
            var c = chunk
            buffer.writeBuffer(&c)
            sequence &+= 1
        } while remaining.readableBytes > 0
    }
}

extension ByteBuffer {
    /// Reads one PDU: nil if more bytes are needed (reader index unchanged), throws if malformed.
    /// RFC 4171 §5.1.1 (version 1 only) and §5.1.3 (length 4-byte aligned) are enforced here.
    public mutating func readISNSPDU() throws(ISNSError) -> (header: ISNSPDUHeader, payload: ByteBuffer)? {
        guard readableBytes >= ISNSPDUHeader.size,
              let version = getInteger(at: readerIndex, as: UInt16.self),
              let function = getInteger(at: readerIndex + 2, as: UInt16.self),
              let length = getInteger(at: readerIndex + 4, as: UInt16.self),
              let flags = getInteger(at: readerIndex + 6, as: UInt16.self),
              let xid = getInteger(at: readerIndex + 8, as: UInt16.self),
              let seq = getInteger(at: readerIndex + 10, as: UInt16.self) else { return nil }
        guard version == ISNSPDUHeader.version else { throw .malformed("unsupported iSNSP version \(version)") }
        guard length % 4 == 0 else { throw .malformed("PDU length \(length) is not 4-byte aligned") }
        guard readableBytes >= ISNSPDUHeader.size + Int(length) else { return nil }
        moveReaderIndex(forwardBy: ISNSPDUHeader.size)
        guard let payload = readSlice(length: Int(length)) else { return nil }
        let header = ISNSPDUHeader(functionID: ISNSFunctionID(rawValue: function), length: length,
                                   flags: ISNSFlags(rawValue: flags), transactionID: xid, sequenceID: seq)
        return (header, payload)
    }
}

/// Reassembles PDUs into messages (RFC 4171 §5.2), with bounds on the total size.
public struct ISNSMessageAssembler: Sendable {
    /// Upper bound on a reassembled message (a full database dump of a large site is well below).
    public var maximumMessageSize: Int
    private var partial: (functionID: ISNSFunctionID, flags: ISNSFlags, transactionID: UInt16, nextSequence: UInt16, payload: ByteBuffer)?

    public init(maximumMessageSize: Int = 4 << 20) {
        self.maximumMessageSize = maximumMessageSize
    }

    /// Feeds one PDU; returns the message when its last PDU arrives.
    public mutating func receive(header: ISNSPDUHeader, payload: ByteBuffer) throws(ISNSError) -> ISNSMessage? {
        let flags = header.flags
        if flags.contains(.firstPDU) {
            guard partial == nil else { throw .malformed("first PDU of a new message before the last one ended") }
            guard header.sequenceID == 0 else { throw .malformed("first PDU has SEQUENCE_ID \(header.sequenceID), not 0") }
            partial = (header.functionID, flags.subtracting([.firstPDU, .lastPDU]), header.transactionID, 1, ByteBuffer())
        } else {
            guard let p = partial else { throw .malformed("continuation PDU without a first PDU") }
            guard p.functionID == header.functionID, p.transactionID == header.transactionID else {
                throw .malformed("PDU of another message interleaved (FUNCTION_ID/TRANSACTION_ID changed)")
            }
            guard header.sequenceID == p.nextSequence else {
                throw .malformed("SEQUENCE_ID \(header.sequenceID), expected \(p.nextSequence)")
            }
            partial?.nextSequence &+= 1
        }
        guard (partial?.payload.readableBytes ?? 0) + payload.readableBytes <= maximumMessageSize else {
            partial = nil
            throw .malformed("message larger than \(maximumMessageSize) bytes")
        }
        var chunk = payload
        partial?.payload.writeBuffer(&chunk)
        guard flags.contains(.lastPDU), let done = partial else { return nil }
        partial = nil
        return ISNSMessage(functionID: done.functionID, flags: done.flags, transactionID: done.transactionID, payload: done.payload)
    }
}

/// `ByteToMessageDecoder` that yields whole ``ISNSMessage``s.
public struct ISNSMessageDecoder: ByteToMessageDecoder, Sendable {
    public typealias InboundOut = ISNSMessage
    private var assembler: ISNSMessageAssembler

    public init(maximumMessageSize: Int = 4 << 20) {
        assembler = ISNSMessageAssembler(maximumMessageSize: maximumMessageSize)
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        while let (header, payload) = try buffer.readISNSPDU() {
            if let message = try assembler.receive(header: header, payload: payload) {
                context.fireChannelRead(Self.wrapInboundOut(message))
                return .continue
            }
        }
        return .needMoreData
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }
}

// MARK: - Payload TLVs

extension ByteBuffer {
    /// Reads one TLV (RFC 4171 §5.3): nil at the end of the buffer, throws if truncated or if the
    /// length is not a multiple of 4 (§5.3.1).
    public mutating func readISNSAttribute() throws(ISNSError) -> ISNSAttribute? {
        guard readableBytes > 0 else { return nil }
        guard readableBytes >= 8, let tag = getInteger(at: readerIndex, as: UInt32.self),
              let length = getInteger(at: readerIndex + 4, as: UInt32.self) else {
            throw .malformed("truncated TLV header (\(readableBytes) bytes left)")
        }
        guard length % 4 == 0 else { throw .malformed("TLV tag \(tag) length \(length) is not 4-byte aligned") }
        guard UInt64(length) <= UInt64(readableBytes - 8) else {
            throw .malformed("TLV tag \(tag) length \(length) exceeds the \(readableBytes - 8) bytes left")
        }
        moveReaderIndex(forwardBy: 8)
        guard let value = readSlice(length: Int(length)) else { throw .malformed("truncated TLV value") }
        return ISNSAttribute(tag: ISNSAttributeTag(rawValue: tag), value: value)
    }

    public mutating func writeISNSAttribute(_ attribute: ISNSAttribute) {
        precondition(attribute.value.readableBytes % 4 == 0, "attribute values are padded to 4 bytes by their constructors")
        writeInteger(attribute.tag.rawValue)
        writeInteger(UInt32(attribute.value.readableBytes))
        var v = attribute.value
        writeBuffer(&v)
    }
}

/// A request (RFC 4171 §5.6): Source attribute, Message Key attributes, Delimiter, Operating attributes.
public struct ISNSRequest: Hashable, Sendable {
    public var functionID: ISNSFunctionID
    public var flags: ISNSFlags
    public var source: ISNSAttribute
    public var messageKey: [ISNSAttribute]
    public var operating: [ISNSAttribute]

    public init(functionID: ISNSFunctionID, flags: ISNSFlags = [], source: ISNSAttribute,
                messageKey: [ISNSAttribute], operating: [ISNSAttribute]) {
        self.functionID = functionID
        self.flags = flags
        self.source = source
        self.messageKey = messageKey
        self.operating = operating
    }

    public func message(transactionID: UInt16) -> ISNSMessage {
        var payload = ByteBuffer()
        payload.writeISNSAttribute(source)
        for a in messageKey { payload.writeISNSAttribute(a) }
        payload.writeISNSAttribute(.empty(.delimiter))
        for a in operating { payload.writeISNSAttribute(a) }
        return ISNSMessage(functionID: functionID, flags: flags.union(.client), transactionID: transactionID, payload: payload)
    }

    /// Parses a request message (used by tests and by anyone implementing the server side).
    public init(parsing message: ISNSMessage) throws(ISNSError) {
        var payload = message.payload
        var attributes: [ISNSAttribute] = []
        while let a = try payload.readISNSAttribute() { attributes.append(a) }
        guard let source = attributes.first else { throw .malformed("request without a source attribute") }
        let rest = attributes.dropFirst()
        let delimiter = rest.firstIndex { $0.tag == .delimiter }
        self.init(functionID: message.functionID, flags: message.flags.subtracting(.client), source: source,
                  messageKey: Array(rest[..<(delimiter ?? rest.endIndex)]),
                  operating: delimiter.map { Array(rest[($0 + 1)...]) } ?? [])
    }
}

/// A response (RFC 4171 §5.7): 4-byte status, then Message Key attributes, Delimiter, Operating attributes.
public struct ISNSResponse: Hashable, Sendable {
    public var functionID: ISNSFunctionID
    public var transactionID: UInt16
    public var status: ISNSStatus
    public var messageKey: [ISNSAttribute]
    public var operating: [ISNSAttribute]

    public init(functionID: ISNSFunctionID, transactionID: UInt16, status: ISNSStatus,
                messageKey: [ISNSAttribute] = [], operating: [ISNSAttribute] = []) {
        self.functionID = functionID
        self.transactionID = transactionID
        self.status = status
        self.messageKey = messageKey
        self.operating = operating
    }

    /// Largest number of attributes accepted in one response (each costs at least 8 bytes on the wire,
    /// so this only matters as a sanity bound).
    static let maximumAttributes = 1 << 18

    public init(parsing message: ISNSMessage) throws(ISNSError) {
        guard message.functionID.isResponse else { throw .malformed("\(message.functionID) is not a response") }
        var payload = message.payload
        // A non-zero status may come without attributes; the status itself is required (§5.7.1).
        guard let status = payload.readInteger(as: UInt32.self) else { throw .malformed("response without a status code") }
        var key: [ISNSAttribute] = []
        var operating: [ISNSAttribute] = []
        var afterDelimiter = false
        var count = 0
        while let a = try payload.readISNSAttribute() {
            count += 1
            guard count <= Self.maximumAttributes else { throw .malformed("more than \(Self.maximumAttributes) attributes") }
            if a.tag == .delimiter && !afterDelimiter {
                guard a.value.readableBytes == 0 else { throw .malformed("delimiter with a value") }
                afterDelimiter = true
            } else if afterDelimiter {
                operating.append(a)
            } else {
                key.append(a)
            }
        }
        self.init(functionID: message.functionID, transactionID: message.transactionID,
                  status: ISNSStatus(rawValue: status), messageKey: key, operating: operating)
    }

    public func message() -> ISNSMessage {
        var payload = ByteBuffer()
        payload.writeInteger(status.rawValue)
        for a in messageKey { payload.writeISNSAttribute(a) }
        if !operating.isEmpty {
            payload.writeISNSAttribute(.empty(.delimiter))
            for a in operating { payload.writeISNSAttribute(a) }
        }
        return ISNSMessage(functionID: functionID, flags: .server, transactionID: transactionID, payload: payload)
    }
}
