import NIOCore

/// READ CAPACITY(10) parameter data (scsi-commands.md §5.4).
public struct ReadCapacity10Data: Hashable, Sendable {
    /// The last LBA. FFFFFFFFh means "too large: use READ CAPACITY(16)".
    public var lastLBA: UInt32
    public var blockLength: UInt32
    public init(lastLBA: UInt32, blockLength: UInt32) {
        self.lastLBA = lastLBA
        self.blockLength = blockLength
    }
    public var needsReadCapacity16: Bool { lastLBA == 0xFFFF_FFFF }

    public init(parsing buffer: ByteBuffer) throws(SCSIParseError) {
        let ctx = "READ CAPACITY(10) data"
        try buffer.scsiRequire(8, ctx)
        self.lastLBA = buffer.scsiInteger(at: 0, as: UInt32.self) ?? 0
        self.blockLength = buffer.scsiInteger(at: 4, as: UInt32.self) ?? 0
        guard blockLength > 0 else { throw SCSIParseError(.invalidValue, ctx, "block length is 0") }
    }

    public func encode() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(lastLBA)
        b.writeInteger(blockLength)
        return b
    }
}

/// READ CAPACITY(16) parameter data (scsi-commands.md §5.5).
public struct ReadCapacity16Data: Hashable, Sendable {
    public var lastLBA: UInt64
    public var blockLength: UInt32
    /// PROT_EN and P_TYPE (protection information).
    public var protectionEnabled: Bool = false
    public var protectionType: UInt8 = 0
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT: physical block = blockLength << exponent.
    public var physicalBlockExponent: UInt8 = 0
    /// LBPME: logical block provisioning management enabled (thin LU).
    public var provisioningManagementEnabled: Bool = false
    /// LBPRZ: unmapped blocks read as zeros.
    public var unmappedReadsZero: Bool = false
    public var lowestAlignedLBA: UInt16 = 0

    public init(lastLBA: UInt64, blockLength: UInt32) {
        self.lastLBA = lastLBA
        self.blockLength = blockLength
    }

    /// Number of logical blocks (last LBA + 1), nil if it overflows.
    public var blockCount: UInt64? { lastLBA == .max ? nil : lastLBA + 1 }

    /// Requires the first 16 bytes (through LOWEST ALIGNED LBA); the reserved tail may be absent.
    public init(parsing buffer: ByteBuffer) throws(SCSIParseError) {
        let ctx = "READ CAPACITY(16) data"
        try buffer.scsiRequire(16, ctx)
        self.lastLBA = buffer.scsiInteger(at: 0, as: UInt64.self) ?? 0
        self.blockLength = buffer.scsiInteger(at: 8, as: UInt32.self) ?? 0
        guard blockLength > 0 else { throw SCSIParseError(.invalidValue, ctx, "block length is 0") }
        let b12 = buffer.scsiInteger(at: 12, as: UInt8.self) ?? 0
        self.protectionEnabled = b12 & 0x01 != 0
        self.protectionType = (b12 >> 1) & 0x07
        self.physicalBlockExponent = (buffer.scsiInteger(at: 13, as: UInt8.self) ?? 0) & 0x0F
        let b14 = buffer.scsiInteger(at: 14, as: UInt8.self) ?? 0
        self.provisioningManagementEnabled = b14 & 0x80 != 0
        self.unmappedReadsZero = b14 & 0x40 != 0
        self.lowestAlignedLBA = UInt16(b14 & 0x3F) << 8 | UInt16(buffer.scsiInteger(at: 15, as: UInt8.self) ?? 0)
    }

    public func encode() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(lastLBA)
        b.writeInteger(blockLength)
        b.writeInteger(UInt8((protectionType & 7) << 1 | (protectionEnabled ? 1 : 0)))
        b.writeInteger(physicalBlockExponent & 0x0F)
        b.writeInteger(
            UInt8((provisioningManagementEnabled ? 0x80 : 0) | (unmappedReadsZero ? 0x40 : 0))
                | UInt8(truncatingIfNeeded: lowestAlignedLBA >> 8) & 0x3F)
        b.writeInteger(UInt8(truncatingIfNeeded: lowestAlignedLBA))
        b.writeRepeatingByte(0, count: 16)
        return b
    }
}

// MARK: - MODE SENSE

/// One mode page as returned by MODE SENSE: code, subpage, and the page bytes after the page header.
public struct ModePage: Hashable, Sendable {
    public var pageCode: UInt8
    public var subpageCode: UInt8
    /// Page parameter bytes (after byte 1, or after byte 3 for SPF pages), a slice of the response.
    public var parameters: ByteBuffer
}

/// The Caching mode page (08h) fields we use.
public struct CachingModePage: Hashable, Sendable {
    /// WCE: write cache enabled (SYNCHRONIZE CACHE matters).
    public var writeCacheEnabled: Bool
    /// RCD: read cache disabled.
    public var readCacheDisabled: Bool
    public init(writeCacheEnabled: Bool, readCacheDisabled: Bool = false) {
        self.writeCacheEnabled = writeCacheEnabled
        self.readCacheDisabled = readCacheDisabled
    }
}

/// MODE SENSE(6)/(10) parameter data: header and pages (scsi-commands.md §5.11).
public struct ModeParameters: Hashable, Sendable {
    public var mediumType: UInt8
    /// Device-specific parameter bit 7 (direct access): WP.
    public var writeProtected: Bool
    /// Device-specific parameter bit 4 (direct access): DPOFUA.
    public var dpoFUA: Bool
    public var blockDescriptorLength: Int
    public var pages: [ModePage]

    /// The Caching page (08h), if present and long enough to hold byte 2.
    public var caching: CachingModePage? {
        guard let p = pages.first(where: { $0.pageCode == ModePageCode.caching && $0.subpageCode == 0 }),
            let b2 = p.parameters.scsiInteger(at: 0, as: UInt8.self)
        else { return nil }
        return CachingModePage(writeCacheEnabled: b2 & 0x04 != 0, readCacheDisabled: b2 & 0x01 != 0)
    }

    /// Parses MODE SENSE(6) data (`tenByte` false: 4-byte header) or MODE SENSE(10) data (8-byte header).
    /// The data may be cut short by the allocation length: pages are read as far as they are complete,
    /// a partial trailing page is ignored. A header that contradicts itself is an error.
    public init(parsing buffer: ByteBuffer, tenByte: Bool) throws(SCSIParseError) {
        let ctx = tenByte ? "MODE SENSE(10) data" : "MODE SENSE(6) data"
        let headerLength = tenByte ? 8 : 4
        try buffer.scsiRequire(headerLength, ctx)
        let modeDataLength: Int
        let dsp: UInt8
        if tenByte {
            modeDataLength = Int(buffer.scsiInteger(at: 0, as: UInt16.self) ?? 0) + 2
            self.mediumType = buffer.scsiInteger(at: 2, as: UInt8.self) ?? 0
            dsp = buffer.scsiInteger(at: 3, as: UInt8.self) ?? 0
            self.blockDescriptorLength = Int(buffer.scsiInteger(at: 6, as: UInt16.self) ?? 0)
        } else {
            modeDataLength = Int(buffer.scsiInteger(at: 0, as: UInt8.self) ?? 0) + 1
            self.mediumType = buffer.scsiInteger(at: 1, as: UInt8.self) ?? 0
            dsp = buffer.scsiInteger(at: 2, as: UInt8.self) ?? 0
            self.blockDescriptorLength = Int(buffer.scsiInteger(at: 3, as: UInt8.self) ?? 0)
        }
        self.writeProtected = dsp & 0x80 != 0
        self.dpoFUA = dsp & 0x10 != 0
        guard modeDataLength >= headerLength else {
            throw SCSIParseError(.inconsistent, ctx, "MODE DATA LENGTH \(modeDataLength) is shorter than the header")
        }
        guard headerLength + blockDescriptorLength <= modeDataLength else {
            throw SCSIParseError(
                .inconsistent, ctx,
                "block descriptor length \(blockDescriptorLength) exceeds MODE DATA LENGTH \(modeDataLength)")
        }
        let end = min(modeDataLength, buffer.readableBytes)
        var pages: [ModePage] = []
        var off = headerLength + blockDescriptorLength
        while off + 2 <= end {
            let b0 = buffer.scsiInteger(at: off, as: UInt8.self) ?? 0
            let spf = b0 & 0x40 != 0
            let code = b0 & 0x3F
            let subpage: UInt8
            let length: Int
            let paramsAt: Int
            if spf {
                guard off + 4 <= end else { break }
                subpage = buffer.scsiInteger(at: off + 1, as: UInt8.self) ?? 0
                length = Int(buffer.scsiInteger(at: off + 2, as: UInt16.self) ?? 0)
                paramsAt = off + 4
            } else {
                subpage = 0
                length = Int(buffer.scsiInteger(at: off + 1, as: UInt8.self) ?? 0)
                paramsAt = off + 2
            }
            guard paramsAt + length <= end,
                let params = buffer.getSlice(at: buffer.readerIndex + paramsAt, length: length)
            else { break }
            pages.append(ModePage(pageCode: code, subpageCode: subpage, parameters: params))
            off = paramsAt + length
        }
        self.pages = pages
    }

    /// Encodes header + pages (for fakes); no block descriptors.
    public static func encode(
        tenByte: Bool, writeProtected: Bool, dpoFUA: Bool, pages: [(code: UInt8, parameters: [UInt8])]
    ) -> ByteBuffer {
        var body = ByteBuffer()
        for p in pages {
            body.writeInteger(p.code & 0x3F)
            body.writeInteger(UInt8(p.parameters.count))
            body.writeBytes(p.parameters)
        }
        let dsp = UInt8((writeProtected ? 0x80 : 0) | (dpoFUA ? 0x10 : 0))
        var b = ByteBuffer()
        if tenByte {
            b.writeInteger(UInt16(6 + body.readableBytes))
            b.writeInteger(UInt8(0))
            b.writeInteger(dsp)
            b.writeInteger(UInt16(0))
            b.writeInteger(UInt16(0))
        } else {
            b.writeInteger(UInt8(truncatingIfNeeded: 3 + body.readableBytes))
            b.writeInteger(UInt8(0))
            b.writeInteger(dsp)
            b.writeInteger(UInt8(0))
        }
        b.writeBuffer(&body)
        return b
    }
}

// MARK: - REPORT LUNS

/// REPORT LUNS parameter data (scsi-commands.md §5.10).
public struct ReportLUNsData: Hashable, Sendable {
    public var luns: [LogicalUnitNumber]
    public init(luns: [LogicalUnitNumber]) { self.luns = luns }

    /// Parses the list. When the LUN LIST LENGTH says more than arrived, throws `.truncated` with
    /// `requiredLength` = list length + 8, so the caller can re-issue with that allocation length.
    /// The list length must be a multiple of 8 and is capped at 8 MiB (sanity bound on peer data).
    public init(parsing buffer: ByteBuffer) throws(SCSIParseError) {
        let ctx = "REPORT LUNS data"
        try buffer.scsiRequire(8, ctx)
        let listLength = Int(buffer.scsiInteger(at: 0, as: UInt32.self) ?? 0)
        guard listLength % 8 == 0, listLength <= 8 << 20 else {
            throw SCSIParseError(.inconsistent, ctx, "LUN LIST LENGTH \(listLength) is not a multiple of 8 or too large")
        }
        try buffer.scsiRequire(8 + listLength, ctx, total: 8 + listLength)
        var luns: [LogicalUnitNumber] = []
        luns.reserveCapacity(listLength / 8)
        var off = 8
        while off < 8 + listLength {
            luns.append(LogicalUnitNumber(encoded: buffer.scsiInteger(at: off, as: UInt64.self) ?? 0))
            off += 8
        }
        self.luns = luns
    }

    public func encode() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(UInt32(luns.count * 8))
        b.writeInteger(UInt32(0))
        for l in luns { b.writeInteger(l.encoded) }
        return b
    }
}
