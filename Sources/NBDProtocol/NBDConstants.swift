import NIOCore

// MARK: - Magic numbers

/// Magic numbers of the NBD wire protocol (nbd-proto.md "Newstyle negotiation", "Request message",
/// "Simple reply message", "Structured reply chunk message").
public enum NBDMagic {
    /// 'NBDMAGIC', first 8 bytes the server sends.
    public static let initPassword: UInt64 = 0x4e42_444d_4147_4943
    /// 'IHAVEOPT', sent by the server after NBDMAGIC and by the client before every option.
    public static let option: UInt64 = 0x4948_4156_454f_5054
    /// Prefix of every fixed-newstyle option reply.
    public static let optionReply: UInt64 = 0x0003_e889_0455_65a9
    /// `NBD_REQUEST_MAGIC`.
    public static let request: UInt32 = 0x2560_9513
    /// `NBD_SIMPLE_REPLY_MAGIC`.
    public static let simpleReply: UInt32 = 0x6744_6698
    /// `NBD_STRUCTURED_REPLY_MAGIC`.
    public static let structuredReply: UInt32 = 0x668e_33ef
}

// MARK: - Handshake phase flags

/// Handshake flags sent by the server (nbd-proto.md "Handshake flags").
public struct NBDHandshakeFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let fixedNewstyle = NBDHandshakeFlags(rawValue: 1 << 0)
    public static let noZeroes = NBDHandshakeFlags(rawValue: 1 << 1)
}

/// Client flags (nbd-proto.md "Client flags").
public struct NBDClientFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let fixedNewstyle = NBDClientFlags(rawValue: 1 << 0)
    public static let noZeroes = NBDClientFlags(rawValue: 1 << 1)
}

/// Transmission flags (nbd-proto.md "Transmission flags").
public struct NBDTransmissionFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let hasFlags = NBDTransmissionFlags(rawValue: 1 << 0)
    public static let readOnly = NBDTransmissionFlags(rawValue: 1 << 1)
    public static let sendFlush = NBDTransmissionFlags(rawValue: 1 << 2)
    public static let sendFUA = NBDTransmissionFlags(rawValue: 1 << 3)
    public static let rotational = NBDTransmissionFlags(rawValue: 1 << 4)
    public static let sendTrim = NBDTransmissionFlags(rawValue: 1 << 5)
    public static let sendWriteZeroes = NBDTransmissionFlags(rawValue: 1 << 6)
    public static let sendDF = NBDTransmissionFlags(rawValue: 1 << 7)
    public static let canMultiConn = NBDTransmissionFlags(rawValue: 1 << 8)
    public static let sendResize = NBDTransmissionFlags(rawValue: 1 << 9)
    public static let sendCache = NBDTransmissionFlags(rawValue: 1 << 10)
    public static let sendFastZero = NBDTransmissionFlags(rawValue: 1 << 11)
}

// MARK: - Options

/// Option codes of fixed newstyle negotiation (nbd-proto.md "Option types"). Open: unknown values survive.
public struct NBDOption: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let exportName = NBDOption(rawValue: 1)
    public static let abort = NBDOption(rawValue: 2)
    public static let list = NBDOption(rawValue: 3)
    public static let peekExport = NBDOption(rawValue: 4)
    public static let startTLS = NBDOption(rawValue: 5)
    public static let info = NBDOption(rawValue: 6)
    public static let go = NBDOption(rawValue: 7)
    public static let structuredReply = NBDOption(rawValue: 8)
    public static let listMetaContext = NBDOption(rawValue: 9)
    public static let setMetaContext = NBDOption(rawValue: 10)
    public static let extendedHeaders = NBDOption(rawValue: 11)

    public var description: String {
        switch self {
        case .exportName: "NBD_OPT_EXPORT_NAME"
        case .abort: "NBD_OPT_ABORT"
        case .list: "NBD_OPT_LIST"
        case .peekExport: "NBD_OPT_PEEK_EXPORT"
        case .startTLS: "NBD_OPT_STARTTLS"
        case .info: "NBD_OPT_INFO"
        case .go: "NBD_OPT_GO"
        case .structuredReply: "NBD_OPT_STRUCTURED_REPLY"
        case .listMetaContext: "NBD_OPT_LIST_META_CONTEXT"
        case .setMetaContext: "NBD_OPT_SET_META_CONTEXT"
        case .extendedHeaders: "NBD_OPT_EXTENDED_HEADERS"
        default: "NBD_OPT(\(rawValue))"
        }
    }
}

/// Option reply types (nbd-proto.md "Option reply types"). Errors have bit 31 set.
public struct NBDOptionReplyType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let ack = NBDOptionReplyType(rawValue: 1)
    public static let server = NBDOptionReplyType(rawValue: 2)
    public static let info = NBDOptionReplyType(rawValue: 3)
    public static let metaContext = NBDOptionReplyType(rawValue: 4)
    public static let errUnsup = NBDOptionReplyType(rawValue: 0x8000_0001)
    public static let errPolicy = NBDOptionReplyType(rawValue: 0x8000_0002)
    public static let errInvalid = NBDOptionReplyType(rawValue: 0x8000_0003)
    public static let errPlatform = NBDOptionReplyType(rawValue: 0x8000_0004)
    public static let errTLSReqd = NBDOptionReplyType(rawValue: 0x8000_0005)
    public static let errUnknown = NBDOptionReplyType(rawValue: 0x8000_0006)
    public static let errShutdown = NBDOptionReplyType(rawValue: 0x8000_0007)
    public static let errBlockSizeReqd = NBDOptionReplyType(rawValue: 0x8000_0008)
    public static let errTooBig = NBDOptionReplyType(rawValue: 0x8000_0009)

    public var isError: Bool { rawValue & 0x8000_0000 != 0 }

    public var description: String {
        switch self {
        case .ack: "NBD_REP_ACK"
        case .server: "NBD_REP_SERVER"
        case .info: "NBD_REP_INFO"
        case .metaContext: "NBD_REP_META_CONTEXT"
        case .errUnsup: "NBD_REP_ERR_UNSUP"
        case .errPolicy: "NBD_REP_ERR_POLICY"
        case .errInvalid: "NBD_REP_ERR_INVALID"
        case .errPlatform: "NBD_REP_ERR_PLATFORM"
        case .errTLSReqd: "NBD_REP_ERR_TLS_REQD"
        case .errUnknown: "NBD_REP_ERR_UNKNOWN"
        case .errShutdown: "NBD_REP_ERR_SHUTDOWN"
        case .errBlockSizeReqd: "NBD_REP_ERR_BLOCK_SIZE_REQD"
        case .errTooBig: "NBD_REP_ERR_TOO_BIG"
        default: "NBD_REP(\(rawValue))"
        }
    }
}

/// Information types in `NBD_REP_INFO` (nbd-proto.md "Option reply types", `NBD_REP_INFO`).
public struct NBDInfoType: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let export = NBDInfoType(rawValue: 0)
    public static let name = NBDInfoType(rawValue: 1)
    public static let description = NBDInfoType(rawValue: 2)
    public static let blockSize = NBDInfoType(rawValue: 3)
}

// MARK: - Transmission phase

/// Request types (nbd-proto.md "Request types"). Open: unknown values survive decoding.
public struct NBDCommand: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let read = NBDCommand(rawValue: 0)
    public static let write = NBDCommand(rawValue: 1)
    public static let disconnect = NBDCommand(rawValue: 2)
    public static let flush = NBDCommand(rawValue: 3)
    public static let trim = NBDCommand(rawValue: 4)
    public static let cache = NBDCommand(rawValue: 5)
    public static let writeZeroes = NBDCommand(rawValue: 6)
    public static let blockStatus = NBDCommand(rawValue: 7)
    public static let resize = NBDCommand(rawValue: 8)

    public var description: String {
        switch self {
        case .read: "NBD_CMD_READ"
        case .write: "NBD_CMD_WRITE"
        case .disconnect: "NBD_CMD_DISC"
        case .flush: "NBD_CMD_FLUSH"
        case .trim: "NBD_CMD_TRIM"
        case .cache: "NBD_CMD_CACHE"
        case .writeZeroes: "NBD_CMD_WRITE_ZEROES"
        case .blockStatus: "NBD_CMD_BLOCK_STATUS"
        case .resize: "NBD_CMD_RESIZE"
        default: "NBD_CMD(\(rawValue))"
        }
    }
}

/// Command flags (nbd-proto.md "Command flags").
public struct NBDCommandFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let fua = NBDCommandFlags(rawValue: 1 << 0)
    public static let noHole = NBDCommandFlags(rawValue: 1 << 1)
    public static let dontFragment = NBDCommandFlags(rawValue: 1 << 2)
    public static let reqOne = NBDCommandFlags(rawValue: 1 << 3)
    public static let fastZero = NBDCommandFlags(rawValue: 1 << 4)
    public static let payloadLength = NBDCommandFlags(rawValue: 1 << 5)
}

/// Structured reply flags (nbd-proto.md "Structured reply flags").
public struct NBDReplyFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let done = NBDReplyFlags(rawValue: 1 << 0)
}

/// Structured reply chunk types (nbd-proto.md "Structured reply types"). Error types have bit 15 set.
public struct NBDReplyType: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let none = NBDReplyType(rawValue: 0)
    public static let offsetData = NBDReplyType(rawValue: 1)
    public static let offsetHole = NBDReplyType(rawValue: 2)
    public static let blockStatus = NBDReplyType(rawValue: 5)
    public static let error = NBDReplyType(rawValue: 0x8001)
    public static let errorOffset = NBDReplyType(rawValue: 0x8002)

    public var isError: Bool { rawValue & 0x8000 != 0 }
}

/// Error values carried in replies (nbd-proto.md "Error values"). Open: the server maps any errno it
/// does not know to `EINVAL`-compatible handling on the client, but we only ever send these.
public struct NBDErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let eperm = NBDErrorCode(rawValue: 1)
    public static let eio = NBDErrorCode(rawValue: 5)
    public static let enomem = NBDErrorCode(rawValue: 12)
    public static let einval = NBDErrorCode(rawValue: 22)
    public static let enospc = NBDErrorCode(rawValue: 28)
    public static let eoverflow = NBDErrorCode(rawValue: 75)
    public static let enotsup = NBDErrorCode(rawValue: 95)
    public static let eshutdown = NBDErrorCode(rawValue: 108)

    public var description: String {
        switch self {
        case .eperm: "EPERM"
        case .eio: "EIO"
        case .enomem: "ENOMEM"
        case .einval: "EINVAL"
        case .enospc: "ENOSPC"
        case .eoverflow: "EOVERFLOW"
        case .enotsup: "ENOTSUP"
        case .eshutdown: "ESHUTDOWN"
        default: "errno(\(rawValue))"
        }
    }
}
