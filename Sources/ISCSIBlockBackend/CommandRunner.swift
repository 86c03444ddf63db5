import BlockBackend
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SCSI

/// A command that reached the target and failed for good (after any retries).
struct SCSICommandFailure: Error, CustomStringConvertible {
    var opcode: SCSIOpcode
    var status: SCSIStatus
    var sense: SenseData?
    /// The errno for the block request.
    var error: BlockDeviceError
    /// The target does not implement this optional command (see `SCSIOutcome.failure`).
    var unsupported: Bool

    var description: String { error.description }

    /// ILLEGAL REQUEST: the command or a field of it is not supported (for probe fallbacks).
    var isIllegalRequest: Bool { status == .checkCondition && sense?.key == .illegalRequest }
}

/// Executes commands on one LUN with the sense mapping and retry policy; retries are scheduled on the
/// transport's event loop.
struct CommandRunner: Sendable {
    let transport: any SCSITransport
    let lun: LogicalUnitNumber
    let policy: RetryPolicy
    let logger: Logger
    /// Told about every unit attention (the command itself is retried).
    let unitAttentions = UnitAttentionRelay()

    /// Succeeds with the result when the outcome is success; fails with `SCSICommandFailure` or
    /// `BlockDeviceError` (transport failures: EIO unless the transport already gave a `BlockDeviceError`).
    func execute(_ command: SCSICommand, kind: SCSIRequestKind) -> EventLoopFuture<SCSICommandResult> {
        attempt(command, kind: kind, retries: RetryState())
    }

    private func attempt(_ command: SCSICommand, kind: SCSIRequestKind, retries: RetryState)
        -> EventLoopFuture<SCSICommandResult>
    {
        let loop = transport.eventLoop
        let opcode = SCSIOpcode(rawValue: command.cdb.opcode)
        return transport.execute(command, lun: lun).flatMapError { error in
            let mapped = (error as? BlockDeviceError) ?? BlockDeviceError(.eio, "\(opcode) failed in transport: \(error)")
            return loop.makeFailedFuture(mapped)
        }.flatMap { result in
            let sense: SenseData?
            if let raw = result.senseData, raw.readableBytes > 0 {
                do {
                    sense = try SenseData(parsing: raw)
                } catch {
                    self.logger.warning("unparsable sense data", metadata: ["scsi.opcode": "\(opcode)", "error": "\(error)"])
                    sense = nil
                }
            } else {
                sense = nil
            }
            switch SCSIErrorMapping.outcome(status: result.status, sense: sense, request: kind) {
            case .success:
                return loop.makeSucceededFuture(result)
            case .retry(let reason):
                var retries = retries
                let what = sense.map { "\(result.status), \($0)" } ?? "\(result.status)"
                guard let delay = retries.next(reason, policy: self.policy) else {
                    return loop.makeFailedFuture(
                        SCSICommandFailure(
                            opcode: opcode, status: result.status, sense: sense,
                            error: BlockDeviceError(
                                .eio, "\(opcode): \(what); gave up after \(retries.totalRetries) retries"),
                            unsupported: false))
                }
                self.logger.debug(
                    "retrying SCSI command",
                    metadata: ["scsi.opcode": "\(opcode)", "scsi.status": "\(what)", "retry.delay": "\(delay)"])
                let next = retries
                if reason == .unitAttention, let sense { self.unitAttentions.notify(sense) }
                if delay == .zero {
                    return self.attempt(command, kind: kind, retries: next)
                }
                return loop.flatScheduleTask(in: delay) {
                    self.attempt(command, kind: kind, retries: next)
                }.futureResult
            case .failure(let code, let unsupported):
                let what = sense.map { "\(result.status), \($0)" } ?? "\(result.status)"
                return loop.makeFailedFuture(
                    SCSICommandFailure(
                        opcode: opcode, status: result.status, sense: sense,
                        error: BlockDeviceError(code, "\(opcode) at LUN \(self.lun): \(what)"), unsupported: unsupported))
            }
        }
    }

    /// For async probe code.
    func run(_ cdb: CDB, dataOut: ByteBuffer? = nil, dataIn: UInt32 = 0) async throws -> SCSICommandResult {
        try await execute(SCSICommand(cdb: cdb, dataOut: dataOut, expectedDataInLength: dataIn), kind: .management)
            .get()
    }
}

extension Error {
    /// The errno-carrying form of any error from the runner, for the `BlockDevice` API.
    var asBlockDeviceError: BlockDeviceError {
        if let e = self as? BlockDeviceError { return e }
        if let e = self as? SCSICommandFailure { return e.error }
        return BlockDeviceError(.eio, "\(self)")
    }
}

/// Forwards unit attentions seen by a `CommandRunner` to whoever cares (the device re-reads capacity).
final class UnitAttentionRelay: Sendable {
    private let handler = NIOLockedValueBox<(@Sendable (SenseData) -> Void)?>(nil)
    func setHandler(_ h: @escaping @Sendable (SenseData) -> Void) { handler.withLockedValue { $0 = h } }
    func notify(_ sense: SenseData) { handler.withLockedValue { $0 }?(sense) }
}
