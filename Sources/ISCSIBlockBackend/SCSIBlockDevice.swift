import BlockBackend
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SCSI

/// A SCSI direct-access logical unit served as a `BlockDevice`, over any `SCSITransport`.
///
/// Open it with `open(transport:lun:logger:)`, which probes the LUN (`SCSIProbe`, scsi-commands.md §6) and
/// derives `info`. Requests map to commands as follows:
/// - read → READ(10) when the LBA range fits 32 bits and the count 16 bits, else READ(16);
/// - write → WRITE(10)/(16), FUA bit set when the target reports DPOFUA; otherwise a FUA write is
///   WRITE then SYNCHRONIZE CACHE (only when WCE = 1: without a volatile cache GOOD already means durable);
/// - flush → SYNCHRONIZE CACHE(10) of the whole LU (LBA 0, 0 blocks), (16) when (10) is not implemented;
/// - trim → UNMAP, or WRITE SAME(16) with UNMAP = 1; advisory, so an unsupported trim succeeds;
/// - write zeroes → WRITE SAME(16) with a zero block (UNMAP = 1 when NO_HOLE is clear and unmapped blocks
///   read as zeros), emulated with WRITE of zero buffers when the target rejects WRITE SAME.
/// What the target turns out to refuse is learnt in `SCSIFallbacks`. Requests longer than the per-command
/// limits are split (`RequestSplitter`) and issued concurrently, at most `maxChunksInFlight` at a time.
/// Errors map through `SCSIErrorMapping`; retries follow `RetryPolicy`. Whether the LUN still names the
/// logical unit first opened is `LUNIdentityGuard`'s call (see SCSIBlockDevice+Revalidation.swift).
public final class SCSIBlockDevice: BlockDevice {
    public let transport: any SCSITransport
    public let lun: LogicalUnitNumber
    public var preferredEventLoop: (any EventLoop)? { transport.eventLoop }

    /// Current geometry and capabilities; capacity and mode data are re-read after the unit attentions
    /// that announce a change (2A/09 capacity, 2A/01 mode parameters, 29/xx reset), see `refresh()`.
    public var info: BlockDeviceInfo { current.withLockedValue { $0.info } }
    public var properties: SCSIDeviceProperties { current.withLockedValue { $0.properties } }
    public var strategy: SCSIBlockStrategy { current.withLockedValue { $0.strategy } }
    /// Judges whether a LUN found later (after a unit attention or a new login) is this logical unit.
    public var identityGuard: LUNIdentityGuard { current.withLockedValue { $0.identityGuard } }
    public var lunIdentity: LUNIdentity { identityGuard.identity }
    /// Statuses, sense keys and retries of the commands sent for this LUN (metrics, `-m session -s`).
    public var commandStatistics: SCSICommandStatistics { runner.statistics }

    /// Most sub-commands of one split request in flight at once.
    public static let maxChunksInFlight = 16

    let runner: CommandRunner
    let logger: Logger
    /// The logical block length; fixed for the life of the device (a change needs a new device).
    private let blockSize: UInt32
    /// One zeroed logical block: the WRITE SAME data-out.
    private let zeroBlock: ByteBuffer
    /// Zeros for emulated write-zeroes (≤ 1 MiB), sliced per command.
    private let zeroChunk: ByteBuffer

    /// Everything derived from the probe's answers, replaced as a whole when they are re-read.
    struct Geometry {
        var properties: SCSIDeviceProperties
        var strategy: SCSIBlockStrategy
        var info: BlockDeviceInfo
        var identityGuard: LUNIdentityGuard
        /// Set when the logical unit behind the LUN is no longer the one that was opened: every request
        /// fails with EIO from then on (serving another disk's blocks would corrupt data).
        var fenced: String?
        init(_ p: SCSIDeviceProperties) {
            properties = p
            strategy = SCSIBlockStrategy(properties: p)
            info = SCSIBlockStrategy.info(properties: p, strategy: strategy)
            identityGuard = LUNIdentityGuard(serving: p)
        }
    }
    let current: NIOLockedValueBox<Geometry>

    /// The refresh after a unit attention: one at a time, one more when another attention arrived meanwhile.
    struct RefreshState {
        var refreshing = false
        var refreshAgain = false
        var infoChanged: (@Sendable (BlockDeviceInfo) -> Void)?
    }
    let refreshState = NIOLockedValueBox(RefreshState())

    /// What the target turned out not to support at run time.
    private let fallbacks = NIOLockedValueBox(SCSIFallbacks())

    init(runner: CommandRunner, properties: SCSIDeviceProperties, logger: Logger) {
        self.runner = runner
        self.transport = runner.transport
        self.lun = runner.lun
        self.logger = logger
        let geometry = Geometry(properties)
        self.current = NIOLockedValueBox(geometry)
        self.blockSize = properties.blockLength
        var zb = ByteBufferAllocator().buffer(capacity: Int(properties.blockLength))
        zb.writeRepeatingByte(0, count: Int(properties.blockLength))
        self.zeroBlock = zb
        let zeroLength = Int(min(geometry.info.maxTransferLength, 1 << 20))
        var zc = ByteBufferAllocator().buffer(capacity: zeroLength)
        zc.writeRepeatingByte(0, count: zeroLength)
        self.zeroChunk = zc
        runner.unitAttentions.setHandler { [weak self] sense in self?.unitAttention(sense) }
    }

    // MARK: - Opening

    /// Probes `lun` and returns a device. Fails with `SCSIProbeError` when the LUN is absent, not a
    /// direct-access device, or a mandatory command (TEST UNIT READY, INQUIRY, READ CAPACITY) fails.
    public static func open(
        transport: any SCSITransport, lun: LogicalUnitNumber, logger: Logger,
        retryPolicy: RetryPolicy = .default
    ) -> EventLoopFuture<SCSIBlockDevice> {
        let runner = CommandRunner(transport: transport, lun: lun, policy: retryPolicy, logger: logger)
        return transport.eventLoop.makeFutureWithTask {
            let properties = try await SCSIProbe(runner: runner, logger: logger).properties()
            let device = SCSIBlockDevice(runner: runner, properties: properties, logger: logger)
            logger.info(
                "opened SCSI block device",
                metadata: [
                    "scsi.lun": "\(lun)", "device": "\(device.info.description)",
                    "size": "\(device.info.size)", "identity": "\(device.lunIdentity)",
                ])
            return device
        }
    }

    /// REPORT LUNS on LUN 0 (`SCSIProbe.reportLUNs`).
    public static func reportLUNs(
        transport: any SCSITransport, logger: Logger = Logger(label: "iscsi-nbd.scsi"),
        retryPolicy: RetryPolicy = .default
    ) -> EventLoopFuture<[LogicalUnitNumber]> {
        let runner = CommandRunner(transport: transport, lun: LogicalUnitNumber(0), policy: retryPolicy, logger: logger)
        return transport.eventLoop.makeFutureWithTask {
            try await SCSIProbe(runner: runner, logger: logger).reportLUNs()
        }
    }

    // MARK: - I/O

    private var loop: any EventLoop { transport.eventLoop }

    private func splitter(offset: UInt64, length: UInt64, maxBlocks: UInt32) -> RequestSplitter {
        RequestSplitter(offset: offset, length: length, blockSize: blockSize, maxBlocks: maxBlocks)
    }

    /// READ(10) when the LBA range fits 32 bits and the count 16 bits, else READ(16).
    public static func readCDB(lba: UInt64, blocks: UInt32) -> CDB {
        if lba + UInt64(blocks) <= 1 << 32, blocks < 1 << 16 {
            return .read10(lba: UInt32(lba), blocks: UInt16(blocks))
        }
        return .read16(lba: lba, blocks: blocks)
    }

    /// WRITE(10) when the LBA range fits 32 bits and the count 16 bits, else WRITE(16).
    public static func writeCDB(lba: UInt64, blocks: UInt32, fua: Bool) -> CDB {
        if lba + UInt64(blocks) <= 1 << 32, blocks < 1 << 16 {
            return .write10(lba: UInt32(lba), blocks: UInt16(blocks), fua: fua)
        }
        return .write16(lba: lba, blocks: blocks, fua: fua)
    }

    /// Checks a request and returns the strategy to run it with (one lock per request). The NBD server
    /// validates alignment before calling; this keeps an unvalidated caller from reaching the splitter's
    /// preconditions (nbd-proto.md: misaligned requests SHOULD get EINVAL). A fenced device fails with EIO.
    private func admit(_ offset: UInt64, _ length: UInt64) -> Result<SCSIBlockStrategy, BlockDeviceError> {
        let bs = UInt64(blockSize)
        if offset % bs != 0 || length % bs != 0 {
            return .failure(BlockDeviceError(.einval, "request at \(offset)+\(length) is not aligned to \(bs)-byte blocks"))
        }
        return current.withLockedValue { g in
            if let fenced = g.fenced { return .failure(BlockDeviceError(.eio, fenced)) }
            return .success(g.strategy)
        }
    }

    /// One contiguous buffer: the pieces are joined only when there is more than one (a read spanning
    /// several Data-In PDUs or several commands).
    public func read(offset: UInt64, length: UInt32) -> EventLoopFuture<ByteBuffer> {
        readSegments(offset: offset, length: length).map { pieces in
            if pieces.count == 1 { return pieces[0] }
            var out = ByteBufferAllocator().buffer(capacity: Int(length))
            for piece in pieces { out.writeImmutableBuffer(piece) }
            return out
        }
    }

    /// The data as the Data-In PDUs brought it, chunk after chunk: nothing is copied on the way to the caller.
    public func readSegments(offset: UInt64, length: UInt32) -> EventLoopFuture<[ByteBuffer]> {
        let strategy: SCSIBlockStrategy
        switch admit(offset, UInt64(length)) {
        case .success(let s): strategy = s
        case .failure(let error): return loop.makeFailedFuture(error)
        }
        let chunks = splitter(offset: offset, length: UInt64(length), maxBlocks: strategy.maxTransferBlocks)
        if chunks.count <= 1 {
            guard chunks.count == 1 else { return loop.makeSucceededFuture([]) }
            return readChunk(chunks[0])
        }
        // Split read: each chunk's pieces in its slot, concatenated in order at the end.
        let parts = NIOLockedValueBox([[ByteBuffer]](repeating: [], count: chunks.count))
        return runChunks(count: chunks.count, maxInFlight: Self.maxChunksInFlight, on: loop) { i in
            self.readChunk(chunks[i]).map { pieces in parts.withLockedValue { $0[i] = pieces } }
        }.map { parts.withLockedValue { Array($0.joined()) } }
    }

    private func readChunk(_ chunk: RequestSplitter.Chunk) -> EventLoopFuture<[ByteBuffer]> {
        let command = SCSICommand(
            cdb: Self.readCDB(lba: chunk.lba, blocks: chunk.blocks), expectedDataInLength: UInt32(chunk.byteLength),
            segmentedDataIn: true)
        return runner.execute(command, kind: .read) { result throws(BlockDeviceError) in
            let pieces = result.dataInPieces
            let received = pieces.reduce(0) { $0 + $1.readableBytes }
            guard received >= chunk.byteLength else {
                throw BlockDeviceError(.eio, "READ at LBA \(chunk.lba): \(received) of \(chunk.byteLength) bytes")
            }
            return received == chunk.byteLength ? pieces : Self.prefix(pieces, bytes: chunk.byteLength)
        }
    }

    /// The first `bytes` bytes of `pieces` (a target may send more than asked; residual overflow).
    static func prefix(_ pieces: [ByteBuffer], bytes: Int) -> [ByteBuffer] {
        var out: [ByteBuffer] = []
        out.reserveCapacity(pieces.count)
        var left = bytes
        for piece in pieces where left > 0 {
            if piece.readableBytes <= left {
                out.append(piece)
                left -= piece.readableBytes
            } else {
                out.append(piece.getSlice(at: piece.readerIndex, length: left)!)
                left = 0
            }
        }
        return out
    }

    public func write(offset: UInt64, data: ByteBuffer, flags: BlockWriteFlags) -> EventLoopFuture<Void> {
        let strategy: SCSIBlockStrategy
        switch admit(offset, UInt64(data.readableBytes)) {
        case .success(let s): strategy = s
        case .failure(let error): return loop.makeFailedFuture(error)
        }
        let fua = flags.contains(.fua)
        let nativeFUA = fua && strategy.nativeFUA
        let chunks = splitter(offset: offset, length: UInt64(data.readableBytes), maxBlocks: strategy.maxTransferBlocks)
        if chunks.count == 1, !(fua && strategy.fuaNeedsFlush) {
            // The common case: one WRITE, one promise (no chunk runner, no future chain).
            let chunk = chunks[0]
            let command = SCSICommand(cdb: Self.writeCDB(lba: chunk.lba, blocks: chunk.blocks, fua: nativeFUA), dataOut: data)
            return runner.execute(command, kind: .write) { _ throws(BlockDeviceError) in () }
        }
        let written = runChunks(count: chunks.count, maxInFlight: Self.maxChunksInFlight, on: loop) { i in
            let chunk = chunks[i]
            // Zero-copy: each command carries a slice of the request payload.
            let slice = data.getSlice(at: data.readerIndex + chunk.byteOffset, length: chunk.byteLength)!
            let command = SCSICommand(
                cdb: Self.writeCDB(lba: chunk.lba, blocks: chunk.blocks, fua: nativeFUA), dataOut: slice)
            return self.runner.execute(command, kind: .write).map { _ in }
        }
        return afterWrite(written, fua: fua && strategy.fuaNeedsFlush)
    }

    /// Adds the SYNCHRONIZE CACHE that emulates FUA, when needed.
    private func afterWrite(_ future: EventLoopFuture<Void>, fua flush: Bool) -> EventLoopFuture<Void> {
        let done = flush ? future.flatMap { self.synchronizeCache() } : future
        return done.mapErrorToBlockDeviceError()
    }

    public func flush() -> EventLoopFuture<Void> {
        if case .failure(let error) = admit(0, 0) { return loop.makeFailedFuture(error) }
        return synchronizeCache().mapErrorToBlockDeviceError()
    }

    private func synchronizeCache() -> EventLoopFuture<Void> {
        let first = fallbacks.withLockedValue { $0.first(.flush) }
        return perform(.flush, first, offset: 0, length: 0)
    }

    public func trim(offset: UInt64, length: UInt32, flags writeFlags: BlockWriteFlags) -> EventLoopFuture<Void> {
        let strategy: SCSIBlockStrategy
        switch admit(offset, UInt64(length)) {
        case .success(let s): strategy = s
        case .failure(let error): return loop.makeFailedFuture(error)
        }
        let request = SCSIFallbacks.Request.trim(strategy)
        let first = fallbacks.withLockedValue { $0.first(request) }
        // Advisory (nbd-proto.md NBD_CMD_TRIM): with no way to trim there is nothing to do, not even FUA's flush.
        if first == .succeed { return loop.makeSucceededVoidFuture() }
        let trimmed = perform(request, first, offset: offset, length: length)
        return afterWrite(trimmed, fua: writeFlags.contains(.fua) && strategy.writeCacheEnabled)
    }

    public func writeZeroes(offset: UInt64, length: UInt32, flags writeFlags: BlockWriteFlags) -> EventLoopFuture<Void> {
        let strategy: SCSIBlockStrategy
        switch admit(offset, UInt64(length)) {
        case .success(let s): strategy = s
        case .failure(let error): return loop.makeFailedFuture(error)
        }
        let noHole = writeFlags.contains(.noHole)
        let request: SCSIFallbacks.Request =
            writeFlags.contains(.fastZero)
            ? .fastZero(strategy, noHole: noHole) : .writeZeroes(strategy, noHole: noHole)
        // A fast zero that cannot be fast fails at once in `perform`, without touching the LU.
        let first = fallbacks.withLockedValue { $0.first(request) }
        let zeroed = perform(request, first, offset: offset, length: length)
        return afterWrite(zeroed, fua: writeFlags.contains(.fua) && strategy.writeCacheEnabled)
    }

    /// Carries out `step` of `request`; when the target refuses the method, `SCSIFallbacks` learns it and
    /// names the next step.
    private func perform(
        _ request: SCSIFallbacks.Request, _ step: SCSIFallbacks.Step, offset: UInt64, length: UInt32
    ) -> EventLoopFuture<Void> {
        let method: SCSIFallbacks.Method
        switch step {
        case .issue(let m): method = m
        case .succeed: return loop.makeSucceededVoidFuture()
        case .notSupported(let why): return loop.makeFailedFuture(BlockDeviceError(.enotsup, why))
        }
        return issue(method, kind: request.kind, offset: offset, length: length).flatMapError { error in
            guard let next = self.fallbacks.withLockedValue({ $0.failed(method, for: request, with: error) }) else {
                return self.loop.makeFailedFuture(error)
            }
            if case .trim = request {
                self.logger.notice("target rejected trim; disabling it", metadata: ["error": "\(error)"])
            } else if method == .writeSame {
                self.logger.notice("target rejected WRITE SAME; emulating write zeroes", metadata: ["error": "\(error)"])
            }
            return self.perform(request, next, offset: offset, length: length)
        }
    }

    private func issue(
        _ method: SCSIFallbacks.Method, kind: SCSIRequestKind, offset: UInt64, length: UInt32
    ) -> EventLoopFuture<Void> {
        switch method {
        case .synchronizeCache10:
            return runner.execute(SCSICommand(cdb: .synchronizeCache10()), kind: kind).map { _ in }
        case .synchronizeCache16:
            return runner.execute(SCSICommand(cdb: .synchronizeCache16()), kind: kind).map { _ in }
        case .unmap:
            return unmap(offset: offset, length: length)
        case .writeSameUnmap:
            return writeSame(offset: offset, length: UInt64(length), unmap: true, kind: kind)
        case .writeSame:
            return writeSame(offset: offset, length: UInt64(length), unmap: false, kind: kind)
        case .writeZeroBuffers:
            return emulateWriteZeroes(offset: offset, length: length)
        }
    }

    private func unmap(offset: UInt64, length: UInt32) -> EventLoopFuture<Void> {
        // One descriptor per command, each within MAXIMUM UNMAP LBA COUNT (§5.8).
        let chunks = splitter(offset: offset, length: UInt64(length), maxBlocks: strategy.maxUnmapBlocks)
        return runChunks(count: chunks.count, maxInFlight: Self.maxChunksInFlight, on: loop) { i in
            let chunk = chunks[i]
            var list = ByteBufferAllocator().buffer(capacity: UnmapParameterList.length(descriptors: 1))
            let listLength = UnmapParameterList.write([UnmapBlockDescriptor(lba: chunk.lba, blocks: chunk.blocks)], to: &list)
            let command = SCSICommand(cdb: .unmap(parameterListLength: listLength), dataOut: list)
            return self.runner.execute(command, kind: .trim).map { _ in }
        }
    }

    private func writeSame(offset: UInt64, length: UInt64, unmap: Bool, kind: SCSIRequestKind) -> EventLoopFuture<Void> {
        let chunks = splitter(offset: offset, length: length, maxBlocks: strategy.maxWriteSameBlocks)
        return runChunks(count: chunks.count, maxInFlight: Self.maxChunksInFlight, on: loop) { i in
            let chunk = chunks[i]
            let command = SCSICommand(
                cdb: .writeSame16(lba: chunk.lba, blocks: chunk.blocks, unmap: unmap), dataOut: self.zeroBlock)
            return self.runner.execute(command, kind: kind).map { _ in }
        }
    }

    private func emulateWriteZeroes(offset: UInt64, length: UInt32) -> EventLoopFuture<Void> {
        let maxBlocks = min(strategy.maxTransferBlocks, UInt32(zeroChunk.readableBytes) / blockSize)
        let chunks = splitter(offset: offset, length: UInt64(length), maxBlocks: max(1, maxBlocks))
        return runChunks(count: chunks.count, maxInFlight: Self.maxChunksInFlight, on: loop) { i in
            let chunk = chunks[i]
            let zeros = self.zeroChunk.getSlice(at: self.zeroChunk.readerIndex, length: chunk.byteLength)!
            let command = SCSICommand(cdb: Self.writeCDB(lba: chunk.lba, blocks: chunk.blocks, fua: false), dataOut: zeros)
            return self.runner.execute(command, kind: .writeZeroes).map { _ in }
        }
    }
}

extension EventLoopFuture {
    /// Failures leave the device as `BlockDeviceError` (the `BlockDevice` contract).
    func mapErrorToBlockDeviceError() -> EventLoopFuture<Value> {
        flatMapErrorThrowing { throw $0.asBlockDeviceError }
    }
}
