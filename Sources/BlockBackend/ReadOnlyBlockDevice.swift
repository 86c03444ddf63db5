import NIOCore

/// Serves another device read-only (`serve --read-only`): the export is advertised READ_ONLY and any
/// write-type request that still arrives fails with EPERM before it reaches the device.
public final class ReadOnlyBlockDevice: BlockDevice {
    public let base: any BlockDevice
    private let loop: any EventLoop

    /// `eventLoop` completes the refusals (the base device's preferred loop when it has one).
    public init(_ base: any BlockDevice, eventLoop: any EventLoop) {
        self.base = base
        self.loop = base.preferredEventLoop ?? eventLoop
    }

    public var info: BlockDeviceInfo {
        var info = base.info
        info.readOnly = true
        info.canTrim = false
        info.canWriteZeroes = false
        info.canFastZero = false
        return info
    }

    public var preferredEventLoop: (any EventLoop)? { base.preferredEventLoop }

    private func refuse<T>() -> EventLoopFuture<T> {
        loop.makeFailedFuture(BlockDeviceError(.eperm, "the export is read-only"))
    }

    public func read(offset: UInt64, length: UInt32) -> EventLoopFuture<ByteBuffer> {
        base.read(offset: offset, length: length)
    }
    public func readSegments(offset: UInt64, length: UInt32) -> EventLoopFuture<[ByteBuffer]> {
        base.readSegments(offset: offset, length: length)
    }
    public func write(offset: UInt64, data: ByteBuffer, flags: BlockWriteFlags) -> EventLoopFuture<Void> { refuse() }
    public func flush() -> EventLoopFuture<Void> { base.flush() }
    public func trim(offset: UInt64, length: UInt32, flags: BlockWriteFlags) -> EventLoopFuture<Void> { refuse() }
    public func writeZeroes(offset: UInt64, length: UInt32, flags: BlockWriteFlags) -> EventLoopFuture<Void> { refuse() }
}
