import NIOCore

/// Which digests are on (RFC 7143 §13.1: HeaderDigest and DataDigest are negotiated separately, as
/// None or CRC32C). Digests apply from the first PDU after the Login Phase ends.
public struct DigestSettings: Hashable, Sendable {
    public var header: Bool
    public var data: Bool

    public init(header: Bool = false, data: Bool = false) {
        self.header = header
        self.data = data
    }

    public static let none = DigestSettings()
}

@inline(__always)
func paddedLength(_ n: Int) -> Int { (n + 3) & ~3 }

/// Frames PDUs out of a byte stream (RFC 7143 §11.2). A value type with no buffering of its own: it
/// looks at the readable bytes and consumes a PDU only when all of it is there.
///
/// `parse` returns nil when more bytes are needed, throws `ISCSIPDUError` when the stream is malformed
/// (the connection must then be dropped: it can no longer be framed reliably). Lengths are checked
/// before anything is read or allocated.
public struct PDUParser: Sendable {
    public var digests: DigestSettings
    /// The largest DataSegmentLength accepted: our declared MaxRecvDataSegmentLength (RFC 7143 §13.12).
    public var maxDataSegmentLength: Int
    /// When set, PDUs from the other direction are rejected as unknown opcodes.
    public var direction: PDUDirection?

    public init(digests: DigestSettings = .none, maxDataSegmentLength: Int = 8192, direction: PDUDirection? = nil) {
        self.digests = digests
        self.maxDataSegmentLength = maxDataSegmentLength
        self.direction = direction
    }

    /// Checks the header segment group at the reader index (opcode, direction, DataSegmentLength against
    /// our MaxRecvDataSegmentLength, header digest) and says how long the rest of the PDU is, without
    /// consuming anything. Nil until the whole header segment group is there.
    public func frame(_ buffer: ByteBuffer) throws(ISCSIPDUError) -> PDUFrame? {
        guard let header = buffer.getBasicHeaderSegment(at: buffer.readerIndex) else { return nil }
        let opcode = header.opcode
        guard opcode.isDefined else { throw ISCSIPDUError.unknownOpcode(opcode.rawValue) }
        switch direction {
        case .initiatorToTarget?: guard opcode.isInitiatorOpcode else { throw ISCSIPDUError.unknownOpcode(opcode.rawValue) }
        case .targetToInitiator?: guard !opcode.isInitiatorOpcode else { throw ISCSIPDUError.unknownOpcode(opcode.rawValue) }
        case nil: break
        }
        let dataLength = Int(header.dataSegmentLength)
        // RFC 7143 §13.12: a PDU's data segment never exceeds the receiver's MaxRecvDataSegmentLength.
        guard dataLength <= maxDataSegmentLength else {
            throw ISCSIPDUError.dataSegmentTooLong(length: dataLength, limit: maxDataSegmentLength)
        }
        let ahsLength = Int(header.totalAHSLength) * 4
        let headerGroup = BasicHeaderSegment.length + ahsLength
        let headerGroupLength = headerGroupLength(header)
        guard buffer.readableBytes >= headerGroupLength else { return nil }
        let start = buffer.readerIndex
        if digests.header {
            let computed = buffer.withUnsafeReadableBytes {
                CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[0..<headerGroup]))
            }
            let received = buffer.getInteger(at: start + headerGroup, endianness: .little, as: UInt32.self) ?? 0
            guard computed == received else { throw ISCSIPDUError.headerDigestMismatch(expected: computed, received: received) }
        }
        let ahs = ahsLength > 0 ? buffer.getSlice(at: start + BasicHeaderSegment.length, length: ahsLength) : nil
        // RFC 7143 §11.2.3: "A zero-length Data Segment also implies a zero-length Data-Digest."
        return PDUFrame(
            header: header, additionalHeaderSegments: ahs, headerGroupLength: headerGroupLength,
            dataLength: dataLength, dataDigest: digests.data && dataLength > 0
        )
    }

    /// The length of the header segment group (BHS, AHS, header digest) starting at the reader index, once
    /// its BHS is there; the BHS length before. How many bytes to gather before `frame` can answer.
    public func headerGroupLength(_ buffer: ByteBuffer) -> Int {
        guard let header = buffer.getBasicHeaderSegment(at: buffer.readerIndex) else { return BasicHeaderSegment.length }
        return headerGroupLength(header)
    }

    private func headerGroupLength(_ header: BasicHeaderSegment) -> Int {
        BasicHeaderSegment.length + Int(header.totalAHSLength) * 4 + (digests.header ? 4 : 0)
    }

    /// Reads one whole PDU; nil (buffer untouched) when it is not all there yet.
    public func parse(_ buffer: inout ByteBuffer) throws(ISCSIPDUError) -> ISCSIPDU? {
        guard let frame = try frame(buffer), buffer.readableBytes >= frame.totalLength else { return nil }
        let dataStart = buffer.readerIndex + frame.headerGroupLength
        let dataLength = frame.dataLength
        if frame.dataDigest {
            let covered = paddedLength(dataLength)
            let computed = buffer.withUnsafeReadableBytes {
                CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[frame.headerGroupLength..<(frame.headerGroupLength + covered)]))
            }
            let received = buffer.getInteger(at: dataStart + covered, endianness: .little, as: UInt32.self) ?? 0
            guard computed == received else { throw ISCSIPDUError.dataDigestMismatch(expected: computed, received: received) }
        }
        let data = dataLength > 0 ? (buffer.getSlice(at: dataStart, length: dataLength) ?? ISCSIPDU.emptyData) : ISCSIPDU.emptyData
        buffer.moveReaderIndex(forwardBy: frame.totalLength)
        var pdu = ISCSIPDU(header: frame.header, additionalHeaderSegments: frame.additionalHeaderSegments, data: data)
        pdu.header = frame.header
        return pdu
    }
}

/// What a PDU's header segment group says about the whole PDU (RFC 7143 §11.2): the checked header, and
/// the lengths of what follows it.
public struct PDUFrame: Sendable {
    public var header: BasicHeaderSegment
    public var additionalHeaderSegments: ByteBuffer?
    /// BHS, AHS and header digest.
    public var headerGroupLength: Int
    public var dataLength: Int
    /// A data digest follows the padded data segment.
    public var dataDigest: Bool

    /// Zero bytes after the data segment, up to a 4-byte boundary.
    public var padding: Int { paddedLength(dataLength) - dataLength }
    /// Padding and data digest after the data segment.
    public var trailerLength: Int { padding + (dataDigest ? 4 : 0) }
    public var totalLength: Int { headerGroupLength + dataLength + trailerLength }
}

/// Gathers the data segment of one PDU whose header segment group has been framed, from as many reads as it
/// takes, keeping the payload as slices of the receive buffers (never copied, never joined). The data
/// digest (RFC 7143 §13.1, covering the padding) is computed as the bytes arrive and checked by `finish`.
/// For Data-In PDUs larger than one socket read, this saves copying every byte of a read once more.
public struct DataSegmentCollector: Sendable {
    public let frame: PDUFrame
    private var pieces: [ByteBuffer] = []
    private var dataCollected = 0
    /// Padding and digest bytes so far (at most 7).
    private var trailer: UInt64 = 0
    private var trailerCollected = 0
    private var crc: UInt32 = 0

    public init(frame: PDUFrame) { self.frame = frame }

    /// Every byte of the PDU has been taken.
    public var isComplete: Bool { dataCollected == frame.dataLength && trailerCollected == frame.trailerLength }

    /// Takes the bytes that belong to this PDU from the front of `buffer`; true once the PDU is whole.
    public mutating func take(from buffer: inout ByteBuffer) -> Bool {
        let wanted = min(frame.dataLength - dataCollected, buffer.readableBytes)
        if wanted > 0, let piece = buffer.readSlice(length: wanted) {
            if frame.dataDigest { crc = CRC32C.checksum(piece, continuing: crc) }
            pieces.append(piece)
            dataCollected += wanted
        }
        while trailerCollected < frame.trailerLength, let byte = buffer.readInteger(as: UInt8.self) {
            trailer |= UInt64(byte) << (8 * UInt64(trailerCollected))
            trailerCollected += 1
        }
        return isComplete
    }

    /// The data segment, in order, once the digest (if any) is checked.
    public func finish() throws(ISCSIPDUError) -> [ByteBuffer] {
        precondition(isComplete, "finish() before the PDU is whole")
        if frame.dataDigest {
            let padding = frame.padding
            var paddingBytes = (trailer & ((1 << (8 * UInt64(padding))) - 1)).littleEndian
            let computed = withUnsafeBytes(of: &paddingBytes) {
                CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[0..<padding]), continuing: crc)
            }
            let received = UInt32(truncatingIfNeeded: trailer >> (8 * UInt64(padding)))
            guard computed == received else { throw ISCSIPDUError.dataDigestMismatch(expected: computed, received: received) }
        }
        return pieces
    }
}

/// Writes PDUs (RFC 7143 §11.2): the header segment group with its digest, then the data segment with
/// padding and its digest. The payload need not be copied: `writeHeader` + the payload slice +
/// `writeDataTrailer` can be three separate channel writes.
public struct PDUEncoder: Sendable {
    public var digests: DigestSettings

    public init(digests: DigestSettings = .none) { self.digests = digests }

    /// BHS (with TotalAHSLength and DataSegmentLength taken from `ahs` and `dataLength`), AHS and
    /// header digest.
    public func writeHeader(_ header: BasicHeaderSegment, ahs: ByteBuffer? = nil, dataLength: Int, into buffer: inout ByteBuffer) {
        var h = header
        precondition(dataLength <= 0x00FF_FFFF, "DataSegmentLength is 24 bits")
        let ahsLength = ahs?.readableBytes ?? 0
        precondition(ahsLength % 4 == 0 && ahsLength / 4 <= 255, "AHS must be padded and at most 1020 bytes")
        h.dataSegmentLength = UInt32(dataLength)
        h.totalAHSLength = UInt8(ahsLength / 4)
        let start = buffer.writerIndex
        buffer.writeBasicHeaderSegment(h)
        if let ahs { buffer.writeImmutableBuffer(ahs) }
        if digests.header {
            let end = buffer.writerIndex
            let crc = buffer.withUnsafeReadableBytes {
                CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[(start - buffer.readerIndex)..<(end - buffer.readerIndex)]))
            }
            buffer.writeInteger(crc, endianness: .little)
        }
    }

    /// Padding and data digest for `data` (nothing for an empty data segment).
    public func writeDataTrailer(for data: ByteBuffer, into buffer: inout ByteBuffer) {
        let length = data.readableBytes
        guard length > 0 else { return }
        let pad = paddedLength(length) - length
        buffer.writeRepeatingByte(0, count: pad)
        if digests.data {
            let crc = CRC32C.checksumPadding(count: pad, continuing: CRC32C.checksum(data))
            buffer.writeInteger(crc, endianness: .little)
        }
    }

    /// The bytes `writeDataTrailer` writes.
    public func dataTrailerLength(forDataLength length: Int) -> Int {
        guard length > 0 else { return 0 }
        return paddedLength(length) - length + (digests.data ? 4 : 0)
    }

    /// The whole PDU into one buffer (copies the payload).
    public func encode(_ pdu: ISCSIPDU, into buffer: inout ByteBuffer) {
        writeHeader(pdu.header, ahs: pdu.additionalHeaderSegments, dataLength: pdu.data.readableBytes, into: &buffer)
        buffer.writeImmutableBuffer(pdu.data)
        writeDataTrailer(for: pdu.data, into: &buffer)
    }
}

/// `PDUParser` as a NIO `ByteToMessageDecoder`.
public struct ISCSIPDUDecoder: ByteToMessageDecoder, Sendable {
    public typealias InboundOut = ISCSIPDU
    public var parser: PDUParser

    public init(parser: PDUParser) { self.parser = parser }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let pdu = try parser.parse(&buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(pdu))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

/// `PDUEncoder` as a NIO `MessageToByteEncoder` (copies the payload; the session writes payloads as
/// separate buffers instead).
public struct ISCSIPDUEncoder: MessageToByteEncoder, Sendable {
    public typealias OutboundIn = ISCSIPDU
    public var encoder: PDUEncoder

    public init(encoder: PDUEncoder) { self.encoder = encoder }

    public func encode(data: ISCSIPDU, out: inout ByteBuffer) throws {
        encoder.encode(data, into: &out)
    }
}
