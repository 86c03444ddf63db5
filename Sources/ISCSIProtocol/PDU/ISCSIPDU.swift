import NIOCore

/// One iSCSI PDU as framed on the wire (RFC 7143 §11.2): the BHS, the raw AHS bytes and the data
/// segment (a zero-copy slice of the receive buffer when decoded). Digests and padding are handled by
/// the codec and are not part of the value.
///
/// Typed views of each PDU kind are the nested structs (`ISCSIPDU.SCSICommand`, `ISCSIPDU.DataIn`, ...)
/// conforming to `ISCSIPDUConvertible`; `ISCSIMessage` is the enum over all of them.
public struct ISCSIPDU: Sendable, Equatable {
    public var header: BasicHeaderSegment
    /// All AHS, padded, exactly `header.totalAHSLength * 4` bytes; nil when there is none.
    public var additionalHeaderSegments: ByteBuffer?
    /// The data segment without padding (may be empty).
    public var data: ByteBuffer

    public static let emptyData = ByteBuffer()

    public init(header: BasicHeaderSegment, additionalHeaderSegments: ByteBuffer? = nil, data: ByteBuffer = ISCSIPDU.emptyData) {
        self.header = header
        self.additionalHeaderSegments = additionalHeaderSegments
        self.data = data
        self.header.dataSegmentLength = UInt32(truncatingIfNeeded: data.readableBytes)
        self.header.totalAHSLength = UInt8(truncatingIfNeeded: (additionalHeaderSegments?.readableBytes ?? 0) / 4)
    }

    public var opcode: Opcode { header.opcode }
}

/// A typed view of one PDU kind.
public protocol ISCSIPDUConvertible: Sendable {
    static var opcode: Opcode { get }
    /// Interprets `pdu`; throws when the opcode differs or a field breaks the PDU's rules.
    init(_ pdu: ISCSIPDU) throws(ISCSIPDUError)
    /// The PDU to encode.
    var pdu: ISCSIPDU { get }
}

extension ISCSIPDUConvertible {
    @inlinable
    static func check(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
        guard pdu.header.opcode == Self.opcode else {
            throw ISCSIPDUError.unexpectedOpcode(expected: Self.opcode, received: pdu.header.opcode)
        }
    }

    static func malformed(_ reason: String) -> ISCSIPDUError { .malformed(opcode: Self.opcode, reason: reason) }
}

/// The reserved Initiator/Target Task Tag value (RFC 7143 §11.2.1.8, §11.7.4).
public let reservedTaskTag: UInt32 = 0xFFFF_FFFF

// MARK: - Additional Header Segments

/// One AHS (RFC 7143 §11.2.2).
public enum AdditionalHeaderSegment: Hashable, Sendable {
    /// RFC 7143 §11.2.2.3: CDB bytes beyond the first 16 (only for CDBs longer than 16 bytes).
    case extendedCDB([UInt8])
    /// RFC 7143 §11.2.2.4.
    case bidirectionalReadExpectedDataTransferLength(UInt32)
    /// Any other AHSType: type byte and the AHS-specific bytes (after the type byte).
    case other(type: UInt8, bytes: [UInt8])

    /// Parses a whole AHS area (TotalAHSLength * 4 bytes).
    public static func parse(_ area: ByteBuffer) throws(ISCSIPDUError) -> [AdditionalHeaderSegment] {
        var buffer = area
        var result: [AdditionalHeaderSegment] = []
        while buffer.readableBytes > 0 {
            guard let length = buffer.readInteger(as: UInt16.self), let type = buffer.readInteger(as: UInt8.self) else {
                throw ISCSIPDUError.malformed(opcode: .scsiCommand, reason: "truncated AHS")
            }
            // AHSLength counts the AHS-specific bytes including byte 3 (RFC 7143 §11.2.2.2).
            let specific = Int(length)
            let padded = (specific + 3 + 3) & ~3  // type + length + specific, padded, minus 3 read
            guard specific >= 1, buffer.readableBytes >= padded - 3, let bytes = buffer.getBytes(at: buffer.readerIndex, length: specific) else {
                throw ISCSIPDUError.malformed(opcode: .scsiCommand, reason: "AHS length \(length) exceeds TotalAHSLength")
            }
            buffer.moveReaderIndex(forwardBy: padded - 3)
            switch type & 0x3F {
            case 1:
                result.append(.extendedCDB(Array(bytes.dropFirst())))
            case 2:
                guard specific == 5 else {
                    throw ISCSIPDUError.malformed(opcode: .scsiCommand, reason: "bidirectional read length AHS of length \(specific)")
                }
                let v = bytes[1...4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                result.append(.bidirectionalReadExpectedDataTransferLength(v))
            default:
                result.append(.other(type: type, bytes: bytes))
            }
        }
        return result
    }

    /// Writes AHS values (padded) and returns the area.
    public static func encode(_ segments: [AdditionalHeaderSegment], allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 32)
        for segment in segments {
            let type: UInt8
            let specific: [UInt8]
            switch segment {
            case .extendedCDB(let bytes):
                type = 1
                specific = [0] + bytes
            case .bidirectionalReadExpectedDataTransferLength(let v):
                type = 2
                specific = [0, UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)]
            case .other(let t, let bytes):
                type = t
                specific = bytes
            }
            buffer.writeInteger(UInt16(specific.count))
            buffer.writeInteger(type)
            buffer.writeBytes(specific)
            let pad = (4 - (3 + specific.count) % 4) % 4
            buffer.writeRepeatingByte(0, count: pad)
        }
        return buffer
    }
}
