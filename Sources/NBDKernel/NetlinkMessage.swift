import NIOCore

/// One netlink message: `struct nlmsghdr` (linux/netlink.h) and its payload.
///
/// `nlmsg_len` (u32) counts header + payload without trailing padding; messages in one datagram start at
/// 4-byte aligned offsets (`NLMSG_ALIGN`, `NLMSG_NEXT`). All header fields are in host byte order.
public struct NetlinkMessage: Hashable, Sendable {
    public var type: NetlinkMessageType
    public var flags: NetlinkMessageFlags
    public var sequence: UInt32
    /// `nlmsg_pid`: the sender's port id (0 = the kernel) on received messages.
    public var portID: UInt32
    /// Everything after the 16-byte header (a slice of the received datagram).
    public var payload: ByteBuffer

    public init(type: NetlinkMessageType, flags: NetlinkMessageFlags, sequence: UInt32, portID: UInt32, payload: ByteBuffer) {
        self.type = type
        self.flags = flags
        self.sequence = sequence
        self.portID = portID
        self.payload = payload
    }

    /// Splits one received datagram into its messages (`NLMSG_OK` / `NLMSG_NEXT`). Throws when a length is
    /// shorter than the header or runs past the datagram, or when bytes that cannot hold a header trail.
    public static func parseDatagram(_ datagram: ByteBuffer) throws(NBDKernelError) -> [NetlinkMessage] {
        var buffer = datagram
        var messages: [NetlinkMessage] = []
        let header = NetlinkAlignment.messageHeaderLength
        while buffer.readableBytes > 0 {
            let base = buffer.readerIndex
            guard buffer.readableBytes >= header,
                let length = buffer.getInteger(at: base, endianness: .host, as: UInt32.self),
                let type = buffer.getInteger(at: base + 4, endianness: .host, as: UInt16.self),
                let flags = buffer.getInteger(at: base + 6, endianness: .host, as: UInt16.self),
                let sequence = buffer.getInteger(at: base + 8, endianness: .host, as: UInt32.self),
                let portID = buffer.getInteger(at: base + 12, endianness: .host, as: UInt32.self)
            else {
                throw .malformedReply("\(buffer.readableBytes) trailing bytes after the last netlink message")
            }
            guard length >= UInt32(header), length <= UInt32(buffer.readableBytes),
                let payload = buffer.getSlice(at: base + header, length: Int(length) - header)
            else {
                throw .malformedReply("netlink message length \(length) outside \(header)...\(buffer.readableBytes)")
            }
            messages.append(
                NetlinkMessage(
                    type: NetlinkMessageType(rawValue: type), flags: NetlinkMessageFlags(rawValue: flags),
                    sequence: sequence, portID: portID, payload: payload))
            buffer.moveReaderIndex(forwardBy: min(NetlinkAlignment.align(Int(length)), buffer.readableBytes))
        }
        return messages
    }
}

// MARK: - Generic netlink

/// A generic netlink message: `struct genlmsghdr` (cmd, version, reserved u16) then attributes
/// (linux/genetlink.h).
public struct GenericNetlinkMessage: Hashable, Sendable {
    public var family: NetlinkMessageType
    public var command: UInt8
    public var version: UInt8
    public var attributes: [NetlinkAttribute]

    public init(family: NetlinkMessageType, command: UInt8, version: UInt8, attributes: [NetlinkAttribute]) {
        self.family = family
        self.command = command
        self.version = version
        self.attributes = attributes
    }

    /// Decodes the payload of `message` (which must not be a control message such as `NLMSG_ERROR`).
    public init(_ message: NetlinkMessage) throws(NBDKernelError) {
        var payload = message.payload
        guard payload.readableBytes >= NetlinkAlignment.genericHeaderLength,
            let command = payload.readInteger(as: UInt8.self),
            let version = payload.readInteger(as: UInt8.self)
        else {
            throw .malformedReply("generic netlink message of \(message.payload.readableBytes) bytes has no genlmsghdr")
        }
        payload.moveReaderIndex(forwardBy: NetlinkAlignment.genericHeaderLength - 2)
        self.init(
            family: message.type, command: command, version: version,
            attributes: try NetlinkAttribute.parseAll(payload))
    }

    /// Encodes a request: nlmsghdr (`NLM_F_REQUEST` plus `flags`), genlmsghdr, then the attributes that
    /// `attributes` writes. `nlmsg_len` is patched in when the body is complete.
    public static func encodeRequest(
        family: NetlinkMessageType, command: UInt8, version: UInt8,
        flags: NetlinkMessageFlags = [.ack], sequence: UInt32, portID: UInt32 = 0,
        allocator: ByteBufferAllocator = ByteBufferAllocator(),
        attributes: (inout NetlinkAttributeWriter) throws(NBDKernelError) -> Void = { _ in }
    ) throws(NBDKernelError) -> ByteBuffer {
        var writer = NetlinkAttributeWriter(buffer: allocator.buffer(capacity: 128))
        writer.buffer.writeInteger(UInt32(0), endianness: .host)  // nlmsg_len, patched below
        writer.buffer.writeInteger(family.rawValue, endianness: .host)
        writer.buffer.writeInteger(flags.union(.request).rawValue, endianness: .host)
        writer.buffer.writeInteger(sequence, endianness: .host)
        writer.buffer.writeInteger(portID, endianness: .host)
        writer.buffer.writeInteger(command)
        writer.buffer.writeInteger(version)
        writer.buffer.writeInteger(UInt16(0), endianness: .host)  // genlmsghdr.reserved
        try attributes(&writer)
        var buffer = writer.buffer
        buffer.setInteger(UInt32(buffer.readableBytes), at: buffer.readerIndex, endianness: .host)
        return buffer
    }
}

// MARK: - Errors and acknowledgements

/// An `NLMSG_ERROR` message: `struct nlmsgerr` (a negative errno, or 0 for an ACK, then the header of the
/// request it answers), optionally followed by the request's payload (absent when `NLM_F_CAPPED`) and by
/// extended-ack TLVs (when `NLM_F_ACK_TLVS`), per linux/netlink.h.
public struct NetlinkErrorMessage: Hashable, Sendable {
    /// The positive errno, or 0 for an acknowledgement.
    public var errno: Int32
    /// The sequence number of the request this answers (from the echoed header).
    public var requestSequence: UInt32
    /// The request's type (family id), from the echoed header.
    public var requestType: NetlinkMessageType
    /// `NLMSGERR_ATTR_MSG`: the kernel's explanation, when it gave one.
    public var extendedMessage: String?
    /// `NLMSGERR_ATTR_MISS_TYPE`: the type of a required attribute that was missing.
    public var missingAttribute: UInt32?
    /// `NLMSGERR_ATTR_OFFS`: byte offset of the offending attribute in the request.
    public var offendingOffset: UInt32?

    public var isAcknowledgement: Bool { errno == 0 }

    public init(_ message: NetlinkMessage) throws(NBDKernelError) {
        guard message.type == .error else { throw .malformedReply("expected NLMSG_ERROR, got \(message.type)") }
        var payload = message.payload
        let echoedHeaderLength = NetlinkAlignment.messageHeaderLength
        guard payload.readableBytes >= 4 + echoedHeaderLength,
            let error = payload.readInteger(endianness: .host, as: Int32.self),
            let echoedLength = payload.getInteger(at: payload.readerIndex, endianness: .host, as: UInt32.self),
            let echoedType = payload.getInteger(at: payload.readerIndex + 4, endianness: .host, as: UInt16.self),
            let echoedSequence = payload.getInteger(at: payload.readerIndex + 8, endianness: .host, as: UInt32.self)
        else {
            throw .malformedReply("NLMSG_ERROR of \(message.payload.readableBytes) bytes is shorter than nlmsgerr")
        }
        guard error <= 0, error > -4096 else { throw .malformedReply("NLMSG_ERROR with error code \(error)") }
        self.errno = -error
        self.requestSequence = echoedSequence
        self.requestType = NetlinkMessageType(rawValue: echoedType)
        guard message.flags.contains(.ackTLVs) else { return }
        // The kernel echoes the whole request on errors unless NETLINK_CAP_ACK was set (NLM_F_CAPPED), and
        // only the header on success; the TLVs start after that, aligned.
        let echoed: Int
        if message.flags.contains(.capped) || error == 0 {
            echoed = echoedHeaderLength
        } else {
            guard echoedLength >= UInt32(echoedHeaderLength) else {
                throw .malformedReply("NLMSG_ERROR echoes a request of length \(echoedLength)")
            }
            echoed = NetlinkAlignment.align(Int(echoedLength))
        }
        guard echoed <= payload.readableBytes else {
            throw .malformedReply("NLMSG_ERROR echoed request (\(echoed) bytes) runs past the message")
        }
        payload.moveReaderIndex(forwardBy: echoed)
        for attribute in try NetlinkAttribute.parseAll(payload) {
            switch attribute.type {
            case NetlinkErrorAttribute.message: self.extendedMessage = try? attribute.string()
            case NetlinkErrorAttribute.missingType: self.missingAttribute = try? attribute.u32()
            case NetlinkErrorAttribute.offset: self.offendingOffset = try? attribute.u32()
            default: continue
            }
        }
    }
}
