import BlockBackend
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SCSI

/// A SCSI direct-access logical unit served as a `BlockDevice`, over any `SCSITransport`.
///
/// Open it with `open(transport:lun:logger:)`, which probes the LUN (scsi-commands.md §6) and derives
/// `info`. Requests map to commands as follows:
/// - read → READ(10) when the LBA range fits 32 bits and the count 16 bits, else READ(16);
/// - write → WRITE(10)/(16), FUA bit set when the target reports DPOFUA; otherwise a FUA write is
///   WRITE then SYNCHRONIZE CACHE (only when WCE = 1: without a volatile cache GOOD already means durable);
/// - flush → SYNCHRONIZE CACHE(10) of the whole LU (LBA 0, 0 blocks), (16) when (10) is not implemented;
/// - trim → UNMAP, or WRITE SAME(16) with UNMAP = 1; advisory, so an unsupported trim succeeds;
/// - write zeroes → WRITE SAME(16) with a zero block (UNMAP = 1 when NO_HOLE is clear and unmapped blocks
///   read as zeros), emulated with WRITE of zero buffers when the target rejects WRITE SAME.
/// What the target turns out to refuse is learnt in `SCSIFallbacks`. Requests longer than the per-command
/// limits are split (`RequestSplitter`) and issued concurrently, at most `maxChunksInFlight` at a time.
/// Errors map through `SCSIErrorMapping`; retries follow `RetryPolicy`.
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

    /// Most sub-commands of one split request in flight at once.
    public static let maxChunksInFlight = 16

    private let runner: CommandRunner
    private let logger: Logger
    /// The logical block length; fixed for the life of the device (a change needs a new device).
    private let blockSize: UInt32
    /// One zeroed logical block: the WRITE SAME data-out.
    private let zeroBlock: ByteBuffer
    /// Zeros for emulated write-zeroes (≤ 1 MiB), sliced per command.
    private let zeroChunk: ByteBuffer

    private struct Geometry {
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
    private let current: NIOLockedValueBox<Geometry>

    /// The refresh after a unit attention: one at a time, one more when another attention arrived meanwhile.
    private struct RefreshState {
        var refreshing = false
        var refreshAgain = false
        var infoChanged: (@Sendable (BlockDeviceInfo) -> Void)?
    }
    private let refreshState = NIOLockedValueBox(RefreshState())

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

    // MARK: - Changes announced by unit attention

    /// Called with the new `info` after a refresh changed it (e.g. the LU was resized on the target).
    public func onInfoChange(_ handler: @escaping @Sendable (BlockDeviceInfo) -> Void) {
        refreshState.withLockedValue { $0.infoChanged = handler }
    }

    private func unitAttention(_ sense: SenseData) {
        // scsi-commands.md §4: re-read capacity after 2A/09, mode data after 2A/01, identification after
        // 3F/03 and 3F/05, everything after a reset or I_T nexus loss (29/xx).
        let code = sense.code
        guard
            code == .capacityDataChanged || code == .modeParametersChanged || code == .inquiryDataChanged
                || code == .deviceIdentifierChanged || code.asc == 0x29
        else { return }
        logger.notice("unit attention: re-reading capacity and mode data", metadata: ["scsi.sense": "\(sense)"])
        let start = refreshState.withLockedValue { r -> Bool in
            if r.refreshing {
                r.refreshAgain = true
                return false
            }
            r.refreshing = true
            return true
        }
        if start { backgroundRefresh() }
    }

    private func backgroundRefresh() {
        refresh().whenComplete { result in
            if case .failure(let error) = result {
                self.logger.warning("refresh after unit attention failed", metadata: ["error": "\(error)"])
            }
            let again = self.refreshState.withLockedValue { r -> Bool in
                if r.refreshAgain {
                    r.refreshAgain = false
                    return true
                }
                r.refreshing = false
                return false
            }
            if again { self.backgroundRefresh() }
        }
    }

    /// Re-reads capacity (READ CAPACITY) and mode data (WP, DPOFUA, WCE) and updates `info`.
    /// Fails if the logical block length changed: that needs a new device.
    public func refresh() -> EventLoopFuture<BlockDeviceInfo> {
        let runner = self.runner
        let logger = self.logger
        return transport.eventLoop.makeFutureWithTask {
            let old = self.properties
            var p = old
            try await Self.probeCapacity(runner: runner, hasVPD: old.supportedVPDPages != nil, into: &p)
            try self.judgeAfterUnitAttention(p)
            // Same logical unit? (After a reset or reconnect the LUN could now name another LU.)
            // A page that cannot be read now keeps its old value: only a page that was read and differs
            // counts as a different logical unit (a transient failure must not fence a healthy device).
            if let supported = old.supportedVPDPages {
                if supported.contains(.unitSerialNumber),
                    let serial = await Self.readVPD(runner, logger, .unitSerialNumber, { try UnitSerialNumber(parsing: $0) })
                {
                    p.serialNumber = serial.serial
                }
                if supported.contains(.deviceIdentification),
                    let ident = await Self.readVPD(
                        runner, logger, .deviceIdentification, { try DeviceIdentification(parsing: $0) })
                {
                    p.deviceIdentification = ident
                }
            }
            try self.judgeAfterUnitAttention(p)
            await Self.probeMode(runner: runner, logger: logger, into: &p)
            let (info, changed) = self.current.withLockedValue { g -> (BlockDeviceInfo, Bool) in
                let before = g.info
                let fenced = g.fenced
                g = Geometry(p)
                g.fenced = fenced
                return (g.info, g.info != before)
            }
            if changed {
                logger.notice("device changed", metadata: ["size": "\(info.size)", "readOnly": "\(info.readOnly)"])
                self.refreshState.withLockedValue { $0.infoChanged }?(info)
            }
            return info
        }
    }

    /// Acts on the guard's verdict on what a refresh has re-read so far: first the capacity (so that a new
    /// block length stops the refresh before any VPD page is asked for), then the identification.
    private func judgeAfterUnitAttention(_ p: SCSIDeviceProperties) throws(SCSIProbeError) {
        switch identityGuard.afterUnitAttention(LUNIdentity(properties: p)) {
        case .same:
            return
        case .blockLengthChanged(let from, let to):
            throw SCSIProbeError(.unsupportedGeometry, "LUN \(lun): logical block length changed from \(from) to \(to)")
        case .different(let why):
            let message = "LUN \(lun) \(why)"
            logger.critical("fencing device: \(message)")
            current.withLockedValue { $0.fenced = message }
            throw SCSIProbeError(.identityChanged, message)
        }
    }

    // MARK: - Re-login

    /// Probes the LUN again over `transport` (the new connection after a session recovery, before queued
    /// I/O is released) and has the guard compare it with the logical unit served (`LUNIdentityGuard.afterRelogin`).
    /// Fails with `LUNIdentityMismatch` when another LUN answers (the caller must stop: never write to a
    /// different LUN); other failures (LUN not configured yet, connection lost) are worth retrying. A grown
    /// LUN updates `info` and calls the `onInfoChange` handler.
    public func verifyAfterRelogin(over transport: any SCSITransport) -> EventLoopFuture<ReloginIdentityVerdict> {
        let runner = CommandRunner(transport: transport, lun: lun, policy: self.runner.policy, logger: logger)
        let logger = self.logger
        let identityGuard = self.identityGuard
        return transport.eventLoop.makeFutureWithTask {
            let p: SCSIDeviceProperties
            do {
                p = try await Self.probe(runner: runner, logger: logger)
            } catch {
                throw identityGuard.afterRelogin(failedProbe: error) ?? error
            }
            let verdict = identityGuard.afterRelogin(LUNIdentity(properties: p))
            switch verdict {
            case .same:
                break
            case .different(let why):
                throw LUNIdentityMismatch("LUN \(runner.lun): \(why)")
            case .grown(let from, let to):
                logger.notice("LUN grew while the session was down", metadata: ["blocks.before": "\(from)", "blocks.now": "\(to)"])
                let info = self.current.withLockedValue { g -> BlockDeviceInfo in
                    g = Geometry(p)
                    return g.info
                }
                self.refreshState.withLockedValue { $0.infoChanged }?(info)
            }
            return verdict
        }
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
            let properties = try await probe(runner: runner, logger: logger)
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

    /// REPORT LUNS on LUN 0, re-issued once with a larger allocation length when the list is longer
    /// than the first answer (scsi-commands.md §5.10).
    public static func reportLUNs(
        transport: any SCSITransport, logger: Logger = Logger(label: "iscsi-nbd.scsi"),
        retryPolicy: RetryPolicy = .default
    ) -> EventLoopFuture<[LogicalUnitNumber]> {
        let runner = CommandRunner(transport: transport, lun: LogicalUnitNumber(0), policy: retryPolicy, logger: logger)
        return transport.eventLoop.makeFutureWithTask {
            var allocation: UInt32 = 4096
            for _ in 0..<2 {
                let result: SCSICommandResult
                do {
                    result = try await runner.run(.reportLUNs(allocationLength: allocation), dataIn: allocation)
                } catch {
                    throw SCSIProbeError(.commandFailed, "REPORT LUNS failed: \(error.asBlockDeviceError.message)")
                }
                do {
                    return try ReportLUNsData(parsing: result.dataIn ?? ByteBuffer()).luns
                } catch let error as SCSIParseError where error.kind == .truncated {
                    guard let needed = error.requiredLength, needed > Int(allocation) else {
                        throw SCSIProbeError(.invalidData, "REPORT LUNS: \(error)")
                    }
                    allocation = UInt32(needed)
                } catch {
                    throw SCSIProbeError(.invalidData, "REPORT LUNS: \(error)")
                }
            }
            throw SCSIProbeError(.invalidData, "REPORT LUNS: list still truncated after re-issuing")
        }
    }

    static func probe(runner: CommandRunner, logger: Logger) async throws -> SCSIDeviceProperties {
        let lun = runner.lun
        func failed(_ what: String, _ error: any Error) -> SCSIProbeError {
            SCSIProbeError(.commandFailed, "LUN \(lun): \(what) failed: \(error.asBlockDeviceError.message)")
        }
        // 1. TEST UNIT READY; unit attentions after login and becoming-ready are retried by the runner.
        do {
            _ = try await runner.run(.testUnitReady())
        } catch {
            throw failed("TEST UNIT READY", error)
        }

        // 2. Standard INQUIRY.
        let inquiry: StandardInquiryData
        do {
            let data = try await fetch(runner, initial: 96) { .inquiry(allocationLength: UInt16(clamping: $0)) } parse: {
                try StandardInquiryData(parsing: $0)
            }
            inquiry = data
        } catch let error as SCSIParseError {
            throw SCSIProbeError(.invalidData, "LUN \(lun): \(error)")
        } catch {
            throw failed("INQUIRY", error)
        }
        guard inquiry.peripheralQualifier == .connected else {
            throw SCSIProbeError(
                .noLogicalUnit, "LUN \(lun): no logical unit (peripheral qualifier: \(inquiry.peripheralQualifier))")
        }
        guard inquiry.peripheralDeviceType == .directAccess else {
            throw SCSIProbeError(
                .notDirectAccess,
                "LUN \(lun) is a \(inquiry.peripheralDeviceType) (type \(inquiry.peripheralDeviceType.rawValue)), "
                    + "not a direct-access block device")
        }

        // 3. VPD pages, each optional: a failure or garbage is logged and the page treated as absent.
        func vpd<T>(_ page: VPDPageCode, _ parse: (ByteBuffer) throws -> T) async -> T? {
            await readVPD(runner, logger, page, parse)
        }
        let supported = await vpd(.supportedPages) { try SupportedVPDPages(parsing: $0) }
        func has(_ page: VPDPageCode) -> Bool { supported?.contains(page) ?? false }
        let serial = has(.unitSerialNumber) ? await vpd(.unitSerialNumber) { try UnitSerialNumber(parsing: $0) } : nil
        let ident =
            has(.deviceIdentification) ? await vpd(.deviceIdentification) { try DeviceIdentification(parsing: $0) } : nil
        let limits = has(.blockLimits) ? await vpd(.blockLimits) { try BlockLimits(parsing: $0) } : nil
        let bdc =
            has(.blockDeviceCharacteristics)
            ? await vpd(.blockDeviceCharacteristics) { try BlockDeviceCharacteristics(parsing: $0) } : nil
        let lbp =
            has(.logicalBlockProvisioning)
            ? await vpd(.logicalBlockProvisioning) { try LogicalBlockProvisioning(parsing: $0) } : nil

        var p = SCSIDeviceProperties(inquiry: inquiry, blockCount: 0, blockLength: 0)
        p.supportedVPDPages = supported
        p.serialNumber = serial?.serial
        p.deviceIdentification = ident
        p.blockLimits = limits
        p.characteristics = bdc
        p.provisioning = lbp
        try await probeCapacity(runner: runner, hasVPD: supported != nil, into: &p)
        await probeMode(runner: runner, logger: logger, into: &p)
        return p
    }

    /// READ CAPACITY(16) first (fall back to (10) on ILLEGAL REQUEST), except for targets without VPD
    /// support (likely pre-SBC-3), which start with (10) and go to (16) on FFFFFFFFh (scsi-commands.md §5.4).
    static func probeCapacity(runner: CommandRunner, hasVPD: Bool, into p: inout SCSIDeviceProperties) async throws {
        let lun = runner.lun
        var rc16: ReadCapacity16Data?
        var rc10: ReadCapacity10Data?
        func readCapacity16() async throws -> ReadCapacity16Data {
            let r = try await runner.run(.readCapacity16(allocationLength: 32), dataIn: 32)
            return try ReadCapacity16Data(parsing: r.dataIn ?? ByteBuffer())
        }
        func readCapacity10() async throws -> ReadCapacity10Data {
            let r = try await runner.run(.readCapacity10(), dataIn: 8)
            return try ReadCapacity10Data(parsing: r.dataIn ?? ByteBuffer())
        }
        do {
            if hasVPD {
                do {
                    rc16 = try await readCapacity16()
                } catch let error as SCSICommandFailure where error.isIllegalRequest {
                    rc10 = try await readCapacity10()
                }
            } else {
                rc10 = try await readCapacity10()
            }
            if let r = rc10, r.needsReadCapacity16 {
                rc16 = try await readCapacity16()
            }
        } catch let error as SCSIParseError {
            throw SCSIProbeError(.invalidData, "LUN \(lun): \(error)")
        } catch {
            throw SCSIProbeError(
                .commandFailed, "LUN \(lun): READ CAPACITY failed: \(error.asBlockDeviceError.message)")
        }
        let blockLength: UInt32
        let lastLBA: UInt64
        if let rc16 {
            blockLength = rc16.blockLength
            lastLBA = rc16.lastLBA
        } else if let rc10 {
            blockLength = rc10.blockLength
            lastLBA = UInt64(rc10.lastLBA)
        } else {
            throw SCSIProbeError(.commandFailed, "LUN \(lun): no capacity")
        }
        guard blockLength >= 512, blockLength <= 65536, blockLength.nonzeroBitCount == 1 else {
            throw SCSIProbeError(
                .unsupportedGeometry,
                "LUN \(lun): logical block length \(blockLength) is not a power of two in 512...65536")
        }
        guard lastLBA < UInt64.max / UInt64(blockLength) else {
            throw SCSIProbeError(.unsupportedGeometry, "LUN \(lun): capacity overflows 64 bits")
        }
        p.blockCount = lastLBA + 1
        p.blockLength = blockLength
        p.usedReadCapacity16 = rc16 != nil
        p.physicalBlockExponent = rc16?.physicalBlockExponent ?? 0
        p.provisioningManagementEnabled = rc16?.provisioningManagementEnabled ?? false
        p.unmappedReadsZero = rc16?.unmappedReadsZero ?? false
    }

    /// MODE SENSE(10), then (6), for the Caching page (scsi-commands.md §5.11); optional: without an
    /// answer the defaults are not write protected, no DPOFUA, write cache on (so FLUSH is never skipped).
    static func probeMode(runner: CommandRunner, logger: Logger, into p: inout SCSIDeviceProperties) async {
        var mode: ModeParameters?
        do {
            let r = try await runner.run(.modeSense10(page: ModePageCode.caching, allocationLength: 512), dataIn: 512)
            mode = try ModeParameters(parsing: r.dataIn ?? ByteBuffer(), tenByte: true)
        } catch {
            logger.debug("MODE SENSE(10) failed, trying (6)", metadata: ["error": "\(error)"])
            for page in [ModePageCode.caching, ModePageCode.allPages] where mode == nil {
                do {
                    let r = try await runner.run(.modeSense6(page: page, allocationLength: 255), dataIn: 255)
                    mode = try ModeParameters(parsing: r.dataIn ?? ByteBuffer(), tenByte: false)
                } catch {
                    logger.debug("MODE SENSE(6) failed", metadata: ["error": "\(error)"])
                }
            }
        }
        if let mode {
            p.writeProtected = mode.writeProtected
            p.dpoFUA = mode.dpoFUA
            p.writeCacheEnabled = mode.caching?.writeCacheEnabled ?? true
        } else {
            logger.warning(
                "MODE SENSE unavailable; assuming writable, write cache on, no DPOFUA",
                metadata: ["scsi.lun": "\(runner.lun)"])
            p.writeProtected = false
            p.dpoFUA = false
            p.writeCacheEnabled = true
        }
    }

    /// Reads an optional VPD page; a failure or garbage is logged and gives nil.
    static func readVPD<T>(
        _ runner: CommandRunner, _ logger: Logger, _ page: VPDPageCode, _ parse: (ByteBuffer) throws -> T
    ) async -> T? {
        do {
            return try await fetch(runner, initial: 255) {
                .inquiry(page: page, allocationLength: UInt16(clamping: $0))
            } parse: { try parse($0) }
        } catch {
            logger.warning("ignoring \(page)", metadata: ["scsi.lun": "\(runner.lun)", "error": "\(error)"])
            return nil
        }
    }

    /// Issues a data-in command, and once more with a larger allocation length when the parser says the
    /// data was cut short (self-describing lengths, scsi-commands.md §5.3). Allocation lengths ≤ 65535.
    private static func fetch<T>(
        _ runner: CommandRunner, initial: Int, _ cdb: (Int) -> CDB, parse: (ByteBuffer) throws -> T
    ) async throws -> T {
        var allocation = initial
        while true {
            let r = try await runner.run(cdb(allocation), dataIn: UInt32(allocation))
            do {
                return try parse(r.dataIn ?? ByteBuffer())
            } catch let error as SCSIParseError where error.kind == .truncated {
                guard let needed = error.requiredLength, needed > allocation, needed <= 65535 else { throw error }
                allocation = needed
            }
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
            writeFlags.contains(.fastZero) ? .fastZero(strategy, noHole: noHole) : .writeZeroes(strategy, noHole: noHole)
        let first = fallbacks.withLockedValue { $0.first(request) }
        // A fast zero that cannot be fast fails at once, without touching the LU.
        if case .notSupported(let why) = first { return loop.makeFailedFuture(BlockDeviceError(.enotsup, why)) }
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
