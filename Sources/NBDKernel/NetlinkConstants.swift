import CLinuxNBD

// Wire constants of netlink, generic netlink and the NBD family. The values come from the kernel uapi
// headers through CLinuxNBD (linux/netlink.h, linux/genetlink.h, linux/nbd-netlink.h, linux/nbd.h);
// only the arithmetic macros (NLMSG_ALIGN, NLA_ALIGN, ...) are reimplemented in `NetlinkAlignment`.

/// Alignment arithmetic of netlink (linux/netlink.h: `NLMSG_ALIGNTO` and `NLA_ALIGNTO` are both 4).
enum NetlinkAlignment {
    static let alignTo = 4
    /// `NLMSG_ALIGN(len)` / `NLA_ALIGN(len)`: round up to a multiple of 4.
    @inline(__always)
    static func align(_ length: Int) -> Int { (length + alignTo - 1) & ~(alignTo - 1) }
    /// `sizeof(struct nlmsghdr)`, already a multiple of 4 (`NLMSG_HDRLEN`).
    static let messageHeaderLength = align(MemoryLayout<nlmsghdr>.size)
    /// `GENL_HDRLEN`.
    static let genericHeaderLength = align(MemoryLayout<genlmsghdr>.size)
    /// `NLA_HDRLEN`.
    static let attributeHeaderLength = align(MemoryLayout<nlattr>.size)
    /// `sizeof(struct nlmsgerr)`: the errno plus a copy of the offending request's header.
    static let errorHeaderLength = MemoryLayout<nlmsgerr>.size
}

/// `nlmsghdr.nlmsg_type`: a control type (`NLMSG_ERROR`, `NLMSG_DONE`, ...) or a generic netlink family id.
public struct NetlinkMessageType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let noop = NetlinkMessageType(rawValue: UInt16(NLMSG_NOOP))
    public static let error = NetlinkMessageType(rawValue: UInt16(NLMSG_ERROR))
    public static let done = NetlinkMessageType(rawValue: UInt16(NLMSG_DONE))
    public static let overrun = NetlinkMessageType(rawValue: UInt16(NLMSG_OVERRUN))
    /// The generic netlink controller (`GENL_ID_CTRL`), which resolves family names to ids.
    public static let genericController = NetlinkMessageType(rawValue: UInt16(GENL_ID_CTRL))

    public var description: String {
        switch self {
        case .noop: "NLMSG_NOOP"
        case .error: "NLMSG_ERROR"
        case .done: "NLMSG_DONE"
        case .overrun: "NLMSG_OVERRUN"
        case .genericController: "GENL_ID_CTRL"
        default: "family(\(rawValue))"
        }
    }
}

/// `nlmsghdr.nlmsg_flags` (linux/netlink.h).
public struct NetlinkMessageFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let request = NetlinkMessageFlags(rawValue: UInt16(NLM_F_REQUEST))
    public static let multi = NetlinkMessageFlags(rawValue: UInt16(NLM_F_MULTI))
    public static let ack = NetlinkMessageFlags(rawValue: UInt16(NLM_F_ACK))
    public static let echo = NetlinkMessageFlags(rawValue: UInt16(NLM_F_ECHO))
    /// On an `NLMSG_ERROR` message: the copy of the request was cut down to its header (`NETLINK_CAP_ACK`).
    public static let capped = NetlinkMessageFlags(rawValue: UInt16(NLM_F_CAPPED))
    /// On an `NLMSG_ERROR` message: extended-ack TLVs follow (`NETLINK_EXT_ACK`).
    public static let ackTLVs = NetlinkMessageFlags(rawValue: UInt16(NLM_F_ACK_TLVS))
}

/// Attribute type bits (linux/netlink.h: `NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`, `NLA_TYPE_MASK`).
enum NetlinkAttributeBits {
    static let nested = UInt16(NLA_F_NESTED)
    static let networkByteOrder = UInt16(NLA_F_NET_BYTEORDER)
    static let typeMask = ~(nested | networkByteOrder)
}

/// Generic netlink controller commands and attributes (linux/genetlink.h).
enum GenericNetlinkController {
    static let commandGetFamily = UInt8(CTRL_CMD_GETFAMILY)
    static let commandNewFamily = UInt8(CTRL_CMD_NEWFAMILY)
    /// The controller's own version; the kernel accepts any value for GETFAMILY.
    static let version: UInt8 = 2
    static let attributeFamilyID = UInt16(CTRL_ATTR_FAMILY_ID)
    static let attributeFamilyName = UInt16(CTRL_ATTR_FAMILY_NAME)
    static let attributeVersion = UInt16(CTRL_ATTR_VERSION)
    static let attributeHeaderSize = UInt16(CTRL_ATTR_HDRSIZE)
    static let attributeMaxAttribute = UInt16(CTRL_ATTR_MAXATTR)
    static let attributeMulticastGroups = UInt16(CTRL_ATTR_MCAST_GROUPS)
    static let multicastGroupName = UInt16(CTRL_ATTR_MCAST_GRP_NAME)
    static let multicastGroupID = UInt16(CTRL_ATTR_MCAST_GRP_ID)
    /// `GENL_NAMSIZ`: family names are at most 15 bytes plus NUL.
    static let maximumNameLength = Int(GENL_NAMSIZ) - 1
}

/// Extended ack attributes inside `NLMSG_ERROR` (linux/netlink.h `enum nlmsgerr_attrs`).
enum NetlinkErrorAttribute {
    static let message = UInt16(NLMSGERR_ATTR_MSG.rawValue)
    static let offset = UInt16(NLMSGERR_ATTR_OFFS.rawValue)
    static let missingType = UInt16(NLMSGERR_ATTR_MISS_TYPE.rawValue)
}

// MARK: - NBD family (linux/nbd-netlink.h)

/// The NBD generic netlink family: name, version and multicast group (linux/nbd-netlink.h).
public enum NBDNetlinkFamily {
    public static let name = NBD_GENL_FAMILY_NAME
    public static let version = UInt8(NBD_GENL_VERSION)
    public static let multicastGroupName = NBD_GENL_MCAST_GROUP_NAME
}

/// `NBD_CMD_*` of the NBD family.
public struct NBDNetlinkCommand: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let connect = NBDNetlinkCommand(rawValue: UInt8(NBD_CMD_CONNECT))
    public static let disconnect = NBDNetlinkCommand(rawValue: UInt8(NBD_CMD_DISCONNECT))
    public static let reconfigure = NBDNetlinkCommand(rawValue: UInt8(NBD_CMD_RECONFIGURE))
    /// Multicast from the kernel when a device's last connection died.
    public static let linkDead = NBDNetlinkCommand(rawValue: UInt8(NBD_CMD_LINK_DEAD))
    public static let status = NBDNetlinkCommand(rawValue: UInt8(NBD_CMD_STATUS))

    public var description: String {
        switch self {
        case .connect: "NBD_CMD_CONNECT"
        case .disconnect: "NBD_CMD_DISCONNECT"
        case .reconfigure: "NBD_CMD_RECONFIGURE"
        case .linkDead: "NBD_CMD_LINK_DEAD"
        case .status: "NBD_CMD_STATUS"
        default: "NBD_CMD(\(rawValue))"
        }
    }
}

/// Attribute types of the NBD family (top level and nested).
enum NBDAttribute {
    static let index = UInt16(NBD_ATTR_INDEX)
    static let sizeBytes = UInt16(NBD_ATTR_SIZE_BYTES)
    static let blockSizeBytes = UInt16(NBD_ATTR_BLOCK_SIZE_BYTES)
    static let timeout = UInt16(NBD_ATTR_TIMEOUT)
    static let serverFlags = UInt16(NBD_ATTR_SERVER_FLAGS)
    static let clientFlags = UInt16(NBD_ATTR_CLIENT_FLAGS)
    static let sockets = UInt16(NBD_ATTR_SOCKETS)
    static let deadConnectionTimeout = UInt16(NBD_ATTR_DEAD_CONN_TIMEOUT)
    static let deviceList = UInt16(NBD_ATTR_DEVICE_LIST)
    static let backendIdentifier = UInt16(NBD_ATTR_BACKEND_IDENTIFIER)
    /// Inside `NBD_ATTR_SOCKETS`.
    static let socketItem = UInt16(NBD_SOCK_ITEM)
    /// Inside `NBD_SOCK_ITEM`.
    static let socketFD = UInt16(NBD_SOCK_FD)
    /// Inside `NBD_ATTR_DEVICE_LIST`.
    static let deviceItem = UInt16(NBD_DEVICE_ITEM)
    /// Inside `NBD_DEVICE_ITEM`.
    static let deviceIndex = UInt16(NBD_DEVICE_INDEX)
    static let deviceConnected = UInt16(NBD_DEVICE_CONNECTED)
}

/// `NBD_ATTR_CLIENT_FLAGS` bits (linux/nbd.h `NBD_CFLAG_*`).
public struct NBDClientFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// Delete the device (free its index) when it is disconnected.
    public static let destroyOnDisconnect = NBDClientFlags(rawValue: UInt64(NBD_CFLAG_DESTROY_ON_DISCONNECT))
    /// Disconnect the device when the last opener of /dev/nbdN closes it.
    public static let disconnectOnClose = NBDClientFlags(rawValue: UInt64(NBD_CFLAG_DISCONNECT_ON_CLOSE))
}

/// Transmission flags (`NBD_FLAG_*` of linux/nbd.h) that the server advertised; passed as `NBD_ATTR_SERVER_FLAGS`.
public struct NBDTransmissionFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let hasFlags = NBDTransmissionFlags(rawValue: UInt64(NBD_FLAG_HAS_FLAGS))
    public static let readOnly = NBDTransmissionFlags(rawValue: UInt64(NBD_FLAG_READ_ONLY))
    public static let sendFlush = NBDTransmissionFlags(rawValue: UInt64(NBD_FLAG_SEND_FLUSH))
    public static let sendFUA = NBDTransmissionFlags(rawValue: UInt64(NBD_FLAG_SEND_FUA))
    public static let sendTrim = NBDTransmissionFlags(rawValue: UInt64(NBD_FLAG_SEND_TRIM))
    public static let canMultiConnection = NBDTransmissionFlags(rawValue: UInt64(NBD_FLAG_CAN_MULTI_CONN))
}
