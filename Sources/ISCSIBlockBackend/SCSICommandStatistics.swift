import NIOCore
import SCSI

/// What the commands of one LUN came back with: commands by opcode and status, sense keys, retries by cause,
/// and failures in transport (no status). Kept on the transport's event loop, where every completion of the
/// LUN's `CommandRunner` runs: plain integers, no lock, no hashing on the way (flat arrays indexed by opcode
/// and a small status index); `snapshot()` reads them there.
public final class SCSICommandStatistics: @unchecked Sendable {
    // SAFETY: `state` is read and written on `eventLoop` only.
    /// The status bytes SAM defines, in index order; anything else counts under `other`.
    public static let statuses: [SCSIStatus] = [
        .good, .checkCondition, .conditionMet, .busy, .reservationConflict, .taskSetFull, .acaActive, .taskAborted,
    ]

    public struct Snapshot: Sendable, Hashable {
        /// Completed commands, `[opcode * (statuses.count + 1) + statusIndex]`; the last status index is "other".
        var commands: [UInt64]
        /// Sense keys seen in CHECK CONDITION answers, by `SenseKey.rawValue` (0 to 15).
        public var senseKeys: [UInt64]
        /// Commands re-issued, by cause (`RetryCause`).
        public var retries: [RetryCause: UInt64]
        /// Commands that got no status at all (the session failed them: closed, replacement timeout...).
        public var transportFailures: UInt64

        /// Every (opcode, status) with a non-zero count; `status` is nil for statuses SAM does not define.
        public var commandCounts: [(opcode: SCSIOpcode, status: SCSIStatus?, count: UInt64)] {
            let width = SCSICommandStatistics.statuses.count + 1
            return commands.indices.compactMap { i in
                guard commands[i] > 0 else { return nil }
                let s = i % width
                return (SCSIOpcode(rawValue: UInt8(i / width)), s < width - 1 ? SCSICommandStatistics.statuses[s] : nil, commands[i])
            }
        }

        public func count(opcode: SCSIOpcode, status: SCSIStatus) -> UInt64 {
            commands[Int(opcode.rawValue) * (SCSICommandStatistics.statuses.count + 1) + SCSICommandStatistics.statusIndex(status)]
        }
    }

    /// Why a command was re-issued (`RetryPolicy`): the status, or for CHECK CONDITION the sense key.
    public enum RetryCause: String, Sendable, Hashable, CaseIterable {
        case busy
        case taskSetFull = "task_set_full"
        case unitAttention = "unit_attention"
        case notReady = "not_ready"
        case abortedCommand = "aborted_command"
        case taskAborted = "task_aborted"
        case other

        init(status: SCSIStatus, sense: SenseData?) {
            switch status {
            case .busy: self = .busy
            case .taskSetFull: self = .taskSetFull
            case .taskAborted: self = .taskAborted
            default:
                switch sense?.key {
                case .unitAttention?: self = .unitAttention
                case .notReady?: self = .notReady
                case .abortedCommand?: self = .abortedCommand
                default: self = .other
                }
            }
        }
    }

    private var state = Snapshot(
        commands: [UInt64](repeating: 0, count: 256 * (statuses.count + 1)),
        senseKeys: [UInt64](repeating: 0, count: 16), retries: [:], transportFailures: 0)
    public let eventLoop: any EventLoop

    public init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// The counts now, read on the event loop.
    public func snapshot() -> EventLoopFuture<Snapshot> {
        eventLoop.submit { self.state }
    }

    static func statusIndex(_ status: SCSIStatus) -> Int {
        statuses.firstIndex(of: status) ?? statuses.count
    }

    // The recorders run on `eventLoop` (the completions of the runner's commands).

    /// A status came back (every attempt, retried or not).
    func record(opcode: UInt8, status: SCSIStatus) {
        state.commands[Int(opcode) * (Self.statuses.count + 1) + Self.statusIndex(status)] &+= 1
    }

    func record(sense: SenseData) {
        state.senseKeys[Int(sense.key.rawValue)] &+= 1
    }

    func recordRetry(_ cause: RetryCause) {
        state.retries[cause, default: 0] &+= 1
    }

    func recordTransportFailure() {
        state.transportFailures &+= 1
    }
}
