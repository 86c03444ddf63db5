import BlockBackend
import SCSI

/// Everything the probe learned about a logical unit.
public struct SCSIDeviceProperties: Sendable, Hashable {
    public var inquiry: StandardInquiryData
    /// Nil when the target does not answer VPD 00h.
    public var supportedVPDPages: SupportedVPDPages?
    public var serialNumber: String?
    public var deviceIdentification: DeviceIdentification?
    public var blockLimits: BlockLimits?
    public var characteristics: BlockDeviceCharacteristics?
    public var provisioning: LogicalBlockProvisioning?
    public var blockCount: UInt64
    public var blockLength: UInt32
    public var physicalBlockExponent: UInt8 = 0
    /// LBPME from READ CAPACITY(16); false when only (10) worked.
    public var provisioningManagementEnabled: Bool = false
    /// LBPRZ from READ CAPACITY(16) or VPD B2h.
    public var unmappedReadsZero: Bool = false
    public var writeProtected: Bool = false
    public var dpoFUA: Bool = false
    /// WCE; assumed true when the Caching page could not be read (so FLUSH is never skipped wrongly).
    public var writeCacheEnabled: Bool = true
    public var usedReadCapacity16: Bool = false

    public init(inquiry: StandardInquiryData, blockCount: UInt64, blockLength: UInt32) {
        self.inquiry = inquiry
        self.blockCount = blockCount
        self.blockLength = blockLength
    }
}

/// How block requests are turned into commands, derived from the probe (pure; tested on its own).
public struct SCSIBlockStrategy: Sendable, Hashable {
    /// Cap on one NBD request's payload: 32 MiB (the usual NBD maximum payload, and the kernel's).
    public static let maxTransferCap: UInt32 = 32 << 20
    /// Cap on the preferred block size derived from the optimal transfer granularity.
    public static let preferredBlockCap: UInt32 = 1 << 20

    public var blockSize: UInt32
    public var blockCount: UInt64
    /// Most blocks per READ/WRITE command (Block Limits MAXIMUM TRANSFER LENGTH, or the cap).
    public var maxTransferBlocks: UInt32
    /// WRITE with FUA = 1 (DPOFUA); otherwise FUA is a WRITE then SYNCHRONIZE CACHE (when WCE = 1).
    public var nativeFUA: Bool
    public var writeCacheEnabled: Bool
    /// UNMAP is advertised (LBPME, LBPU and a non-zero MAXIMUM UNMAP LBA COUNT when B0h reports one).
    public var useUnmap: Bool
    public var maxUnmapBlocks: UInt32
    /// WRITE SAME(16) with UNMAP = 1 is advertised (LBPME and LBPWS).
    public var writeSameUnmap: Bool
    /// Most blocks per WRITE SAME (MAXIMUM WRITE SAME LENGTH, or 2³²−1 when not stated).
    public var maxWriteSameBlocks: UInt32
    /// Unmapped blocks read back as zeros, so WRITE SAME UNMAP is a fast zero.
    public var unmappedReadsZero: Bool

    public init(properties p: SCSIDeviceProperties) {
        blockSize = p.blockLength
        blockCount = p.blockCount
        let capBlocks = max(1, Self.maxTransferCap / p.blockLength)
        if let mtl = p.blockLimits?.maximumTransferLength, mtl > 0 {
            maxTransferBlocks = min(mtl, capBlocks)
        } else {
            maxTransferBlocks = capBlocks
        }
        nativeFUA = p.dpoFUA
        writeCacheEnabled = p.writeCacheEnabled
        let lbp = p.provisioning
        let maxUnmap = p.blockLimits?.maximumUnmapLBACount
        let maxUnmapDescriptors = p.blockLimits?.maximumUnmapBlockDescriptorCount
        useUnmap =
            p.provisioningManagementEnabled && (lbp?.unmapSupported ?? false) && maxUnmap != 0
            && maxUnmapDescriptors != 0
        maxUnmapBlocks = maxUnmap.map { $0 == 0 ? 1 : $0 } ?? .max
        writeSameUnmap = p.provisioningManagementEnabled && (lbp?.writeSame16UnmapSupported ?? false)
        if let wsl = p.blockLimits?.maximumWriteSameLength, wsl > 0 {
            maxWriteSameBlocks = UInt32(clamping: wsl)
        } else {
            maxWriteSameBlocks = .max
        }
        unmappedReadsZero = p.unmappedReadsZero || (lbp?.unmappedReadsZero ?? false)
    }

    public var canTrim: Bool { useUnmap || writeSameUnmap }
    public var canFastZero: Bool { writeSameUnmap && unmappedReadsZero }
    /// FUA needs an explicit SYNCHRONIZE CACHE after the write.
    public var fuaNeedsFlush: Bool { !nativeFUA && writeCacheEnabled }

    /// The `BlockDeviceInfo` for NBD.
    public static func info(properties p: SCSIDeviceProperties, strategy s: SCSIBlockStrategy) -> BlockDeviceInfo {
        let bs = p.blockLength
        let maxTransfer = s.maxTransferBlocks * bs
        var preferred = bs << min(UInt32(p.physicalBlockExponent), 31 - UInt32(bs.trailingZeroBitCount))
        if let g = p.blockLimits?.optimalTransferLengthGranularity, g > 0 {
            let bytes = UInt64(g) * UInt64(bs)
            if bytes.nonzeroBitCount == 1, bytes <= UInt64(Self.preferredBlockCap), bytes > UInt64(preferred) {
                preferred = UInt32(bytes)
            }
        }
        if preferred > maxTransfer || preferred.nonzeroBitCount != 1 { preferred = bs }
        let optimal = optimalTransfer(properties: p, maxTransfer: maxTransfer)
        var description = [p.inquiry.vendor, p.inquiry.product].filter { !$0.isEmpty }.joined(separator: " ")
        if let serial = p.serialNumber, !serial.isEmpty { description += " (serial \(serial))" }
        return BlockDeviceInfo(
            size: p.blockCount * UInt64(bs), logicalBlockSize: bs, preferredBlockSize: preferred,
            maxTransferLength: maxTransfer, optimalTransferLength: optimal, readOnly: p.writeProtected, canFlush: p.writeCacheEnabled, canFUA: true,
            canTrim: s.canTrim, canWriteZeroes: true, canFastZero: s.canFastZero, canMultiConn: true,
            rotational: p.characteristics?.isRotational ?? false, description: description)
    }

    /// Block Limits OPTIMAL TRANSFER LENGTH in bytes where sd would take it as the disk's request size
    /// (drivers/scsi/sd.c `sd_validate_opt_xfer_size`, 6.1), else 0: stated (non-zero), not above the maximum
    /// transfer length, a multiple of the physical block size and of the OPTIMAL TRANSFER LENGTH GRANULARITY
    /// (when that one is itself a multiple of the physical block size, `sd_validate_min_xfer_size`).
    /// scsi-commands.md §5.3 (SBC-4 6.6.3, Block Limits VPD page B0h). The page-size floor is the kernel
    /// side's (`NBDQueueLimits`).
    static func optimalTransfer(properties p: SCSIDeviceProperties, maxTransfer: UInt32) -> UInt32 {
        guard let limits = p.blockLimits, limits.optimalTransferLength > 0 else { return 0 }
        let bs = UInt64(p.blockLength)
        let bytes = UInt64(limits.optimalTransferLength) * bs
        let physical = bs << min(UInt64(p.physicalBlockExponent), 16)
        guard bytes <= UInt64(maxTransfer), bytes % physical == 0 else { return 0 }
        let granularity = UInt64(limits.optimalTransferLengthGranularity) * bs
        if granularity > 0, granularity % physical == 0, bytes % granularity != 0 { return 0 }
        return UInt32(bytes)
    }
}
