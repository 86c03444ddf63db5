import BlockBackend
import SCSI

/// Which command carries out a flush, a trim or a write-zeroes request, given what the target turned out
/// not to implement. The probe says what the LU advertises (`SCSIBlockStrategy`); this value learns at run
/// time which of those commands the target refuses, so that each refusal costs one failed command for the
/// life of the device (pure; the device keeps one behind a lock).
struct SCSIFallbacks: Sendable, Hashable {
    /// The commands a request can be carried out with.
    enum Method: Sendable, Hashable {
        /// SYNCHRONIZE CACHE(10) of the whole LU (LBA 0, 0 blocks; scsi-commands.md §5.7).
        case synchronizeCache10
        /// SYNCHRONIZE CACHE(16) of the whole LU.
        case synchronizeCache16
        /// UNMAP, one descriptor per command (§5.8).
        case unmap
        /// WRITE SAME(16) of a zero block with UNMAP = 1 (§5.9).
        case writeSameUnmap
        /// WRITE SAME(16) of a zero block, UNMAP = 0.
        case writeSame
        /// WRITEs of zero buffers: write zeroes emulated.
        case writeZeroBuffers
    }

    /// The requests that have a choice of commands, with the strategy of the LU they were admitted on.
    enum Request: Sendable, Hashable {
        case flush
        /// NBD_CMD_TRIM: advisory (nbd-proto.md), so a trim the LU cannot do succeeds doing nothing.
        case trim(SCSIBlockStrategy)
        /// NBD_CMD_WRITE_ZEROES; `noHole` is NBD_CMD_FLAG_NO_HOLE.
        case writeZeroes(SCSIBlockStrategy, noHole: Bool)
        /// NBD_CMD_WRITE_ZEROES with NBD_CMD_FLAG_FAST_ZERO: fails with ENOTSUP unless it is known to be fast.
        case fastZero(SCSIBlockStrategy, noHole: Bool)

        /// For the sense mapping (an unsupported trim or write zeroes is a refusal, not an error).
        var kind: SCSIRequestKind {
            switch self {
            case .flush: .flush
            case .trim: .trim
            case .writeZeroes, .fastZero: .writeZeroes
            }
        }
    }

    /// What to do next for a request.
    enum Step: Sendable, Hashable {
        case issue(Method)
        /// Nothing (more) to send: the request succeeds.
        case succeed
        /// The request fails with ENOTSUP, for this reason.
        case notSupported(String)
    }

    /// The methods the target refused; never tried again.
    private(set) var refused: Set<Method> = []

    /// The first step for `request`.
    func first(_ request: Request) -> Step {
        switch request {
        case .flush:
            return .issue(refused.contains(.synchronizeCache10) ? .synchronizeCache16 : .synchronizeCache10)
        case .trim(let strategy):
            if strategy.useUnmap && !refused.contains(.unmap) { return .issue(.unmap) }
            if strategy.writeSameUnmap && !refused.contains(.writeSameUnmap) { return .issue(.writeSameUnmap) }
            return .succeed
        case .writeZeroes(let strategy, let noHole):
            return .issue(mayUnmap(strategy, noHole: noHole) ? .writeSameUnmap : zeroingWithoutUnmap)
        case .fastZero(let strategy, let noHole):
            // Only WRITE SAME with UNMAP on an LU whose unmapped blocks read as zeros is known to be fast.
            guard mayUnmap(strategy, noHole: noHole) else {
                return .notSupported("fast zero is not possible on this LU")
            }
            return .issue(.writeSameUnmap)
        }
    }

    /// `method`, issued for `request`, failed with `error`. A refusal is learnt and gives the next step;
    /// any other failure gives nil: the request fails with it.
    mutating func failed(_ method: Method, for request: Request, with error: any Error) -> Step? {
        guard let failure = error as? SCSICommandFailure, Self.isRefusal(failure, of: method) else { return nil }
        refused.insert(method)
        switch request {
        case .flush:
            return .issue(.synchronizeCache16)
        case .trim:
            return .succeed
        case .writeZeroes:
            return .issue(zeroingWithoutUnmap)
        case .fastZero:
            return .notSupported("fast zero rejected: \(failure)")
        }
    }

    /// Whether `failure` says the target does not implement `method`. SYNCHRONIZE CACHE(10) is mandatory
    /// in SBC, so only INVALID COMMAND OPERATION CODE (20/00) counts; UNMAP and WRITE SAME are optional and
    /// the sense mapping marks their refusals (`SCSIOutcome.failure(_:unsupported:)`). The last resorts
    /// have nothing to fall back to.
    static func isRefusal(_ failure: SCSICommandFailure, of method: Method) -> Bool {
        switch method {
        case .synchronizeCache10:
            return failure.isIllegalRequest && failure.sense?.code == .invalidCommandOperationCode
        case .unmap, .writeSameUnmap, .writeSame:
            return failure.unsupported
        case .synchronizeCache16, .writeZeroBuffers:
            return false
        }
    }

    /// nbd-proto.md NBD_CMD_WRITE_ZEROES: the blocks may be unmapped unless NO_HOLE is set, and doing so
    /// zeroes them only when unmapped blocks read as zeros (LBPRZ, scsi-commands.md §5.9).
    private func mayUnmap(_ strategy: SCSIBlockStrategy, noHole: Bool) -> Bool {
        !noHole && strategy.canFastZero && !refused.contains(.writeSameUnmap)
    }

    private var zeroingWithoutUnmap: Method { refused.contains(.writeSame) ? .writeZeroBuffers : .writeSame }
}
