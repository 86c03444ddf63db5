import NIOCore

/// One netlink attribute (`struct nlattr` + payload), decoded from a received message.
///
/// linux/netlink.h: an attribute is `nla_len` (u16, header + payload, without padding), `nla_type` (u16, whose top
/// two bits are `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`), then the payload, then zero padding to a multiple of 4.
/// Integers are in host byte order unless `NLA_F_NET_BYTEORDER` is set.
public struct NetlinkAttribute: Hashable, Sendable {
    /// The type without the flag bits.
    public var type: UInt16
    /// `NLA_F_NESTED` was set: the payload is itself a run of attributes.
    public var isNested: Bool
    /// `NLA_F_NET_BYTEORDER` was set: integers are big-endian.
    public var isNetworkByteOrder: Bool
    /// The payload, without header and padding (a slice of the received buffer).
    public var payload: ByteBuffer

    public init(type: UInt16, isNested: Bool = false, isNetworkByteOrder: Bool = false, payload: ByteBuffer) {
        self.type = type
        self.isNested = isNested
        self.isNetworkByteOrder = isNetworkByteOrder
        self.payload = payload
    }

    private var endianness: Endianness { isNetworkByteOrder ? .big : .host }

    private func integer<T: FixedWidthInteger>(_: T.Type) throws(NBDKernelError) -> T {
        guard payload.readableBytes == MemoryLayout<T>.size,
            let value = payload.getInteger(at: payload.readerIndex, endianness: endianness, as: T.self)
        else {
            throw .malformedReply(
                "attribute \(type): expected \(MemoryLayout<T>.size) bytes, got \(payload.readableBytes)")
        }
        return value
    }

    public func u8() throws(NBDKernelError) -> UInt8 { try integer(UInt8.self) }
    public func u16() throws(NBDKernelError) -> UInt16 { try integer(UInt16.self) }
    public func u32() throws(NBDKernelError) -> UInt32 { try integer(UInt32.self) }
    public func u64() throws(NBDKernelError) -> UInt64 { try integer(UInt64.self) }

    /// An `NLA_STRING` / `NLA_NUL_STRING`: UTF-8, trailing NULs dropped; a NUL inside the string is malformed.
    public func string() throws(NBDKernelError) -> String {
        var bytes = payload.readableBytesView[...]
        while let last = bytes.last, last == 0 { bytes = bytes.dropLast() }
        guard !bytes.contains(0), let string = String(validating: bytes, as: UTF8.self) else {
            throw .malformedReply("attribute \(type): not a UTF-8 string")
        }
        return string
    }

    /// The attributes nested in this one. The kernel does not always set `NLA_F_NESTED` (the controller's
    /// multicast-group array does not), so this only requires that the payload parses as attributes.
    public func nested() throws(NBDKernelError) -> [NetlinkAttribute] {
        try NetlinkAttribute.parseAll(payload)
    }

    // MARK: - Decoding

    /// Splits `buffer` into attributes. Throws on a length field that is shorter than the header or runs past
    /// the buffer, and on trailing bytes that cannot hold an attribute (linux/netlink.h `nla_ok`).
    public static func parseAll(_ buffer: ByteBuffer) throws(NBDKernelError) -> [NetlinkAttribute] {
        var buffer = buffer
        var result: [NetlinkAttribute] = []
        let header = NetlinkAlignment.attributeHeaderLength
        while buffer.readableBytes > 0 {
            guard buffer.readableBytes >= header,
                let length = buffer.getInteger(at: buffer.readerIndex, endianness: .host, as: UInt16.self),
                let rawType = buffer.getInteger(at: buffer.readerIndex + 2, endianness: .host, as: UInt16.self)
            else {
                throw .malformedReply("\(buffer.readableBytes) trailing bytes after the last attribute")
            }
            guard Int(length) >= header, Int(length) <= buffer.readableBytes,
                let payload = buffer.getSlice(at: buffer.readerIndex + header, length: Int(length) - header)
            else {
                throw .malformedReply(
                    "attribute \(rawType & NetlinkAttributeBits.typeMask): length \(length) outside 4...\(buffer.readableBytes)")
            }
            result.append(
                NetlinkAttribute(
                    type: rawType & NetlinkAttributeBits.typeMask,
                    isNested: rawType & NetlinkAttributeBits.nested != 0,
                    isNetworkByteOrder: rawType & NetlinkAttributeBits.networkByteOrder != 0,
                    payload: payload))
            // The padding of the last attribute may be missing: skip at most what is there.
            buffer.moveReaderIndex(forwardBy: min(NetlinkAlignment.align(Int(length)), buffer.readableBytes))
        }
        return result
    }
}

extension Array where Element == NetlinkAttribute {
    /// The first attribute of `type` (the kernel's `nla_parse` keeps the last one; duplicates never occur in
    /// the replies we read, and taking the first makes a duplicate harmless).
    func first(_ type: UInt16) -> NetlinkAttribute? { first { $0.type == type } }
}

// MARK: - Encoding

/// Appends attributes to a message being built. Each attribute is padded with zeros to 4 bytes
/// (`NLA_ALIGN`); `nla_len` counts header + payload without the padding. A nest's `nla_len` covers its
/// header and every nested attribute including their padding, as `nla_nest_end` computes it.
public struct NetlinkAttributeWriter {
    public var buffer: ByteBuffer

    public init(buffer: ByteBuffer) { self.buffer = buffer }

    /// Header for a payload of `payloadLength` bytes; callers guarantee `4 + payloadLength` fits in 16 bits.
    private mutating func writeHeader(type: UInt16, payloadLength: Int) {
        buffer.writeInteger(UInt16(NetlinkAlignment.attributeHeaderLength + payloadLength), endianness: .host)
        buffer.writeInteger(type, endianness: .host)
    }

    private mutating func pad() {
        let padding = NetlinkAlignment.align(buffer.writerIndex) - buffer.writerIndex
        if padding > 0 { buffer.writeRepeatingByte(0, count: padding) }
    }

    public mutating func write(type: UInt16, u8 value: UInt8) {
        writeHeader(type: type, payloadLength: 1)
        buffer.writeInteger(value)
        pad()
    }

    public mutating func write(type: UInt16, u16 value: UInt16) {
        writeHeader(type: type, payloadLength: 2)
        buffer.writeInteger(value, endianness: .host)
        pad()
    }

    public mutating func write(type: UInt16, u32 value: UInt32) {
        writeHeader(type: type, payloadLength: 4)
        buffer.writeInteger(value, endianness: .host)
    }

    public mutating func write(type: UInt16, u64 value: UInt64) {
        writeHeader(type: type, payloadLength: 8)
        buffer.writeInteger(value, endianness: .host)
    }

    /// A NUL-terminated string (`NLA_NUL_STRING`; also accepted where `NLA_STRING` is expected).
    public mutating func write(type: UInt16, string: String) throws(NBDKernelError) {
        let utf8 = string.utf8
        guard !utf8.contains(0) else { throw .invalidArgument("string attribute \(type) contains a NUL byte") }
        guard utf8.count + 1 + NetlinkAlignment.attributeHeaderLength <= Int(UInt16.max) else {
            throw .invalidArgument("string attribute \(type) too long (\(utf8.count) bytes)")
        }
        writeHeader(type: type, payloadLength: utf8.count + 1)
        buffer.writeBytes(utf8)
        buffer.writeInteger(UInt8(0))
        pad()
    }

    /// A nested attribute (`NLA_F_NESTED` set in `nla_type`) whose content `body` writes.
    public mutating func writeNested(
        type: UInt16, _ body: (inout NetlinkAttributeWriter) throws(NBDKernelError) -> Void
    ) throws(NBDKernelError) {
        let start = buffer.writerIndex
        buffer.writeInteger(UInt16(0), endianness: .host)  // nla_len, patched below
        buffer.writeInteger(type | NetlinkAttributeBits.nested, endianness: .host)
        try body(&self)
        pad()
        let length = buffer.writerIndex - start
        guard length <= Int(UInt16.max) else {
            throw .invalidArgument("nested netlink attribute \(type) too long (\(length) bytes)")
        }
        buffer.setInteger(UInt16(length), at: start, endianness: .host)
    }
}
