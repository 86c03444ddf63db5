/// A PDU that cannot be decoded. Every case is connection-fatal for the receiver (RFC 7143 §7.9: a
/// format error or digest error on a header leaves the stream unframed).
public enum ISCSIPDUError: Error, Hashable, Sendable, CustomStringConvertible {
    /// An opcode that is unassigned, vendor-specific, or from the wrong direction.
    case unknownOpcode(UInt8)
    /// DataSegmentLength above the negotiated MaxRecvDataSegmentLength (RFC 7143 §13.12).
    case dataSegmentTooLong(length: Int, limit: Int)
    /// The header digest does not match (RFC 7143 §11.2.3).
    case headerDigestMismatch(expected: UInt32, received: UInt32)
    /// The data digest does not match (RFC 7143 §11.2.3).
    case dataDigestMismatch(expected: UInt32, received: UInt32)
    /// A field that violates the PDU's format rules.
    case malformed(opcode: Opcode, reason: String)
    /// A typed view was asked of a PDU with another opcode.
    case unexpectedOpcode(expected: Opcode, received: Opcode)

    public var description: String {
        switch self {
        case .unknownOpcode(let code): "unknown or unexpected opcode 0x\(String(code, radix: 16))"
        case .dataSegmentTooLong(let length, let limit):
            "DataSegmentLength \(length) exceeds MaxRecvDataSegmentLength \(limit)"
        case .headerDigestMismatch(let expected, let received):
            "header digest mismatch (computed 0x\(String(expected, radix: 16)), received 0x\(String(received, radix: 16)))"
        case .dataDigestMismatch(let expected, let received):
            "data digest mismatch (computed 0x\(String(expected, radix: 16)), received 0x\(String(received, radix: 16)))"
        case .malformed(let opcode, let reason): "malformed \(opcode): \(reason)"
        case .unexpectedOpcode(let expected, let received): "expected \(expected), got \(received)"
        }
    }
}
