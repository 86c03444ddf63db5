import NIOCore

/// What a block device is and can do. The NBD server derives its size, transmission flags
/// (nbd-proto.md "Transmission flags") and block size constraints ("Size constraints") from this.
public struct BlockDeviceInfo: Sendable, Hashable {
    /// Size in bytes.
    public var size: UInt64
    /// Smallest unit of I/O in bytes (the SCSI logical block length). Requests must be aligned to it.
    public var logicalBlockSize: UInt32
    /// Preferred unit of I/O in bytes (physical block size / optimal granularity).
    public var preferredBlockSize: UInt32
    /// Largest payload one read or write request may carry, in bytes.
    public var maxTransferLength: UInt32
    /// The request size the device prefers (SCSI: Block Limits OPTIMAL TRANSFER LENGTH), in bytes; 0 when it
    /// states none. A kernel device's largest request follows it (`NBDQueueLimits`).
    public var optimalTransferLength: UInt32
    public var readOnly: Bool
    /// The device has a volatile write cache: FLUSH means something.
    public var canFlush: Bool
    /// Forced unit access is honoured (natively or emulated by a flush).
    public var canFUA: Bool
    public var canTrim: Bool
    public var canWriteZeroes: Bool
    /// A write-zeroes request with the fast-zero flag fails fast (ENOTSUP) instead of writing slowly.
    public var canFastZero: Bool
    /// Every connection sees the effect of a FLUSH or FUA on any other (nbd-proto.md NBD_FLAG_CAN_MULTI_CONN).
    public var canMultiConn: Bool
    public var rotational: Bool
    /// Human-readable description (vendor, product, serial), for NBD_INFO_DESCRIPTION and listings.
    public var description: String

    public init(
        size: UInt64,
        logicalBlockSize: UInt32 = 512,
        preferredBlockSize: UInt32 = 4096,
        maxTransferLength: UInt32 = 32 * 1024 * 1024,
        optimalTransferLength: UInt32 = 0,
        readOnly: Bool = false,
        canFlush: Bool = true,
        canFUA: Bool = true,
        canTrim: Bool = false,
        canWriteZeroes: Bool = true,
        canFastZero: Bool = false,
        canMultiConn: Bool = true,
        rotational: Bool = false,
        description: String = ""
    ) {
        self.size = size
        self.logicalBlockSize = logicalBlockSize
        self.preferredBlockSize = preferredBlockSize
        self.maxTransferLength = maxTransferLength
        self.optimalTransferLength = optimalTransferLength
        self.readOnly = readOnly
        self.canFlush = canFlush
        self.canFUA = canFUA
        self.canTrim = canTrim
        self.canWriteZeroes = canWriteZeroes
        self.canFastZero = canFastZero
        self.canMultiConn = canMultiConn
        self.rotational = rotational
        self.description = description
    }
}

/// Flags on a write-type request (nbd-proto.md "Command flags").
public struct BlockWriteFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Forced unit access: durable before the reply.
    public static let fua = BlockWriteFlags(rawValue: 1 << 0)
    /// Write zeroes must not leave a hole (no deallocation).
    public static let noHole = BlockWriteFlags(rawValue: 1 << 1)
    /// Write zeroes must fail with ENOTSUP rather than be slower than a plain write.
    public static let fastZero = BlockWriteFlags(rawValue: 1 << 2)
}

/// A failed block request. The code is an errno value; the NBD server sends it on the wire
/// (nbd-proto.md "Error values"), the kernel path likewise.
public struct BlockDeviceError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable {
        public var rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let eperm = Code(rawValue: 1)
        public static let eio = Code(rawValue: 5)
        public static let enomem = Code(rawValue: 12)
        public static let einval = Code(rawValue: 22)
        public static let enospc = Code(rawValue: 28)
        public static let eoverflow = Code(rawValue: 75)
        public static let enotsup = Code(rawValue: 95)
        public static let eshutdown = Code(rawValue: 108)
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(message) (errno \(code.rawValue))" }
}

/// A block device served over NBD. All offsets and lengths are in bytes; callers (the NBD server)
/// validate range, alignment to `info.logicalBlockSize` and `info.maxTransferLength` first, so an
/// implementation may assume valid requests. Futures may complete on any event loop; they fail with
/// `BlockDeviceError` (anything else is treated as EIO). A write's future succeeds only once the data
/// is on the device (for iSCSI: the target completed the command: GOOD, CONDITION MET, or CHECK CONDITION with RECOVERED ERROR: sense key 1h, "data is good").
public protocol BlockDevice: AnyObject, Sendable {
    /// Current description; may change (online resize), so read it when a connection starts.
    var info: BlockDeviceInfo { get }
    /// The loop the device prefers to be driven from. NBD connections are placed on it when possible,
    /// so requests and replies never hop threads.
    var preferredEventLoop: (any EventLoop)? { get }

    func read(offset: UInt64, length: UInt32) -> EventLoopFuture<ByteBuffer>
    /// The same bytes as `read`, as consecutive pieces the way they arrived (for iSCSI: one per Data-In
    /// PDU), so a caller that forwards them (the NBD server, with one vectored write) needs no copy into a
    /// contiguous buffer. The default is `read` as one piece.
    func readSegments(offset: UInt64, length: UInt32) -> EventLoopFuture<[ByteBuffer]>
    func write(offset: UInt64, data: ByteBuffer, flags: BlockWriteFlags) -> EventLoopFuture<Void>
    func flush() -> EventLoopFuture<Void>
    func trim(offset: UInt64, length: UInt32, flags: BlockWriteFlags) -> EventLoopFuture<Void>
    func writeZeroes(offset: UInt64, length: UInt32, flags: BlockWriteFlags) -> EventLoopFuture<Void>
}

extension BlockDevice {
    public func readSegments(offset: UInt64, length: UInt32) -> EventLoopFuture<[ByteBuffer]> {
        read(offset: offset, length: length).map { [$0] }
    }
}
