import NIOCore

/// SCSI operation codes used by the initiator (scsi-commands.md §5). Open: any byte is representable.
public struct SCSIOpcode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let testUnitReady = SCSIOpcode(rawValue: 0x00)
    public static let requestSense = SCSIOpcode(rawValue: 0x03)
    public static let inquiry = SCSIOpcode(rawValue: 0x12)
    public static let modeSense6 = SCSIOpcode(rawValue: 0x1A)
    public static let readCapacity10 = SCSIOpcode(rawValue: 0x25)
    public static let read10 = SCSIOpcode(rawValue: 0x28)
    public static let write10 = SCSIOpcode(rawValue: 0x2A)
    public static let synchronizeCache10 = SCSIOpcode(rawValue: 0x35)
    public static let writeSame10 = SCSIOpcode(rawValue: 0x41)
    public static let unmap = SCSIOpcode(rawValue: 0x42)
    public static let modeSense10 = SCSIOpcode(rawValue: 0x5A)
    public static let read16 = SCSIOpcode(rawValue: 0x88)
    public static let write16 = SCSIOpcode(rawValue: 0x8A)
    public static let synchronizeCache16 = SCSIOpcode(rawValue: 0x91)
    public static let writeSame16 = SCSIOpcode(rawValue: 0x93)
    /// SERVICE ACTION IN(16); READ CAPACITY(16) is service action 10h.
    public static let serviceActionIn16 = SCSIOpcode(rawValue: 0x9E)
    public static let reportLUNs = SCSIOpcode(rawValue: 0xA0)

    public var description: String {
        switch self {
        case .testUnitReady: "TEST UNIT READY"
        case .requestSense: "REQUEST SENSE"
        case .inquiry: "INQUIRY"
        case .modeSense6: "MODE SENSE(6)"
        case .readCapacity10: "READ CAPACITY(10)"
        case .read10: "READ(10)"
        case .write10: "WRITE(10)"
        case .synchronizeCache10: "SYNCHRONIZE CACHE(10)"
        case .writeSame10: "WRITE SAME(10)"
        case .unmap: "UNMAP"
        case .modeSense10: "MODE SENSE(10)"
        case .read16: "READ(16)"
        case .write16: "WRITE(16)"
        case .synchronizeCache16: "SYNCHRONIZE CACHE(16)"
        case .writeSame16: "WRITE SAME(16)"
        case .serviceActionIn16: "SERVICE ACTION IN(16)"
        case .reportLUNs: "REPORT LUNS"
        default: "OPCODE \(hex2(rawValue))"
        }
    }
}

/// MODE SENSE page control (byte 2 bits 7:6).
public enum ModePageControl: UInt8, Sendable, Hashable {
    case current = 0, changeable = 1, defaultValues = 2, saved = 3
}

/// Mode page codes we ask for.
public enum ModePageCode {
    public static let caching: UInt8 = 0x08
    public static let control: UInt8 = 0x0A
    public static let allPages: UInt8 = 0x3F
}

/// VPD page codes (scsi-commands.md §5.3).
public struct VPDPageCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let supportedPages = VPDPageCode(rawValue: 0x00)
    public static let unitSerialNumber = VPDPageCode(rawValue: 0x80)
    public static let deviceIdentification = VPDPageCode(rawValue: 0x83)
    public static let blockLimits = VPDPageCode(rawValue: 0xB0)
    public static let blockDeviceCharacteristics = VPDPageCode(rawValue: 0xB1)
    public static let logicalBlockProvisioning = VPDPageCode(rawValue: 0xB2)
    public var description: String { "VPD page \(hex2(rawValue))h" }
}

// MARK: - CDB builders (scsi-commands.md §5; CONTROL byte always 0, GROUP NUMBER 0)

extension CDB {
    private mutating func put16(_ v: UInt16, at i: Int) {
        self[i] = UInt8(truncatingIfNeeded: v >> 8)
        self[i + 1] = UInt8(truncatingIfNeeded: v)
    }
    private mutating func put32(_ v: UInt32, at i: Int) {
        for k in 0..<4 { self[i + k] = UInt8(truncatingIfNeeded: v >> (24 - 8 * UInt32(k))) }
    }
    private mutating func put64(_ v: UInt64, at i: Int) {
        for k in 0..<8 { self[i + k] = UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64(k))) }
    }

    /// Big-endian 16/32/64-bit fields of a CDB (for parsing a CDB, e.g. in a fake target).
    public func uint16(at i: Int) -> UInt16 { UInt16(self[i]) << 8 | UInt16(self[i + 1]) }
    public func uint32(at i: Int) -> UInt32 { (0..<4).reduce(0) { $0 << 8 | UInt32(self[i + $1]) } }
    public func uint64(at i: Int) -> UInt64 { (0..<8).reduce(0) { $0 << 8 | UInt64(self[i + $1]) } }

    /// TEST UNIT READY (00h), 6 bytes, no data (§5.1).
    public static func testUnitReady() -> CDB { CDB(count: 6) }

    /// REQUEST SENSE (03h), 6 bytes (§5.2). `descriptorFormat` sets DESC; allocation length is 1 byte.
    public static func requestSense(descriptorFormat: Bool = false, allocationLength: UInt8 = 252) -> CDB {
        var c = CDB(count: 6)
        c[0] = SCSIOpcode.requestSense.rawValue
        c[1] = descriptorFormat ? 0x01 : 0
        c[4] = allocationLength
        return c
    }

    /// INQUIRY (12h), 6 bytes (§5.3): standard data when `page` is nil, else the VPD page (EVPD = 1).
    public static func inquiry(page: VPDPageCode? = nil, allocationLength: UInt16 = 255) -> CDB {
        var c = CDB(count: 6)
        c[0] = SCSIOpcode.inquiry.rawValue
        if let page {
            c[1] = 0x01
            c[2] = page.rawValue
        }
        c.put16(allocationLength, at: 3)
        return c
    }

    /// READ CAPACITY(10) (25h), 10 bytes (§5.4). LBA and PMI are obsolete and sent as zero. 8 bytes back.
    public static func readCapacity10() -> CDB {
        var c = CDB(count: 10)
        c[0] = SCSIOpcode.readCapacity10.rawValue
        return c
    }

    /// READ CAPACITY(16) (9Eh / service action 10h), 16 bytes (§5.5).
    public static func readCapacity16(allocationLength: UInt32 = 32) -> CDB {
        var c = CDB(count: 16)
        c[0] = SCSIOpcode.serviceActionIn16.rawValue
        c[1] = 0x10
        c.put32(allocationLength, at: 10)
        return c
    }

    /// READ(10) (28h) (§5.6). `blocks` 0 means no data in the 10-byte form.
    public static func read10(lba: UInt32, blocks: UInt16, fua: Bool = false) -> CDB {
        rw10(.read10, lba: lba, blocks: blocks, fua: fua)
    }
    /// WRITE(10) (2Ah) (§5.6). `fua` sets FUA (byte 1 bit 3).
    public static func write10(lba: UInt32, blocks: UInt16, fua: Bool = false) -> CDB {
        rw10(.write10, lba: lba, blocks: blocks, fua: fua)
    }
    /// READ(16) (88h) (§5.6).
    public static func read16(lba: UInt64, blocks: UInt32, fua: Bool = false) -> CDB {
        rw16(.read16, lba: lba, blocks: blocks, fua: fua)
    }
    /// WRITE(16) (8Ah) (§5.6).
    public static func write16(lba: UInt64, blocks: UInt32, fua: Bool = false) -> CDB {
        rw16(.write16, lba: lba, blocks: blocks, fua: fua)
    }

    /// The 10-byte LBA form shared by READ/WRITE(10) and SYNCHRONIZE CACHE(10): opcode, byte 1 flags,
    /// LBA in bytes 2-5, the block count in bytes 7-8.
    private static func lba10(_ op: SCSIOpcode, flags: UInt8, lba: UInt32, blocks: UInt16) -> CDB {
        var c = CDB(count: 10)
        c[0] = op.rawValue
        c[1] = flags
        c.put32(lba, at: 2)
        c.put16(blocks, at: 7)
        return c
    }
    /// The 16-byte form: LBA in bytes 2-9, the block count in bytes 10-13.
    private static func lba16(_ op: SCSIOpcode, flags: UInt8, lba: UInt64, blocks: UInt32) -> CDB {
        var c = CDB(count: 16)
        c[0] = op.rawValue
        c[1] = flags
        c.put64(lba, at: 2)
        c.put32(blocks, at: 10)
        return c
    }
    private static func rw10(_ op: SCSIOpcode, lba: UInt32, blocks: UInt16, fua: Bool) -> CDB {
        lba10(op, flags: fua ? 0x08 : 0, lba: lba, blocks: blocks)
    }
    private static func rw16(_ op: SCSIOpcode, lba: UInt64, blocks: UInt32, fua: Bool) -> CDB {
        lba16(op, flags: fua ? 0x08 : 0, lba: lba, blocks: blocks)
    }

    /// SYNCHRONIZE CACHE(10) (35h) (§5.7). LBA 0 with 0 blocks flushes the whole LU. IMMED stays 0
    /// unless asked, so GOOD means the flush is done.
    public static func synchronizeCache10(lba: UInt32 = 0, blocks: UInt16 = 0, immediate: Bool = false) -> CDB {
        lba10(.synchronizeCache10, flags: immediate ? 0x02 : 0, lba: lba, blocks: blocks)
    }

    /// SYNCHRONIZE CACHE(16) (91h) (§5.7).
    public static func synchronizeCache16(lba: UInt64 = 0, blocks: UInt32 = 0, immediate: Bool = false) -> CDB {
        lba16(.synchronizeCache16, flags: immediate ? 0x02 : 0, lba: lba, blocks: blocks)
    }

    /// UNMAP (42h), 10 bytes (§5.8). The parameter list (see `UnmapParameterList`) is the Data-Out.
    public static func unmap(parameterListLength: UInt16, anchor: Bool = false) -> CDB {
        var c = CDB(count: 10)
        c[0] = SCSIOpcode.unmap.rawValue
        c[1] = anchor ? 0x01 : 0
        c.put16(parameterListLength, at: 7)
        return c
    }

    /// WRITE SAME(16) (93h) (§5.9). Data-Out is one logical block, or none when `noDataOut` (NDOB).
    /// `blocks` must not be 0 (0 can mean "to the end of the LU").
    public static func writeSame16(lba: UInt64, blocks: UInt32, unmap: Bool = false, noDataOut: Bool = false) -> CDB {
        precondition(blocks > 0, "WRITE SAME with 0 blocks may mean the whole LU")
        return lba16(.writeSame16, flags: (unmap ? 0x08 : 0) | (noDataOut ? 0x01 : 0), lba: lba, blocks: blocks)
    }

    /// MODE SENSE(6) (1Ah) (§5.11). DBD = 1 by default (no block descriptors).
    public static func modeSense6(
        page: UInt8, subpage: UInt8 = 0, pageControl: ModePageControl = .current, disableBlockDescriptors: Bool = true,
        allocationLength: UInt8 = 255
    ) -> CDB {
        var c = CDB(count: 6)
        c[0] = SCSIOpcode.modeSense6.rawValue
        c[1] = disableBlockDescriptors ? 0x08 : 0
        c[2] = pageControl.rawValue << 6 | (page & 0x3F)
        c[3] = subpage
        c[4] = allocationLength
        return c
    }

    /// MODE SENSE(10) (5Ah) (§5.11). DBD = 1 by default; LLBAA 0.
    public static func modeSense10(
        page: UInt8, subpage: UInt8 = 0, pageControl: ModePageControl = .current, disableBlockDescriptors: Bool = true,
        allocationLength: UInt16 = 512
    ) -> CDB {
        var c = CDB(count: 10)
        c[0] = SCSIOpcode.modeSense10.rawValue
        c[1] = disableBlockDescriptors ? 0x08 : 0
        c[2] = pageControl.rawValue << 6 | (page & 0x3F)
        c[3] = subpage
        c.put16(allocationLength, at: 7)
        return c
    }

    /// REPORT LUNS (A0h), 12 bytes (§5.10). SPC requires an allocation length of at least 16.
    public static func reportLUNs(selectReport: UInt8 = 0, allocationLength: UInt32 = 4096) -> CDB {
        var c = CDB(count: 12)
        c[0] = SCSIOpcode.reportLUNs.rawValue
        c[2] = selectReport
        c.put32(max(allocationLength, 16), at: 6)
        return c
    }
}

// MARK: - UNMAP parameter list

/// One UNMAP block descriptor (§5.8): a range of logical blocks.
public struct UnmapBlockDescriptor: Hashable, Sendable {
    public var lba: UInt64
    public var blocks: UInt32
    public init(lba: UInt64, blocks: UInt32) {
        self.lba = lba
        self.blocks = blocks
    }
}

/// The UNMAP parameter list (§5.8): 8-byte header then 16 bytes per descriptor.
public enum UnmapParameterList {
    /// Byte length of a list with `count` descriptors.
    public static func length(descriptors count: Int) -> Int { 8 + 16 * count }

    /// Writes the list; returns the PARAMETER LIST LENGTH to put in the CDB.
    /// At most 4095 descriptors fit the 16-bit length fields.
    @discardableResult
    public static func write(_ descriptors: [UnmapBlockDescriptor], to buffer: inout ByteBuffer) -> UInt16 {
        precondition(descriptors.count <= 4095, "too many UNMAP descriptors for one command")
        let total = length(descriptors: descriptors.count)
        buffer.writeInteger(UInt16(total - 2))
        buffer.writeInteger(UInt16(16 * descriptors.count))
        buffer.writeInteger(UInt32(0))
        for d in descriptors {
            buffer.writeInteger(d.lba)
            buffer.writeInteger(d.blocks)
            buffer.writeInteger(UInt32(0))
        }
        return UInt16(total)
    }

    /// Parses a list (used by fake targets). Lengths must agree with each other and the data.
    public static func parse(_ buffer: ByteBuffer) throws(SCSIParseError) -> [UnmapBlockDescriptor] {
        let ctx = "UNMAP parameter list"
        if buffer.readableBytes == 0 { return [] }
        try buffer.scsiRequire(8, ctx)
        let dataLength = Int(buffer.scsiInteger(at: 0, as: UInt16.self) ?? 0)
        let descLength = Int(buffer.scsiInteger(at: 2, as: UInt16.self) ?? 0)
        guard descLength % 16 == 0, descLength + 6 <= dataLength, dataLength + 2 <= buffer.readableBytes else {
            throw SCSIParseError(
                .inconsistent, ctx,
                "data length \(dataLength), descriptor length \(descLength), \(buffer.readableBytes) bytes")
        }
        var out: [UnmapBlockDescriptor] = []
        out.reserveCapacity(descLength / 16)
        var off = 8
        while off < 8 + descLength {
            guard let lba = buffer.scsiInteger(at: off, as: UInt64.self),
                let n = buffer.scsiInteger(at: off + 8, as: UInt32.self)
            else { throw SCSIParseError.truncated(ctx, have: buffer.readableBytes, need: off + 16) }
            out.append(UnmapBlockDescriptor(lba: lba, blocks: n))
            off += 16
        }
        return out
    }
}
