import BlockBackend
import Logging
import NIOCore
import SCSI

/// A failure to open a LUN as a block device.
public struct SCSIProbeError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Kind: RawRepresentable, Hashable, Sendable {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The peripheral qualifier says no logical unit is behind this LUN.
        public static let noLogicalUnit = Kind(rawValue: 1)
        /// The logical unit is not a direct-access block device (peripheral device type ≠ 00h).
        public static let notDirectAccess = Kind(rawValue: 2)
        /// A mandatory probe command failed.
        public static let commandFailed = Kind(rawValue: 3)
        /// Parameter data could not be parsed.
        public static let invalidData = Kind(rawValue: 4)
        /// Block length or capacity that cannot be served (not a power of two, zero size, overflow).
        public static let unsupportedGeometry = Kind(rawValue: 5)
        /// After a unit attention, the LUN names a different logical unit (other designators or serial).
        public static let identityChanged = Kind(rawValue: 6)
        /// After a unit attention, the logical unit has fewer blocks than the device serves (fail-stop).
        public static let capacityShrank = Kind(rawValue: 7)
    }
    public var kind: Kind
    public var message: String
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
    public var description: String { message }
}

/// What READ CAPACITY answered: the (16) data when that command was used, else the (10) data.
enum CapacityAnswer: Sendable, Hashable {
    case readCapacity16(ReadCapacity16Data)
    case readCapacity10(ReadCapacity10Data)
}

/// Probes one LUN: issues the commands of scsi-commands.md §6 in order and parses their parameter data. What
/// the answers mean is decided by the pure steps in the `SCSIDeviceProperties` extension below, which the
/// first login, the refresh after a unit attention and the re-login check share.
struct SCSIProbe {
    let runner: CommandRunner
    let logger: Logger

    private var lun: LogicalUnitNumber { runner.lun }

    /// §6 steps 2–6: TEST UNIT READY, standard INQUIRY, the VPD pages, READ CAPACITY, MODE SENSE.
    func properties() async throws -> SCSIDeviceProperties {
        let lun = self.lun
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
            inquiry = try await fetch(initial: 96) { .inquiry(allocationLength: UInt16(clamping: $0)) } parse: {
                try StandardInquiryData(parsing: $0)
            }
        } catch let error as SCSIParseError {
            throw SCSIProbeError(.invalidData, "LUN \(lun): \(error)")
        } catch {
            throw failed("INQUIRY", error)
        }
        try SCSIDeviceProperties.checkServable(inquiry, lun: lun)

        // 3. VPD pages, each optional: a failure or garbage is logged and the page treated as absent.
        let supported = await vpd(.supportedPages) { try SupportedVPDPages(parsing: $0) }
        func has(_ page: VPDPageCode) -> Bool { supported?.contains(page) ?? false }
        let unlisted = SCSIDeviceProperties.unlistedPagesToTry(supported)
        // Pages the list does not name are asked for only when the list is known to lie (see unlistedPagesToTry):
        // a refusal then just means the page is absent.
        func sbc<T>(_ page: VPDPageCode, _ parse: (ByteBuffer) throws -> T) async -> T? {
            if has(page) { return await vpd(page, parse) }
            guard unlisted.contains(page) else { return nil }
            return await vpd(page, quiet: true, parse)
        }
        let (serial, ident) = await identification(listedIn: supported)
        let limits = await sbc(.blockLimits) { try BlockLimits(parsing: $0) }
        let bdc = await sbc(.blockDeviceCharacteristics) { try BlockDeviceCharacteristics(parsing: $0) }
        let lbp = await sbc(.logicalBlockProvisioning) { try LogicalBlockProvisioning(parsing: $0) }
        if !unlisted.isEmpty {
            logger.info("VPD 00h lists no page, not even itself; asked for the SBC pages anyway", metadata: [
                "scsi.lun": "\(lun)", "blockLimits": "\(limits != nil)", "blockDeviceCharacteristics": "\(bdc != nil)",
                "logicalBlockProvisioning": "\(lbp != nil)",
            ])
        }

        var p = SCSIDeviceProperties(inquiry: inquiry, blockCount: 0, blockLength: 0)
        p.supportedVPDPages = supported
        p.serialNumber = serial?.serial
        p.deviceIdentification = ident
        p.blockLimits = limits
        p.characteristics = bdc
        p.provisioning = lbp
        // 4. READ CAPACITY, 5. MODE SENSE.
        try p.setCapacity(await capacity(hasVPD: supported != nil), lun: lun)
        p.setMode(await modeParameters())
        return p
    }

    /// REPORT LUNS on LUN 0, re-issued once with a larger allocation length when the list is longer
    /// than the first answer (scsi-commands.md §5.10).
    func reportLUNs() async throws -> [LogicalUnitNumber] {
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
            } catch where error.kind == .truncated {
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

    /// READ CAPACITY(16) first (fall back to (10) on ILLEGAL REQUEST), except for targets without VPD
    /// support (likely pre-SBC-3), which start with (10) and go to (16) on FFFFFFFFh (scsi-commands.md §5.4).
    func capacity(hasVPD: Bool) async throws -> CapacityAnswer {
        func readCapacity16() async throws -> ReadCapacity16Data {
            let r = try await runner.run(.readCapacity16(allocationLength: 32), dataIn: 32)
            return try ReadCapacity16Data(parsing: r.dataIn ?? ByteBuffer())
        }
        do {
            if hasVPD {
                do {
                    return .readCapacity16(try await readCapacity16())
                } catch let error as SCSICommandFailure where error.isIllegalRequest {}
            }
            let r = try await runner.run(.readCapacity10(), dataIn: 8)
            let rc10 = try ReadCapacity10Data(parsing: r.dataIn ?? ByteBuffer())
            return rc10.needsReadCapacity16 ? .readCapacity16(try await readCapacity16()) : .readCapacity10(rc10)
        } catch let error as SCSIParseError {
            throw SCSIProbeError(.invalidData, "LUN \(lun): \(error)")
        } catch {
            throw SCSIProbeError(
                .commandFailed, "LUN \(lun): READ CAPACITY failed: \(error.asBlockDeviceError.message)")
        }
    }

    /// MODE SENSE(10), then (6) for the Caching page, then (6) for all pages: some devices reject one form
    /// or the other (scsi-commands.md §5.11). Optional: nil (logged) when none answers.
    func modeParameters() async -> ModeParameters? {
        do {
            let r = try await runner.run(.modeSense10(page: ModePageCode.caching, allocationLength: 512), dataIn: 512)
            return try ModeParameters(parsing: r.dataIn ?? ByteBuffer(), tenByte: true)
        } catch {
            logger.debug("MODE SENSE(10) failed, trying (6)", metadata: ["error": "\(error)"])
        }
        for page in [ModePageCode.caching, ModePageCode.allPages] {
            do {
                let r = try await runner.run(.modeSense6(page: page, allocationLength: 255), dataIn: 255)
                return try ModeParameters(parsing: r.dataIn ?? ByteBuffer(), tenByte: false)
            } catch {
                logger.debug("MODE SENSE(6) failed", metadata: ["error": "\(error)"])
            }
        }
        logger.warning(
            "MODE SENSE unavailable; assuming writable, write cache on, no DPOFUA", metadata: ["scsi.lun": "\(lun)"])
        return nil
    }

    /// The identity pages, Unit Serial Number (80h) and Device Identification (83h), each read only when
    /// `supported` lists it (they are never guessed at); nil for one that is absent or unreadable.
    func identification(listedIn supported: SupportedVPDPages?) async -> (UnitSerialNumber?, DeviceIdentification?) {
        let serial = supported?.contains(.unitSerialNumber) == true
            ? await vpd(.unitSerialNumber) { try UnitSerialNumber(parsing: $0) } : nil
        let ident = supported?.contains(.deviceIdentification) == true
            ? await vpd(.deviceIdentification) { try DeviceIdentification(parsing: $0) } : nil
        return (serial, ident)
    }

    /// Reads an optional VPD page; a failure or garbage is logged (at debug level when `quiet`: a page asked
    /// for on a guess) and gives nil.
    func vpd<T>(_ page: VPDPageCode, quiet: Bool = false, _ parse: (ByteBuffer) throws -> T) async -> T? {
        do {
            return try await fetch(initial: 255) {
                .inquiry(page: page, allocationLength: UInt16(clamping: $0))
            } parse: { try parse($0) }
        } catch {
            logger.log(level: quiet ? .debug : .warning, "ignoring \(page)", metadata: ["scsi.lun": "\(lun)", "error": "\(error)"])
            return nil
        }
    }

    /// Issues a data-in command, and once more with a larger allocation length when the parser says the
    /// data was cut short (self-describing lengths, scsi-commands.md §5.3). Allocation lengths ≤ 65535.
    private func fetch<T>(initial: Int, _ cdb: (Int) -> CDB, parse: (ByteBuffer) throws -> T) async throws -> T {
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
}

// MARK: - What the answers mean (pure)

extension SCSIDeviceProperties {
    /// §6 step 3: only a logical unit that is present (PERIPHERAL QUALIFIER 000b) and a direct-access block
    /// device (PERIPHERAL DEVICE TYPE 00h) is served (scsi-commands.md §5.3, standard INQUIRY byte 0).
    static func checkServable(_ inquiry: StandardInquiryData, lun: LogicalUnitNumber) throws(SCSIProbeError) {
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
    }

    /// The SBC pages (B0h Block Limits, B1h Block Device Characteristics, B2h Logical Block Provisioning) to
    /// ask for although VPD 00h does not list them: all three when the list does not even name 00h itself,
    /// which every device server that supports VPD pages does (SPC-4, Supported VPD Pages page: the list is in
    /// ascending order beginning with page code 00h, as Seagate's SCSI Commands Reference Manual rev. J §5.4.18
    /// restates it; scsi-commands.md §5.3); none otherwise, as the list is to be believed (§6 step 4).
    ///
    /// LIO answers so until the backstore has a unit serial (drivers/target/target_core_spc.c 6.1,
    /// `spc_emulate_evpd_00` fills the list only with DF_EMULATED_VPD_UNIT_SERIAL, set by writing
    /// wwn/vpd_unit_serial, which targetcli does and a configfs setup may not), yet it answers every page of
    /// its table: trusted, that empty list hid UNMAP (emulate_tpu=1), the transfer lengths and LBPRZ. The
    /// identity pages (80h, 83h) are not guessed at: they name the LU, and the name must not change with
    /// an upgrade. Linux's own `scsi_get_vpd_size` believes the list, so sd loses these pages too.
    static func unlistedPagesToTry(_ supported: SupportedVPDPages?) -> [VPDPageCode] {
        guard let supported, !supported.contains(.supportedPages) else { return [] }
        return [.blockLimits, .blockDeviceCharacteristics, .logicalBlockProvisioning].filter { !supported.contains($0) }
    }

    /// §6 step 5: size = (last LBA + 1) × block length, and from READ CAPACITY(16) the physical block exponent,
    /// LBPME and LBPRZ (scsi-commands.md §5.5). Only power-of-two block lengths of 512 to 65536 bytes can be
    /// served (the NBD block size constraints).
    mutating func setCapacity(_ answer: CapacityAnswer, lun: LogicalUnitNumber) throws(SCSIProbeError) {
        let blockLength: UInt32
        let lastLBA: UInt64
        let rc16: ReadCapacity16Data?
        switch answer {
        case .readCapacity16(let r):
            (blockLength, lastLBA, rc16) = (r.blockLength, r.lastLBA, r)
        case .readCapacity10(let r):
            (blockLength, lastLBA, rc16) = (r.blockLength, UInt64(r.lastLBA), nil)
        }
        guard blockLength >= 512, blockLength <= 65536, blockLength.nonzeroBitCount == 1 else {
            throw SCSIProbeError(
                .unsupportedGeometry,
                "LUN \(lun): logical block length \(blockLength) is not a power of two in 512...65536")
        }
        guard lastLBA < UInt64.max / UInt64(blockLength) else {
            throw SCSIProbeError(.unsupportedGeometry, "LUN \(lun): capacity overflows 64 bits")
        }
        self.blockCount = lastLBA + 1
        self.blockLength = blockLength
        self.usedReadCapacity16 = rc16 != nil
        self.physicalBlockExponent = rc16?.physicalBlockExponent ?? 0
        self.provisioningManagementEnabled = rc16?.provisioningManagementEnabled ?? false
        self.unmappedReadsZero = rc16?.unmappedReadsZero ?? false
    }

    /// §6 step 6: WP and DPOFUA from the mode parameter header, WCE from the Caching page (scsi-commands.md
    /// §5.11). Without an answer: not write protected, no DPOFUA, and the write cache assumed on, as it is
    /// when the Caching page is missing, so that FLUSH is never skipped.
    mutating func setMode(_ mode: ModeParameters?) {
        self.writeProtected = mode?.writeProtected ?? false
        self.dpoFUA = mode?.dpoFUA ?? false
        self.writeCacheEnabled = mode?.caching?.writeCacheEnabled ?? true
    }
}
