import BlockBackend
@testable import ISCSIBlockBackend
import SCSI
import Testing

/// What is learnt when the target refuses a command, and which command each request uses then (pure).
@Suite struct SCSIFallbacksTests {
    /// A failed command as the runner reports it: the sense mapped for `kind`, as `CommandRunner` does.
    static func failure(_ opcode: SCSIOpcode, _ key: SenseKey, _ code: AdditionalSenseCode, kind: SCSIRequestKind) -> SCSICommandFailure {
        let sense = SenseData(key: key, code: code)
        guard case .failure(let errno, let unsupported) = SCSIErrorMapping.outcome(status: .checkCondition, sense: sense, request: kind) else {
            preconditionFailure("\(sense) is not a failure for \(kind)")
        }
        return SCSICommandFailure(opcode: opcode, status: .checkCondition, sense: sense,
                                  error: BlockDeviceError(errno, "\(opcode): \(sense)"), unsupported: unsupported)
    }

    static func strategy(unmap: Bool, writeSameUnmap: Bool, unmappedReadsZero: Bool) -> SCSIBlockStrategy {
        var p = SCSIDeviceProperties(inquiry: StandardInquiryData(vendor: "V", product: "P", revision: "1"),
                                     blockCount: 1 << 20, blockLength: 512)
        var lbp = LogicalBlockProvisioning()
        lbp.unmapSupported = unmap
        lbp.writeSame16UnmapSupported = writeSameUnmap
        lbp.unmappedReadsZero = unmappedReadsZero
        p.provisioning = lbp
        p.provisioningManagementEnabled = true
        return SCSIBlockStrategy(properties: p)
    }

    static let thin = strategy(unmap: true, writeSameUnmap: true, unmappedReadsZero: true)
    static let thick = SCSIBlockStrategy(properties: SCSIDeviceProperties(
        inquiry: StandardInquiryData(vendor: "V", product: "P", revision: "1"), blockCount: 1 << 20, blockLength: 512))

    static let invalidOpcode = failure(.writeSame16, .illegalRequest, .invalidCommandOperationCode, kind: .writeZeroes)
    static let mediumError = failure(.writeSame16, .mediumError, .writeError, kind: .writeZeroes)

    @Test func flushMovesToSynchronizeCache16ForGood() {
        var f = SCSIFallbacks()
        #expect(f.first(.flush) == .issue(.synchronizeCache10))
        let refused = Self.failure(.synchronizeCache10, .illegalRequest, .invalidCommandOperationCode, kind: .flush)
        #expect(f.failed(.synchronizeCache10, for: .flush, with: refused) == .issue(.synchronizeCache16))
        #expect(f.first(.flush) == .issue(.synchronizeCache16))
        // (16) is the last resort: its failure is the request's.
        #expect(f.failed(.synchronizeCache16, for: .flush, with: refused) == nil)
        #expect(f.refused == [.synchronizeCache10])
    }

    @Test func flushLearnsOnlyFromInvalidCommandOperationCode() {
        var f = SCSIFallbacks()
        let failures: [any Error] = [
            Self.failure(.synchronizeCache10, .illegalRequest, .invalidFieldInCDB, kind: .flush),
            Self.failure(.synchronizeCache10, .hardwareError, .internalTargetFailure, kind: .flush),
            BlockDeviceError(.eio, "SYNCHRONIZE CACHE(10) failed in transport"),
        ]
        for error in failures {
            #expect(f.failed(.synchronizeCache10, for: .flush, with: error) == nil, "\(error)")
        }
        #expect(f.first(.flush) == .issue(.synchronizeCache10) && f.refused.isEmpty)
    }

    @Test func trimTriesUnmapThenWriteSameUnmapThenNothing() {
        var f = SCSIFallbacks()
        let thin = SCSIFallbacks.Request.trim(Self.thin)
        #expect(f.first(thin) == .issue(.unmap))
        let unmapRefused = Self.failure(.unmap, .illegalRequest, .invalidCommandOperationCode, kind: .trim)
        #expect(f.failed(.unmap, for: thin, with: unmapRefused) == .succeed, "advisory: the refused trim succeeds")
        #expect(f.first(thin) == .issue(.writeSameUnmap))
        let writeSameRefused = Self.failure(.writeSame16, .illegalRequest, .invalidFieldInCDB, kind: .trim)
        #expect(f.failed(.writeSameUnmap, for: thin, with: writeSameRefused) == .succeed)
        #expect(f.first(thin) == .succeed)
        #expect(f.refused == [.unmap, .writeSameUnmap])
    }

    @Test func trimOnAThickLUSendsNothing() {
        #expect(SCSIFallbacks().first(.trim(Self.thick)) == .succeed)
        let onlyWriteSame = Self.strategy(unmap: false, writeSameUnmap: true, unmappedReadsZero: false)
        #expect(SCSIFallbacks().first(.trim(onlyWriteSame)) == .issue(.writeSameUnmap))
    }

    @Test func trimErrorsThatAreNotRefusalsFailTheRequest() {
        var f = SCSIFallbacks()
        let thin = SCSIFallbacks.Request.trim(Self.thin)
        let outOfRange = Self.failure(.unmap, .illegalRequest, .lbaOutOfRange, kind: .trim)
        #expect(f.failed(.unmap, for: thin, with: outOfRange) == nil)
        #expect(f.failed(.unmap, for: thin, with: Self.mediumError) == nil)
        #expect(f.first(thin) == .issue(.unmap))
    }

    @Test func writeZeroesFallsFromUnmapToWriteSameToWrites() {
        var f = SCSIFallbacks()
        let request = SCSIFallbacks.Request.writeZeroes(Self.thin, noHole: false)
        #expect(f.first(request) == .issue(.writeSameUnmap))
        #expect(f.first(.writeZeroes(Self.thin, noHole: true)) == .issue(.writeSame), "NO_HOLE: write the zeros")
        #expect(f.first(.writeZeroes(Self.thick, noHole: false)) == .issue(.writeSame), "no LBPRZ: unmapping does not zero")
        #expect(f.failed(.writeSameUnmap, for: request, with: Self.invalidOpcode) == .issue(.writeSame))
        #expect(f.first(request) == .issue(.writeSame))
        #expect(f.failed(.writeSame, for: request, with: Self.invalidOpcode) == .issue(.writeZeroBuffers))
        #expect(f.first(request) == .issue(.writeZeroBuffers))
        // The emulation is the last resort.
        let writeRefused = Self.failure(.write10, .illegalRequest, .invalidCommandOperationCode, kind: .writeZeroes)
        #expect(f.failed(.writeZeroBuffers, for: request, with: writeRefused) == nil)
        #expect(f.refused == [.writeSameUnmap, .writeSame])
    }

    @Test func writeZeroesAfterWriteSameWasRefusedSkipsIt() {
        var f = SCSIFallbacks()
        let request = SCSIFallbacks.Request.writeZeroes(Self.thin, noHole: true)
        #expect(f.failed(.writeSame, for: request, with: Self.invalidOpcode) == .issue(.writeZeroBuffers))
        // WRITE SAME with UNMAP is another question: still tried when it may be used.
        let mayUnmap = SCSIFallbacks.Request.writeZeroes(Self.thin, noHole: false)
        #expect(f.first(mayUnmap) == .issue(.writeSameUnmap))
        #expect(f.failed(.writeSameUnmap, for: mayUnmap, with: Self.invalidOpcode) == .issue(.writeZeroBuffers))
        #expect(f.failed(.writeSame, for: request, with: Self.mediumError) == nil)
    }

    @Test func fastZeroIsOnlyWriteSameUnmapOnAZeroingLU() {
        var f = SCSIFallbacks()
        let fast = SCSIFallbacks.Request.fastZero(Self.thin, noHole: false)
        #expect(f.first(fast) == .issue(.writeSameUnmap))
        #expect(f.first(.fastZero(Self.thin, noHole: true)) == .notSupported("fast zero is not possible on this LU"))
        #expect(f.first(.fastZero(Self.thick, noHole: false)) == .notSupported("fast zero is not possible on this LU"))
        guard case .notSupported(let why)? = f.failed(.writeSameUnmap, for: fast, with: Self.invalidOpcode) else {
            Issue.record("a refused fast zero must fail with ENOTSUP")
            return
        }
        #expect(why == "fast zero rejected: \(Self.invalidOpcode)")
        #expect(f.first(fast) == .notSupported("fast zero is not possible on this LU"))
        // Learnt for every request that would use WRITE SAME with UNMAP.
        #expect(f.first(.writeZeroes(Self.thin, noHole: false)) == .issue(.writeSame))
        #expect(f.first(.trim(Self.strategy(unmap: false, writeSameUnmap: true, unmappedReadsZero: true))) == .succeed)
    }

    @Test func requestKindsForTheSenseMapping() {
        #expect(SCSIFallbacks.Request.flush.kind == .flush)
        #expect(SCSIFallbacks.Request.trim(Self.thin).kind == .trim)
        #expect(SCSIFallbacks.Request.writeZeroes(Self.thin, noHole: false).kind == .writeZeroes)
        #expect(SCSIFallbacks.Request.fastZero(Self.thin, noHole: false).kind == .writeZeroes)
    }
}
