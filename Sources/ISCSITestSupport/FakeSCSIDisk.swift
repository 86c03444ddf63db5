import NIOConcurrencyHelpers
import NIOCore
import SCSI

/// An in-memory SCSI direct-access disk that executes CDBs from their wire form, for tests.
///
/// Storage is sparse (only written blocks take memory), so capacities above 2 TiB are cheap. Bad requests
/// get proper CHECK CONDITION sense (ILLEGAL REQUEST 20/00, 21/00, 24/00; DATA PROTECT 27/00...). Faults
/// can be injected for the next commands. Every executed CDB is logged in `commands`.
/// Results complete on `eventLoop`.
public final class FakeSCSIDisk: SCSITransport {
    public struct Configuration: Sendable {
        public var blockSize: UInt32 = 512
        public var blockCount: UInt64 = 2048
        public var physicalBlockExponent: UInt8 = 0
        public var writeProtected = false
        public var writeCacheEnabled = true
        public var dpoFUA = true
        public var vendor = "FAKE"
        public var product = "SCSI DISK"
        public var revision = "0001"
        public var serial: String? = "FAKE0001"
        /// NAA designator bytes (8 bytes, NAA 6/5 etc.) for VPD 83h; nil for none.
        public var naa: [UInt8]? = [0x60, 0x01, 0x40, 0x5F, 0xAB, 0xCD, 0xEF, 0x01]
        public var peripheralQualifier: UInt8 = 0
        public var peripheralDeviceType: UInt8 = 0
        /// Block Limits (VPD B0h); nil: page not supported.
        public var blockLimits: BlockLimits? = BlockLimits()
        public var rotationRate: UInt16? = 1
        /// Logical block provisioning: LBPME in READ CAPACITY(16).
        public var provisioningManagementEnabled = false
        /// VPD B2h; nil: page not supported.
        public var provisioning: LogicalBlockProvisioning? = nil
        /// LBPRZ reported and honoured (unmapped blocks read as zeros; otherwise they read as 0xFF).
        public var unmappedReadsZero = true
        public var supportsVPD = true
        /// VPD 00h lists the pages served; false: an empty list while they are still served, as LIO answers
        /// until its backstore has a unit serial (target_core_spc.c `spc_emulate_evpd_00`).
        public var listsVPDPages = true
        public var supportsReadCapacity16 = true
        public var supportsModeSense10 = true
        public var supportsModeSense6 = true
        public var supportsWriteSame = true
        public var supportsUnmap = true
        public var supportsSynchronizeCache10 = true
        /// Answer with descriptor-format sense.
        public var descriptorSense = false
        public var luns: [LogicalUnitNumber] = [LogicalUnitNumber(0)]

        public init() {}
    }

    /// A failure to return for upcoming commands instead of executing them.
    public struct Fault: Sendable {
        public var status: SCSIStatus
        public var sense: SenseData?
        /// How many matching commands fail.
        public var count: Int
        /// Only commands with these opcodes (nil: any).
        public var opcodes: Set<UInt8>?
        /// Only INQUIRY commands for this VPD page (nil: any command the other filters allow).
        public var vpdPage: UInt8?
        /// Data-In to return (e.g. garbage parameter data with GOOD status).
        public var dataIn: ByteBuffer?
        /// Commands with these opcodes are never affected.
        public var exceptOpcodes: Set<UInt8> = []
        public init(
            status: SCSIStatus, sense: SenseData? = nil, count: Int = 1, opcodes: Set<UInt8>? = nil,
            vpdPage: UInt8? = nil, dataIn: ByteBuffer? = nil
        ) {
            self.status = status
            self.sense = sense
            self.count = count
            self.opcodes = opcodes
            self.vpdPage = vpdPage
            self.dataIn = dataIn
        }
        /// GOOD status with `data` as Data-In, for commands with `opcode` (and VPD `page` for INQUIRY).
        public static func data(_ data: [UInt8], opcode: UInt8, vpdPage: UInt8? = nil, count: Int = 1) -> Fault {
            Fault(status: .good, count: count, opcodes: [opcode], vpdPage: vpdPage, dataIn: ByteBuffer(bytes: data))
        }
        func matches(_ cdb: CDB) -> Bool {
            guard opcodes?.contains(cdb.opcode) ?? true, !exceptOpcodes.contains(cdb.opcode) else { return false }
            guard let vpdPage else { return true }
            return cdb.opcode == SCSIOpcode.inquiry.rawValue && cdb[1] & 1 == 1 && cdb[2] == vpdPage
        }
        public static func checkCondition(
            _ key: SenseKey, _ code: AdditionalSenseCode, count: Int = 1, opcodes: Set<UInt8>? = nil
        ) -> Fault {
            Fault(status: .checkCondition, sense: SenseData(key: key, code: code), count: count, opcodes: opcodes)
        }
    }

    /// A transport-level failure (the future fails), e.g. to simulate a lost session.
    public struct TransportFailure: Error, Sendable {}

    private struct State {
        var configuration: Configuration
        var blocks: [UInt64: [UInt8]] = [:]
        var faults: [Fault] = []
        var commands: [CDB] = []
        var failTransport = 0
    }

    public let eventLoop: any EventLoop
    private let state: NIOLockedValueBox<State>

    public init(eventLoop: any EventLoop, configuration: Configuration = Configuration()) {
        self.eventLoop = eventLoop
        self.state = NIOLockedValueBox(State(configuration: configuration))
    }

    // MARK: - Test controls

    public var configuration: Configuration {
        get { state.withLockedValue { $0.configuration } }
        set { state.withLockedValue { $0.configuration = newValue } }
    }

    /// CDBs executed so far (including those answered by injected faults).
    public var commands: [CDB] { state.withLockedValue { $0.commands } }
    public var opcodes: [SCSIOpcode] { commands.map { SCSIOpcode(rawValue: $0.opcode) } }
    public func clearCommandLog() { state.withLockedValue { $0.commands.removeAll() } }

    public func inject(_ fault: Fault) { state.withLockedValue { $0.faults.append(fault) } }
    /// Queues a UNIT ATTENTION the way SAM reports one: the next command fails with it, except INQUIRY,
    /// REPORT LUNS and REQUEST SENSE, which are executed normally (SPC "unit attention condition").
    public func queueUnitAttention(_ code: AdditionalSenseCode) {
        var f = Fault.checkCondition(.unitAttention, code)
        f.exceptOpcodes = [SCSIOpcode.inquiry.rawValue, SCSIOpcode.reportLUNs.rawValue, SCSIOpcode.requestSense.rawValue]
        inject(f)
    }

    /// Drops all pending injected faults.
    public func clearFaults() { state.withLockedValue { $0.faults.removeAll() } }
    /// The next `count` commands fail in the transport (their future fails).
    public func failTransport(count: Int) { state.withLockedValue { $0.failTransport = count } }

    /// Direct access to stored bytes (unwritten blocks read as zeros).
    public func bytes(atBlock lba: UInt64, count: Int) -> [UInt8] {
        state.withLockedValue { s in
            var out: [UInt8] = []
            for i in 0..<UInt64(count) {
                out += s.blocks[lba + i] ?? Self.unwritten(s.configuration)
            }
            return out
        }
    }
    /// Whether a block has been written (and not unmapped).
    public func isMapped(_ lba: UInt64) -> Bool { state.withLockedValue { $0.blocks[lba] != nil } }

    private static func unwritten(_ c: Configuration) -> [UInt8] {
        [UInt8](repeating: c.unmappedReadsZero ? 0 : 0xFF, count: Int(c.blockSize))
    }

    // MARK: - SCSITransport

    public func execute(_ command: SCSICommand, lun: LogicalUnitNumber) -> EventLoopFuture<SCSICommandResult> {
        let outcome: Result<SCSICommandResult, TransportFailure> = state.withLockedValue { s in
            s.commands.append(command.cdb)
            if s.failTransport > 0 {
                s.failTransport -= 1
                return .failure(TransportFailure())
            }
            if let i = s.faults.firstIndex(where: { $0.count > 0 && $0.matches(command.cdb) }) {
                let f = s.faults[i]
                s.faults[i].count -= 1
                if s.faults[i].count <= 0 { s.faults.remove(at: i) }
                return .success(
                    SCSICommandResult(
                        status: f.status, senseData: f.sense?.encode(descriptorFormat: s.configuration.descriptorSense),
                        dataIn: f.dataIn))
            }
            return .success(Self.run(command, lun: lun, state: &s))
        }
        switch outcome {
        case .success(let r): return eventLoop.makeSucceededFuture(r)
        case .failure(let e): return eventLoop.makeFailedFuture(e)
        }
    }

    private static func check(_ s: State, _ key: SenseKey, _ code: AdditionalSenseCode) -> SCSICommandResult {
        SCSICommandResult(
            status: .checkCondition,
            senseData: SenseData(key: key, code: code).encode(descriptorFormat: s.configuration.descriptorSense))
    }

    /// Data-In cut to the allocation length and to the expected transfer length, with the residual.
    private static func dataIn(_ data: ByteBuffer, allocation: Int, expected: UInt32) -> SCSICommandResult {
        let n = min(data.readableBytes, allocation, Int(expected))
        return SCSICommandResult(
            status: .good, dataIn: data.getSlice(at: data.readerIndex, length: n), residual: Int64(Int(expected) - n))
    }

    private static func run(_ command: SCSICommand, lun: LogicalUnitNumber, state s: inout State) -> SCSICommandResult {
        let c = s.configuration
        let cdb = command.cdb
        let op = SCSIOpcode(rawValue: cdb.opcode)
        let bs = Int(c.blockSize)
        let lunKnown = c.luns.contains(lun)
        if !lunKnown && op != .inquiry && op != .reportLUNs {
            return check(s, .illegalRequest, .logicalUnitNotSupported)
        }
        func inRange(_ lba: UInt64, _ n: UInt64) -> Bool { lba <= c.blockCount && n <= c.blockCount - lba }
        func readBlocks(_ lba: UInt64, _ n: Int) -> ByteBuffer {
            var b = ByteBufferAllocator().buffer(capacity: n * bs)
            for i in 0..<UInt64(n) { b.writeBytes(s.blocks[lba + i] ?? unwritten(c)) }
            return b
        }

        switch op {
        case .testUnitReady:
            return SCSICommandResult(status: .good)
        case .requestSense:
            return dataIn(
                SenseData(key: .noSense, code: .noAdditionalSenseInformation).encode(descriptorFormat: cdb[1] & 1 != 0),
                allocation: Int(cdb[4]), expected: command.expectedDataInLength)
        case .inquiry:
            let allocation = Int(cdb.uint16(at: 3))
            if cdb[1] & 0x01 == 0 {
                guard cdb[2] == 0 else { return check(s, .illegalRequest, .invalidFieldInCDB) }
                var inq = StandardInquiryData(
                    peripheralQualifier: .init(rawValue: lunKnown ? c.peripheralQualifier : 3),
                    peripheralDeviceType: .init(rawValue: lunKnown ? c.peripheralDeviceType : 0x1F),
                    vendor: c.vendor, product: c.product, revision: c.revision)
                inq.version = 6
                return dataIn(inq.encode(), allocation: allocation, expected: command.expectedDataInLength)
            }
            guard c.supportsVPD, let page = vpdPage(VPDPageCode(rawValue: cdb[2]), c) else {
                return check(s, .illegalRequest, .invalidFieldInCDB)
            }
            return dataIn(page, allocation: allocation, expected: command.expectedDataInLength)
        case .readCapacity10:
            let last = max(c.blockCount, 1) - 1
            let data = ReadCapacity10Data(lastLBA: last > 0xFFFF_FFFE ? 0xFFFF_FFFF : UInt32(last), blockLength: c.blockSize)
            return dataIn(data.encode(), allocation: 8, expected: command.expectedDataInLength)
        case .serviceActionIn16 where cdb[1] & 0x1F == 0x10:
            guard c.supportsReadCapacity16 else { return check(s, .illegalRequest, .invalidCommandOperationCode) }
            var data = ReadCapacity16Data(lastLBA: max(c.blockCount, 1) - 1, blockLength: c.blockSize)
            data.physicalBlockExponent = c.physicalBlockExponent
            data.provisioningManagementEnabled = c.provisioningManagementEnabled
            data.unmappedReadsZero = c.provisioningManagementEnabled && c.unmappedReadsZero
            return dataIn(data.encode(), allocation: Int(cdb.uint32(at: 10)), expected: command.expectedDataInLength)
        case .modeSense6, .modeSense10:
            let ten = op == .modeSense10
            guard ten ? c.supportsModeSense10 : c.supportsModeSense6 else {
                return check(s, .illegalRequest, .invalidCommandOperationCode)
            }
            let page = cdb[2] & 0x3F
            guard page == ModePageCode.caching || page == ModePageCode.allPages else {
                return check(s, .illegalRequest, .invalidFieldInCDB)
            }
            // Caching page (08h), 18 bytes of parameters; byte 2 bit 2 WCE.
            var caching = [UInt8](repeating: 0, count: 18)
            caching[0] = c.writeCacheEnabled ? 0x04 : 0
            let data = ModeParameters.encode(
                tenByte: ten, writeProtected: c.writeProtected, dpoFUA: c.dpoFUA,
                pages: [(code: ModePageCode.caching, parameters: caching)])
            let allocation = ten ? Int(cdb.uint16(at: 7)) : Int(cdb[4])
            return dataIn(data, allocation: allocation, expected: command.expectedDataInLength)
        case .read10, .read16, .write10, .write16:
            let sixteen = op == .read16 || op == .write16
            let lba = sixteen ? cdb.uint64(at: 2) : UInt64(cdb.uint32(at: 2))
            let n = sixteen ? UInt64(cdb.uint32(at: 10)) : UInt64(cdb.uint16(at: 7))
            guard inRange(lba, n) else { return check(s, .illegalRequest, .lbaOutOfRange) }
            if let mtl = c.blockLimits?.maximumTransferLength, mtl > 0, n > mtl {
                return check(s, .illegalRequest, .invalidFieldInCDB)
            }
            if op == .read10 || op == .read16 {
                return dataIn(readBlocks(lba, Int(n)), allocation: Int.max, expected: command.expectedDataInLength)
            }
            if c.writeProtected { return check(s, .dataProtect, .writeProtected) }
            guard let data = command.dataOut, data.readableBytes == Int(n) * bs else {
                return check(s, .illegalRequest, .invalidFieldInCDB)
            }
            for i in 0..<Int(n) {
                s.blocks[lba + UInt64(i)] = data.getBytes(at: data.readerIndex + i * bs, length: bs)
            }
            return SCSICommandResult(status: .good)
        case .synchronizeCache10, .synchronizeCache16:
            if op == .synchronizeCache10 && !c.supportsSynchronizeCache10 {
                return check(s, .illegalRequest, .invalidCommandOperationCode)
            }
            let sixteen = op == .synchronizeCache16
            let lba = sixteen ? cdb.uint64(at: 2) : UInt64(cdb.uint32(at: 2))
            let n = sixteen ? UInt64(cdb.uint32(at: 10)) : UInt64(cdb.uint16(at: 7))
            guard inRange(lba, n) else { return check(s, .illegalRequest, .lbaOutOfRange) }
            return SCSICommandResult(status: .good)
        case .writeSame16:
            guard c.supportsWriteSame else { return check(s, .illegalRequest, .invalidCommandOperationCode) }
            let unmap = cdb[1] & 0x08 != 0
            let ndob = cdb[1] & 0x01 != 0
            let lba = cdb.uint64(at: 2)
            let n = UInt64(cdb.uint32(at: 10))
            guard n > 0 else { return check(s, .illegalRequest, .invalidFieldInCDB) }
            if let wsl = c.blockLimits?.maximumWriteSameLength, wsl > 0, n > wsl {
                return check(s, .illegalRequest, .invalidFieldInCDB)
            }
            if unmap && !(c.provisioningManagementEnabled && (c.provisioning?.writeSame16UnmapSupported ?? false)) {
                return check(s, .illegalRequest, .invalidFieldInCDB)
            }
            guard inRange(lba, n) else { return check(s, .illegalRequest, .lbaOutOfRange) }
            if c.writeProtected { return check(s, .dataProtect, .writeProtected) }
            let block: [UInt8]
            if ndob {
                block = [UInt8](repeating: 0, count: bs)
            } else {
                guard let data = command.dataOut, data.readableBytes == bs,
                    let bytes = data.getBytes(at: data.readerIndex, length: bs)
                else { return check(s, .illegalRequest, .invalidFieldInCDB) }
                block = bytes
            }
            let deallocate = unmap && c.unmappedReadsZero && block.allSatisfy { $0 == 0 }
            for i in 0..<n {
                if deallocate { s.blocks[lba + i] = nil } else { s.blocks[lba + i] = block }
            }
            return SCSICommandResult(status: .good)
        case .unmap:
            guard c.supportsUnmap, c.provisioningManagementEnabled, c.provisioning?.unmapSupported ?? false else {
                return check(s, .illegalRequest, .invalidCommandOperationCode)
            }
            let length = Int(cdb.uint16(at: 7))
            guard let data = command.dataOut, data.readableBytes == length,
                let descriptors = try? UnmapParameterList.parse(data)
            else { return check(s, .illegalRequest, .invalidFieldInParameterList) }
            if let maxCount = c.blockLimits?.maximumUnmapBlockDescriptorCount, maxCount != 0xFFFF_FFFF,
                descriptors.count > maxCount
            {
                return check(s, .illegalRequest, .invalidFieldInParameterList)
            }
            let total = descriptors.reduce(UInt64(0)) { $0 + UInt64($1.blocks) }
            if let maxLBA = c.blockLimits?.maximumUnmapLBACount, maxLBA != 0xFFFF_FFFF, total > maxLBA {
                return check(s, .illegalRequest, .invalidFieldInParameterList)
            }
            for d in descriptors where !inRange(d.lba, UInt64(d.blocks)) {
                return check(s, .illegalRequest, .lbaOutOfRange)
            }
            if c.writeProtected { return check(s, .dataProtect, .writeProtected) }
            for d in descriptors {
                for i in 0..<UInt64(d.blocks) { s.blocks[d.lba + i] = nil }
            }
            return SCSICommandResult(status: .good)
        case .reportLUNs:
            return dataIn(
                ReportLUNsData(luns: c.luns).encode(), allocation: Int(cdb.uint32(at: 6)),
                expected: command.expectedDataInLength)
        default:
            return check(s, .illegalRequest, .invalidCommandOperationCode)
        }
    }

    private static func vpdPage(_ requested: VPDPageCode, _ c: Configuration) -> ByteBuffer? {
        let peripheral = c.peripheralQualifier << 5 | c.peripheralDeviceType
        func page(_ code: VPDPageCode, _ body: ByteBuffer) -> ByteBuffer {
            var b = ByteBuffer()
            b.writeInteger(peripheral)
            b.writeInteger(code.rawValue)
            b.writeInteger(UInt16(body.readableBytes))
            var body = body
            b.writeBuffer(&body)
            return b
        }
        var supported: [VPDPageCode] = [.supportedPages, .deviceIdentification]
        if c.serial != nil { supported.append(.unitSerialNumber) }
        if c.blockLimits != nil { supported.append(.blockLimits) }
        if c.rotationRate != nil { supported.append(.blockDeviceCharacteristics) }
        if c.provisioning != nil { supported.append(.logicalBlockProvisioning) }
        supported.sort { $0.rawValue < $1.rawValue }
        switch requested {
        case .supportedPages:
            return page(.supportedPages, ByteBuffer(bytes: c.listsVPDPages ? supported.map(\.rawValue) : []))
        case .unitSerialNumber:
            guard let serial = c.serial else { return nil }
            return page(.unitSerialNumber, ByteBuffer(bytes: Array(serial.utf8)))
        case .deviceIdentification:
            var body = ByteBuffer()
            if let naa = c.naa { Designator(type: .naa, value: naa).write(to: &body) }
            Designator(type: .t10VendorID, codeSet: 2, value: Array("\(c.vendor.padding(8))\(c.product)".utf8))
                .write(to: &body)
            return page(.deviceIdentification, body)
        case .blockLimits:
            return c.blockLimits?.encode(peripheral: peripheral)
        case .blockDeviceCharacteristics:
            return c.rotationRate.map { BlockDeviceCharacteristics(mediumRotationRate: $0).encode(peripheral: peripheral) }
        case .logicalBlockProvisioning:
            guard var p = c.provisioning else { return nil }
            p.unmappedReadsZero = c.unmappedReadsZero
            return p.encode(peripheral: peripheral)
        default:
            return nil
        }
    }
}

extension String {
    fileprivate func padding(_ n: Int) -> String {
        count >= n ? String(prefix(n)) : self + String(repeating: " ", count: n - count)
    }
}
