import CCRC32C
import NIOCore

/// CRC32C (Castagnoli) for iSCSI digests (RFC 7143 §13.1). The value goes on the wire least significant
/// byte first (RFC 7143 Appendix A.4 lists the digest bytes of the examples in that order).
public enum CRC32C {
    /// The CRC of `buffer`'s readable bytes, continuing from `crc` (0 to start).
    @inlinable
    public static func checksum(_ buffer: ByteBuffer, continuing crc: UInt32 = 0) -> UInt32 {
        buffer.withUnsafeReadableBytes { checksum($0, continuing: crc) }
    }

    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        return ccrc32c_extend(crc, base, bytes.count)
    }

    public static func checksum<C: Collection>(_ bytes: C, continuing crc: UInt32 = 0) -> UInt32
    where C.Element == UInt8 {
        let array = Array(bytes)
        return array.withUnsafeBytes { checksum($0, continuing: crc) }
    }

    /// Extends `crc` with `count` zero bytes (padding to a 4-byte boundary; RFC 7143 §11.2.3 digests
    /// include the padding).
    @inlinable
    public static func checksumPadding(count: Int, continuing crc: UInt32) -> UInt32 {
        if count == 0 { return crc }
        var zeros: UInt32 = 0
        return withUnsafeBytes(of: &zeros) { checksum(UnsafeRawBufferPointer(rebasing: $0[0..<count]), continuing: crc) }
    }

    /// The portable table implementation, for tests.
    public static func portableChecksum(_ bytes: [UInt8], continuing crc: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { ccrc32c_extend_portable(crc, $0.baseAddress, $0.count) }
    }

    /// The hardware implementation (falls back to the table without SSE4.2), for tests.
    public static func hardwareChecksum(_ bytes: [UInt8], continuing crc: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { ccrc32c_extend_hardware(crc, $0.baseAddress, $0.count) }
    }

    /// Whether the CPU instruction is used.
    public static var hardwareAccelerated: Bool { ccrc32c_hardware_available() != 0 }
}
