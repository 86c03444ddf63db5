import NIOCore

/// Parameters of `NBD_CMD_CONNECT` (linux/nbd-netlink.h, drivers/block/nbd.c `nbd_genl_connect`).
public struct NBDConnectRequest: Hashable, Sendable {
    /// Connected sockets, each past the NBD handshake (the kernel speaks the transmission phase only).
    public var sockets: [Int32]
    public var size: UInt64
    public var blockSize: UInt32
    /// Transmission flags the server sent in the handshake.
    public var serverFlags: NBDTransmissionFlags
    public var clientFlags: NBDClientFlags
    /// Request timeout in seconds (`NBD_ATTR_TIMEOUT`); nil = the kernel's default (30 s).
    public var timeoutSeconds: UInt64?
    /// `NBD_ATTR_DEAD_CONN_TIMEOUT` in seconds: how long I/O waits for a reconfigure after all connections died.
    public var deadConnectionTimeoutSeconds: UInt64?
    /// nil = the kernel picks the first free device (or creates one).
    public var index: UInt32?
    /// `NBD_ATTR_BACKEND_IDENTIFIER`: shown in /sys/block/nbdN/backend; a reconfigure must name the same one.
    public var backendIdentifier: String?

    public init(
        sockets: [Int32], size: UInt64, blockSize: UInt32, serverFlags: NBDTransmissionFlags,
        clientFlags: NBDClientFlags = [], timeoutSeconds: UInt64? = nil, deadConnectionTimeoutSeconds: UInt64? = nil,
        index: UInt32? = nil, backendIdentifier: String? = nil
    ) {
        self.sockets = sockets
        self.size = size
        self.blockSize = blockSize
        self.serverFlags = serverFlags
        self.clientFlags = clientFlags
        self.timeoutSeconds = timeoutSeconds
        self.deadConnectionTimeoutSeconds = deadConnectionTimeoutSeconds
        self.index = index
        self.backendIdentifier = backendIdentifier
    }

    /// Checks what the kernel would reject with a bare EINVAL, so the user gets a reason instead.
    /// `pageSize` bounds the block size (the 6.1 kernel's `blk_validate_block_size`: 512...PAGE_SIZE, power of 2).
    public func validate(pageSize: Int) throws(NBDKernelError) {
        guard !sockets.isEmpty else { throw .invalidArgument("at least one connected socket is required") }
        guard sockets.allSatisfy({ $0 >= 0 }) else { throw .invalidArgument("socket descriptors must be >= 0") }
        guard blockSize >= 512, Int(blockSize) <= pageSize, blockSize.nonzeroBitCount == 1 else {
            throw .invalidArgument("block size \(blockSize) must be a power of two in 512...\(pageSize)")
        }
        // The kernel stores the size as loff_t; it does not require a multiple of the block size.
        guard size > 0, size <= UInt64(Int64.max) else {
            throw .invalidArgument("size \(size) must be in 1...\(Int64.max)")
        }
        if let index, index > UInt32(Int32.max) { throw .invalidArgument("device index \(index) out of range") }
    }

    public func encode(family: NetlinkMessageType, sequence: UInt32) throws(NBDKernelError) -> ByteBuffer {
        try NBDNetlinkMessages.encode(family: family, command: .connect, sequence: sequence) {
            (writer) throws(NBDKernelError) in
            if let index { writer.write(type: NBDAttribute.index, u32: index) }
            writer.write(type: NBDAttribute.sizeBytes, u64: size)
            writer.write(type: NBDAttribute.blockSizeBytes, u64: UInt64(blockSize))
            writer.write(type: NBDAttribute.serverFlags, u64: serverFlags.rawValue)
            if !clientFlags.isEmpty { writer.write(type: NBDAttribute.clientFlags, u64: clientFlags.rawValue) }
            if let timeoutSeconds { writer.write(type: NBDAttribute.timeout, u64: timeoutSeconds) }
            if let deadConnectionTimeoutSeconds {
                writer.write(type: NBDAttribute.deadConnectionTimeout, u64: deadConnectionTimeoutSeconds)
            }
            if let backendIdentifier { try writer.write(type: NBDAttribute.backendIdentifier, string: backendIdentifier) }
            try NBDNetlinkMessages.writeSockets(sockets, into: &writer)
        }
    }
}

/// Parameters of `NBD_CMD_RECONFIGURE`: new sockets replace dead connections; timeouts, client flags and the
/// size change. 6.1's `nbd_genl_reconfigure` calls `nbd_genl_size_set` as connect does (Mike Christie's "nbd: add
/// netlink reconfigure resize support", mainline since 5.3): `NBD_ATTR_SIZE_BYTES` resizes a device in use
/// (`set_capacity_and_notify`, a KOBJ_CHANGE uevent), the one way to resize a netlink device, whose resize
/// ioctls the kernel refuses. It shrinks as readily as it grows: callers decide (`NBDResize`).
public struct NBDReconfigureRequest: Hashable, Sendable {
    public var index: UInt32
    public var sockets: [Int32]
    /// `NBD_ATTR_SIZE_BYTES`: the device's new size; nil = unchanged.
    public var sizeBytes: UInt64?
    public var timeoutSeconds: UInt64?
    public var deadConnectionTimeoutSeconds: UInt64?
    public var clientFlags: NBDClientFlags?
    public var backendIdentifier: String?

    public init(
        index: UInt32, sockets: [Int32] = [], timeoutSeconds: UInt64? = nil, deadConnectionTimeoutSeconds: UInt64? = nil,
        clientFlags: NBDClientFlags? = nil, backendIdentifier: String? = nil, sizeBytes: UInt64? = nil
    ) {
        self.index = index
        self.sockets = sockets
        self.sizeBytes = sizeBytes
        self.timeoutSeconds = timeoutSeconds
        self.deadConnectionTimeoutSeconds = deadConnectionTimeoutSeconds
        self.clientFlags = clientFlags
        self.backendIdentifier = backendIdentifier
    }

    public func encode(family: NetlinkMessageType, sequence: UInt32) throws(NBDKernelError) -> ByteBuffer {
        guard sockets.allSatisfy({ $0 >= 0 }) else { throw .invalidArgument("socket descriptors must be >= 0") }
        if let sizeBytes, sizeBytes == 0 || sizeBytes > UInt64(Int64.max) {
            throw .invalidArgument("size \(sizeBytes) must be in 1...\(Int64.max)")
        }
        return try NBDNetlinkMessages.encode(family: family, command: .reconfigure, sequence: sequence) {
            (writer) throws(NBDKernelError) in
            writer.write(type: NBDAttribute.index, u32: index)
            if let sizeBytes { writer.write(type: NBDAttribute.sizeBytes, u64: sizeBytes) }
            if let timeoutSeconds { writer.write(type: NBDAttribute.timeout, u64: timeoutSeconds) }
            if let deadConnectionTimeoutSeconds {
                writer.write(type: NBDAttribute.deadConnectionTimeout, u64: deadConnectionTimeoutSeconds)
            }
            if let clientFlags { writer.write(type: NBDAttribute.clientFlags, u64: clientFlags.rawValue) }
            if let backendIdentifier { try writer.write(type: NBDAttribute.backendIdentifier, string: backendIdentifier) }
            if !sockets.isEmpty { try NBDNetlinkMessages.writeSockets(sockets, into: &writer) }
        }
    }
}

/// One entry of an `NBD_CMD_STATUS` reply.
public struct NBDDeviceStatus: Hashable, Sendable {
    /// N of /dev/nbdN.
    public var index: Int
    public var isConnected: Bool

    public init(index: Int, isConnected: Bool) {
        self.index = index
        self.isConnected = isConnected
    }
}

/// Builders and parsers for the NBD family's messages.
public enum NBDNetlinkMessages {
    static func encode(
        family: NetlinkMessageType, command: NBDNetlinkCommand, sequence: UInt32,
        attributes: (inout NetlinkAttributeWriter) throws(NBDKernelError) -> Void
    ) throws(NBDKernelError) -> ByteBuffer {
        try GenericNetlinkMessage.encodeRequest(
            family: family, command: command.rawValue, version: NBDNetlinkFamily.version, flags: [.ack],
            sequence: sequence, attributes: attributes)
    }

    /// `NBD_ATTR_SOCKETS` → `NBD_SOCK_ITEM` (one per socket) → `NBD_SOCK_FD` (u32).
    static func writeSockets(_ sockets: [Int32], into writer: inout NetlinkAttributeWriter) throws(NBDKernelError) {
        try writer.writeNested(type: NBDAttribute.sockets) { (sockets_) throws(NBDKernelError) in
            for fd in sockets {
                try sockets_.writeNested(type: NBDAttribute.socketItem) { (item) throws(NBDKernelError) in
                    item.write(type: NBDAttribute.socketFD, u32: UInt32(bitPattern: fd))
                }
            }
        }
    }

    public static func encodeDisconnect(family: NetlinkMessageType, index: UInt32, sequence: UInt32) throws(NBDKernelError) -> ByteBuffer {
        try encode(family: family, command: .disconnect, sequence: sequence) { (writer) throws(NBDKernelError) in
            writer.write(type: NBDAttribute.index, u32: index)
        }
    }

    /// `NBD_CMD_STATUS`, for one device or (index nil) all of them.
    public static func encodeStatus(family: NetlinkMessageType, index: UInt32?, sequence: UInt32) throws(NBDKernelError) -> ByteBuffer {
        try encode(family: family, command: .status, sequence: sequence) { (writer) throws(NBDKernelError) in
            if let index { writer.write(type: NBDAttribute.index, u32: index) }
        }
    }

    /// The reply to `NBD_CMD_CONNECT` carries `NBD_ATTR_INDEX` (u32): the device that was configured.
    public static func parseConnectReply(_ reply: GenericNetlinkMessage) throws(NBDKernelError) -> Int {
        guard reply.command == NBDNetlinkCommand.connect.rawValue else {
            throw .malformedReply("connect reply has command \(NBDNetlinkCommand(rawValue: reply.command))")
        }
        guard let attribute = reply.attributes.first(NBDAttribute.index) else {
            throw .malformedReply("connect reply lacks NBD_ATTR_INDEX")
        }
        let index = try attribute.u32()
        guard index <= UInt32(Int32.max) else { throw .malformedReply("connect reply index \(index) out of range") }
        return Int(index)
    }

    /// The reply to `NBD_CMD_STATUS`: `NBD_ATTR_DEVICE_LIST` → `NBD_DEVICE_ITEM`* → `NBD_DEVICE_INDEX` (u32),
    /// `NBD_DEVICE_CONNECTED` (u8). An absent list means no devices.
    public static func parseStatusReply(_ reply: GenericNetlinkMessage) throws(NBDKernelError) -> [NBDDeviceStatus] {
        guard reply.command == NBDNetlinkCommand.status.rawValue else {
            throw .malformedReply("status reply has command \(NBDNetlinkCommand(rawValue: reply.command))")
        }
        guard let list = reply.attributes.first(NBDAttribute.deviceList) else { return [] }
        var result: [NBDDeviceStatus] = []
        for item in try list.nested() where item.type == NBDAttribute.deviceItem {
            let fields = try item.nested()
            guard let index = try fields.first(NBDAttribute.deviceIndex)?.u32(),
                let connected = try fields.first(NBDAttribute.deviceConnected)?.u8()
            else {
                throw .malformedReply("NBD_DEVICE_ITEM lacks NBD_DEVICE_INDEX or NBD_DEVICE_CONNECTED")
            }
            guard index <= UInt32(Int32.max) else { throw .malformedReply("device index \(index) out of range") }
            result.append(NBDDeviceStatus(index: Int(index), isConnected: connected != 0))
        }
        return result
    }

    /// `NBD_CMD_LINK_DEAD` multicast: the index of the device whose connections all died.
    public static func parseLinkDead(_ message: GenericNetlinkMessage) throws(NBDKernelError) -> Int? {
        guard message.command == NBDNetlinkCommand.linkDead.rawValue else { return nil }
        guard let index = try message.attributes.first(NBDAttribute.index)?.u32(), index <= UInt32(Int32.max) else {
            throw .malformedReply("NBD_CMD_LINK_DEAD without a valid NBD_ATTR_INDEX")
        }
        return Int(index)
    }
}
