import NIOCore

/// The 48-byte Basic Header Segment (RFC 7143 §11.2.1), kept as raw fields so it lives inline (no
/// allocation). Typed PDU views (`ISCSIPDU.SCSICommand`, ...) give the fields their meaning.
public struct BasicHeaderSegment: Hashable, Sendable {
    public static let length = 48

    /// Byte 0 bits 2-7.
    public var opcode: Opcode
    /// Byte 0 bit 1: immediate delivery (RFC 7143 §11.2.1.1).
    public var immediate: Bool
    /// Byte 1: the F bit and opcode-specific flags.
    public var flags: UInt8
    public var byte2: UInt8
    public var byte3: UInt8
    /// Length of all AHS in 4-byte words (RFC 7143 §11.2.1.5).
    public var totalAHSLength: UInt8
    /// Data segment length in bytes without padding; 24 bits (RFC 7143 §11.2.1.6).
    public var dataSegmentLength: UInt32
    /// Bytes 8-15: LUN or opcode-specific.
    public var lun: UInt64
    /// Bytes 16-19.
    public var initiatorTaskTag: UInt32
    /// Bytes 20-47, as seven big-endian words.
    public var field20: UInt32
    public var field24: UInt32
    public var field28: UInt32
    public var field32: UInt32
    public var field36: UInt32
    public var field40: UInt32
    public var field44: UInt32

    public init(opcode: Opcode, immediate: Bool = false, flags: UInt8 = 0) {
        self.opcode = opcode
        self.immediate = immediate
        self.flags = flags
        self.byte2 = 0
        self.byte3 = 0
        self.totalAHSLength = 0
        self.dataSegmentLength = 0
        self.lun = 0
        self.initiatorTaskTag = 0
        self.field20 = 0
        self.field24 = 0
        self.field28 = 0
        self.field32 = 0
        self.field36 = 0
        self.field40 = 0
        self.field44 = 0
    }

    /// The F (final) bit, byte 1 bit 7 (RFC 7143 §11.2.1.3).
    public var final: Bool {
        get { flags & 0x80 != 0 }
        set { flags = newValue ? flags | 0x80 : flags & 0x7F }
    }
}

extension ByteBuffer {
    /// Reads a BHS; nil (reader index unchanged) when fewer than 48 bytes are readable.
    public mutating func readBasicHeaderSegment() -> BasicHeaderSegment? {
        guard let bhs = getBasicHeaderSegment(at: readerIndex) else { return nil }
        moveReaderIndex(forwardBy: BasicHeaderSegment.length)
        return bhs
    }

    /// Gets a BHS at `index` without moving the reader index; nil when fewer than 48 bytes are there.
    public func getBasicHeaderSegment(at index: Int) -> BasicHeaderSegment? {
        guard index >= readerIndex, writerIndex - index >= BasicHeaderSegment.length,
            let b0 = getInteger(at: index, as: UInt8.self),
            let b1 = getInteger(at: index + 1, as: UInt8.self),
            let b2 = getInteger(at: index + 2, as: UInt8.self),
            let b3 = getInteger(at: index + 3, as: UInt8.self),
            let w4 = getInteger(at: index + 4, as: UInt32.self),
            let lun = getInteger(at: index + 8, as: UInt64.self),
            let itt = getInteger(at: index + 16, as: UInt32.self),
            let f20 = getInteger(at: index + 20, as: UInt32.self),
            let f24 = getInteger(at: index + 24, as: UInt32.self),
            let f28 = getInteger(at: index + 28, as: UInt32.self),
            let f32 = getInteger(at: index + 32, as: UInt32.self),
            let f36 = getInteger(at: index + 36, as: UInt32.self),
            let f40 = getInteger(at: index + 40, as: UInt32.self),
            let f44 = getInteger(at: index + 44, as: UInt32.self)
        else { return nil }
        var bhs = BasicHeaderSegment(opcode: Opcode(rawValue: b0 & 0x3F), immediate: b0 & 0x40 != 0, flags: b1)
        bhs.byte2 = b2
        bhs.byte3 = b3
        bhs.totalAHSLength = UInt8(truncatingIfNeeded: w4 >> 24)
        bhs.dataSegmentLength = w4 & 0x00FF_FFFF
        bhs.lun = lun
        bhs.initiatorTaskTag = itt
        bhs.field20 = f20
        bhs.field24 = f24
        bhs.field28 = f28
        bhs.field32 = f32
        bhs.field36 = f36
        bhs.field40 = f40
        bhs.field44 = f44
        return bhs
    }

    /// Writes the 48 BHS bytes; returns 48.
    @discardableResult
    public mutating func writeBasicHeaderSegment(_ bhs: BasicHeaderSegment) -> Int {
        precondition(bhs.dataSegmentLength <= 0x00FF_FFFF, "DataSegmentLength is 24 bits")
        let b0 = UInt32(bhs.opcode.rawValue & 0x3F) | (bhs.immediate ? 0x40 : 0)
        let w0 = b0 << 24 | UInt32(bhs.flags) << 16 | UInt32(bhs.byte2) << 8 | UInt32(bhs.byte3)
        let w4 = UInt32(bhs.totalAHSLength) << 24 | bhs.dataSegmentLength
        return writeMultipleIntegers(
            w0, w4, bhs.lun, bhs.initiatorTaskTag, bhs.field20, bhs.field24, bhs.field28,
            bhs.field32, bhs.field36, bhs.field40, bhs.field44
        )
    }
}
