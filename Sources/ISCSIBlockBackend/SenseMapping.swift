import BlockBackend
import SCSI

/// What a block request was, for error mapping: the same sense means different errno values for a
/// read and for a write (nbd-proto.md "Error values").
public enum SCSIRequestKind: Sendable, Hashable {
    case read, write, flush, trim, writeZeroes
    /// Probe and management commands (INQUIRY, READ CAPACITY, MODE SENSE, REPORT LUNS...).
    case management

    var isWriteLike: Bool { self == .write || self == .writeZeroes }
    /// Commands that are optional in SBC: the target may legitimately not implement them.
    var isOptional: Bool { self == .trim || self == .writeZeroes }
}

/// Why a command is worth re-issuing.
public enum RetryReason: Sendable, Hashable {
    /// UNIT ATTENTION: the command was not executed (SAM); re-issue at once.
    case unitAttention
    /// BUSY, TASK SET FULL, or NOT READY with a transient cause: re-issue after a growing delay.
    case busy
    /// ABORTED COMMAND / TASK ABORTED (e.g. an iSCSI digest error, RFC 7143 §11.4.7.2): re-issue a bounded
    /// number of times.
    case aborted
}

/// The outcome of one SCSI command for a block request.
public enum SCSIOutcome: Sendable, Hashable {
    case success
    case retry(RetryReason)
    /// Fail with this errno. `unsupported` marks an optional command the target does not implement
    /// (ILLEGAL REQUEST 20/00, 24/00 or 26/00 on UNMAP / WRITE SAME): the bridge may fall back.
    case failure(BlockDeviceError.Code, unsupported: Bool)
}

/// Sense → errno mapping (STYLE habit 7: a pure total function, one test per row).
///
/// | status / sense | outcome |
/// |---|---|
/// | GOOD, CONDITION MET | success |
/// | CHECK CONDITION, RECOVERED ERROR (1h) | success: SPC says the command completed and the data is good |
/// | CHECK CONDITION, NO SENSE (0h) | retry(aborted): status and sense disagree, so the outcome is unknown; re-issue a bounded number of times |
/// | CHECK CONDITION without (parsable) sense | EIO |
/// | deferred sense (71h/73h), any key | EIO: an earlier write that already reported GOOD was lost |
/// | UNIT ATTENTION (6h), any ASC (29/xx reset, 2A/09 capacity changed, 3F/xx...) | retry(unitAttention) |
/// | NOT READY 04/01, 04/07, 04/0A, 04/14 (becoming ready, in progress, ALUA transition) | retry(busy) |
/// | NOT READY, anything else (04/00, 04/02, 04/03, 3A/00, 04/0B, 04/0C...) | EIO |
/// | MEDIUM ERROR (3h), HARDWARE ERROR (4h) | EIO |
/// | DATA PROTECT 27/07 (space allocation failed, thin pool full) | ENOSPC |
/// | DATA PROTECT, anything else (27/00, 27/01, 27/02...) | EPERM |
/// | ILLEGAL REQUEST 21/00 on write / write zeroes | ENOSPC (nbd-proto.md: a write beyond the end SHOULD be ENOSPC) |
/// | ILLEGAL REQUEST 21/00 on read / trim / flush / management | EINVAL (nbd-proto.md: read or trim beyond the end SHOULD be EINVAL) |
/// | ILLEGAL REQUEST 20/00, 24/00, 26/00 on trim / write zeroes | ENOTSUP, unsupported (the bridge falls back; ENOTSUP only reaches NBD for FAST_ZERO) |
/// | ILLEGAL REQUEST 25/00 (LU not supported: the LU went away) | EIO |
/// | ILLEGAL REQUEST, anything else | EINVAL |
/// | ABORTED COMMAND (Bh) | retry(aborted) |
/// | BLANK CHECK, VOLUME OVERFLOW, MISCOMPARE, COPY ABORTED, vendor, others | EIO |
/// | BUSY, TASK SET FULL | retry(busy) |
/// | TASK ABORTED | retry(aborted) |
/// | RESERVATION CONFLICT | EIO: another initiator holds a reservation; blind retries do not help and NBD has no EACCES |
/// | ACA ACTIVE, any other status | EIO |
public enum SCSIErrorMapping {
    public static func outcome(status: SCSIStatus, sense: SenseData?, request: SCSIRequestKind) -> SCSIOutcome {
        switch status {
        case .good, .conditionMet:
            return .success
        case .busy, .taskSetFull:
            return .retry(.busy)
        case .taskAborted:
            return .retry(.aborted)
        case .reservationConflict:
            return .failure(.eio, unsupported: false)
        case .checkCondition:
            guard let sense else { return .failure(.eio, unsupported: false) }
            return outcome(sense: sense, request: request)
        default:
            return .failure(.eio, unsupported: false)
        }
    }

    /// The CHECK CONDITION rows of the table.
    public static func outcome(sense: SenseData, request: SCSIRequestKind) -> SCSIOutcome {
        if sense.deferred { return .failure(.eio, unsupported: false) }
        let code = sense.code
        switch sense.key {
        case .recoveredError:
            return .success
        case .noSense:
            return .retry(.aborted)
        case .unitAttention:
            return .retry(.unitAttention)
        case .notReady:
            switch code {
            case .becomingReady, .operationInProgress, .asymmetricAccessStateTransition, .spaceAllocationInProgress:
                return .retry(.busy)
            default:
                return .failure(.eio, unsupported: false)
            }
        case .mediumError, .hardwareError:
            return .failure(.eio, unsupported: false)
        case .dataProtect:
            return code == .spaceAllocationFailedWriteProtect
                ? .failure(.enospc, unsupported: false) : .failure(.eperm, unsupported: false)
        case .illegalRequest:
            switch code {
            case .lbaOutOfRange:
                return .failure(request.isWriteLike ? .enospc : .einval, unsupported: false)
            case .invalidCommandOperationCode, .invalidFieldInCDB, .invalidFieldInParameterList:
                return request.isOptional ? .failure(.enotsup, unsupported: true) : .failure(.einval, unsupported: false)
            case .logicalUnitNotSupported:
                return .failure(.eio, unsupported: false)
            default:
                return .failure(.einval, unsupported: false)
            }
        case .abortedCommand:
            return .retry(.aborted)
        default:
            return .failure(.eio, unsupported: false)
        }
    }
}
