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
/// transport's event loop. A class: each command's completion captures one reference, not copies of
/// the fields (measured: copying the struct into closures was a visible share of retain/release).
final class CommandRunner: Sendable {
    let transport: any SCSITransport
    let lun: LogicalUnitNumber
    let policy: RetryPolicy
    let logger: Logger
    /// Told about every unit attention (the command itself is retried).
    let unitAttentions = UnitAttentionRelay()
    /// Statuses, sense keys and retries of this LUN's commands (on the transport's loop, like the completions).
    let statistics: SCSICommandStatistics

    init(transport: any SCSITransport, lun: LogicalUnitNumber, policy: RetryPolicy, logger: Logger) {
        self.transport = transport
        self.statistics = SCSICommandStatistics(eventLoop: transport.eventLoop)
        self.lun = lun
        self.policy = policy
        self.logger = logger
    }

    /// Succeeds with the result when the outcome is success; fails with `SCSICommandFailure` or
    /// `BlockDeviceError` (transport failures: EIO unless the transport already gave a `BlockDeviceError`).
    func execute(_ command: SCSICommand, kind: SCSIRequestKind) -> EventLoopFuture<SCSICommandResult> {
        let promise = transport.eventLoop.makePromise(of: SCSICommandResult.self)
        attempt(command, kind: kind, retries: RetryState()) { promise.completeWith($0) }
        return promise.futureResult
    }

    /// The data path's form: `transform` turns a successful result into the value, on the transport's loop;
    /// every failure arrives as a `BlockDeviceError`. One promise per command (no future chain).
    func execute<T: Sendable>(
        _ command: SCSICommand, kind: SCSIRequestKind,
        _ transform: @escaping @Sendable (SCSICommandResult) throws(BlockDeviceError) -> T
    ) -> EventLoopFuture<T> {
        let promise = transport.eventLoop.makePromise(of: T.self)
        attempt(command, kind: kind, retries: RetryState()) { result in
            switch result {
            case .success(let value):
                do throws(BlockDeviceError) {
                    promise.succeed(try transform(value))
                } catch {
                    promise.fail(error)
                }
            case .failure(let error):
                promise.fail(error.asBlockDeviceError)
            }
        }
        return promise.futureResult
    }

    private func attempt(
        _ command: SCSICommand, kind: SCSIRequestKind, retries: RetryState,
        _ done: @escaping @Sendable (Result<SCSICommandResult, any Error>) -> Void
    ) {
        transport.execute(command, lun: lun).whenComplete { result in
            switch result {
            case .success(let result):
                self.statistics.record(opcode: command.cdb.opcode, status: result.status)
                if result.status == .good || result.status == .conditionMet {
                    // Fast path (every I/O on a healthy target): success whatever the sense says.
                    done(.success(result))
                } else {
                    self.evaluate(result, command, kind: kind, retries: retries, done)
                }
            case .failure(let error):
                self.statistics.recordTransportFailure()
                let opcode = SCSIOpcode(rawValue: command.cdb.opcode)
                done(.failure((error as? BlockDeviceError) ?? BlockDeviceError(.eio, "\(opcode) failed in transport: \(error)")))
            }
        }
    }

    /// A status other than GOOD: sense mapping, retries (scheduled on the transport's loop) or failure.
    private func evaluate(
        _ result: SCSICommandResult, _ command: SCSICommand, kind: SCSIRequestKind, retries: RetryState,
        _ done: @escaping @Sendable (Result<SCSICommandResult, any Error>) -> Void
    ) {
        let opcode = SCSIOpcode(rawValue: command.cdb.opcode)
        let sense: SenseData?
        if let raw = result.senseData, raw.readableBytes > 0 {
            do {
                sense = try SenseData(parsing: raw)
            } catch {
                logger.warning("unparsable sense data", metadata: ["scsi.opcode": "\(opcode)", "error": "\(error)"])
                sense = nil
            }
        } else {
            sense = nil
        }
        if let sense { statistics.record(sense: sense) }
        switch SCSIErrorMapping.outcome(status: result.status, sense: sense, request: kind) {
        case .success:
            done(.success(result))
        case .retry(let reason):
            var retries = retries
            let what = sense.map { "\(result.status), \($0)" } ?? "\(result.status)"
            guard let delay = retries.next(reason, policy: policy) else {
                done(.failure(
                    SCSICommandFailure(
                        opcode: opcode, status: result.status, sense: sense,
                        error: BlockDeviceError(.eio, "\(opcode): \(what); gave up after \(retries.totalRetries) retries"),
                        unsupported: false)))
                return
            }
            logger.debug(
                "retrying SCSI command",
                metadata: ["scsi.opcode": "\(opcode)", "scsi.status": "\(what)", "retry.delay": "\(delay)"])
            statistics.recordRetry(SCSICommandStatistics.RetryCause(status: result.status, sense: sense))
            let next = retries
            if reason == .unitAttention, let sense { unitAttentions.notify(sense) }
            if delay == .zero {
                attempt(command, kind: kind, retries: next, done)
            } else {
                transport.eventLoop.scheduleTask(in: delay) { self.attempt(command, kind: kind, retries: next, done) }
            }
        case .failure(let code, let unsupported):
            let what = sense.map { "\(result.status), \($0)" } ?? "\(result.status)"
            done(.failure(
                SCSICommandFailure(
                    opcode: opcode, status: result.status, sense: sense,
                    error: BlockDeviceError(code, "\(opcode) at LUN \(lun): \(what)"), unsupported: unsupported)))
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
