import ISCSIProtocol
import Logging
import NIOCore
import SCSI

/// How a login attempt ended (failures fail the promise instead).
enum LoginOutcome: Sendable {
    case loggedIn(OperationalParameters, tsih: UInt16)
    case redirect(TargetPortalAddress)
}

/// A command waiting for the CmdSN window or a free task slot.
struct PendingCommand {
    var command: SCSICommand
    var lun: LogicalUnitNumber
    var promise: EventLoopPromise<SCSICommandResult>
    /// How often this command's timeout has dropped a connection (`maxTimeoutRecoveries` caps it).
    var timeoutRecoveries = 0
}

/// Called when a connection that has a session above it is lost: the commands the target has not
/// answered (in submission order, queued ones last) go back to the session for re-issue, with the
/// reason and the Time2Wait a target's Async Message asked for, if any.
typealias ConnectionLostSink = (ISCSISessionError, [PendingCommand], TimeAmount?) -> Void

/// One iSCSI connection's protocol engine, from login through the full feature phase to logout
/// (RFC 7143 §4.2.2, §8.1.3 initiator connection states, §11). A value type with no IO: it is fed inbound
/// PDUs, submissions, timer ticks and connection events, and queues `ConnectionAction`s for its channel
/// handler, taken one at a time with `nextAction()` (the queue keeps its capacity: no allocation per PDU).
///
/// Anything the target can cause ends in actions (fail a command, close the connection with an error),
/// never in a trap; the session above recovers (RFC 7143 §7.1.4.4).
struct ConnectionStateMachine {
    /// Fixed tags for the connection's own exchanges, above every TaskTable slot.
    static let loginITT: UInt32 = 0x0000_FFF1
    static let pingITT: UInt32 = 0x0000_FFF2
    static let logoutITT: UInt32 = 0x0000_FFF3
    static let textITT: UInt32 = 0x0000_FFF4
    static let taskManagementITT: UInt32 = 0x0000_FFF5

    enum State {
        /// Connected, no Login Request sent yet (RFC 7143 §8.1.3: between S2 XPT_WAIT and S4 IN_LOGIN).
        case idle
        /// Login Requests and Responses are being exchanged (RFC 7143 §6.3; S4 IN_LOGIN). Boxed: the login
        /// machine is large and short-lived, and would otherwise size every move of the state.
        indirect case loggingIn(LoggingIn)
        /// Logged in (S5 LOGGED_IN); `FullFeature.logout` says how far a logout has come (S7, S6).
        case fullFeature(FullFeatureStorage)
        /// Closed or closing: nothing outstanding, inbound PDUs are ignored.
        case closed
        /// Placeholder while a payload is mutated in place, so its buffers stay uniquely referenced and are
        /// not copied on write (swift-nio-http2's `_modifying`). Never seen between events.
        case _modifying
    }

    struct LoggingIn {
        var login: LoginStateMachine
        var promise: EventLoopPromise<LoginOutcome>
        /// RFC 7143 §4.2.2.2: status numbering starts with the first Login Response.
        var expStatSN = SerialNumber(0)
    }

    /// The full feature phase: SCSI commands flow (RFC 7143 §4.2.2.1 command window, §11.2.1.8 task tags).
    struct FullFeature {
        var parameters: SessionParameters
        var window: CommandWindow
        var tasks: TaskTable<SCSITask>
        /// Commands waiting for the window or a task slot, in submission order.
        var pending = CircularBuffer<PendingCommand>(initialCapacity: 16)
        /// Lowered on TASK SET FULL / BUSY, grown back slowly.
        var depth: AdaptiveQueueDepth
        /// Submission order, so re-issued commands keep their original order.
        var nextSequence: UInt64 = 0
        /// A Text Request exchange in progress (discovery): the text so far and who waits for it.
        var text: TextExchange?
        /// Nil when pings are off.
        var keepAlive: KeepAlive?
        /// Nil when command timeouts are off.
        var ladder: CommandTimeoutLadder?
        var logout = LogoutPhase.none
    }

    /// The full feature payload, out of line: the state then moves as one reference instead of ~350 bytes
    /// (each take and store moved it several times, ~900 instructions per I/O in `memcpy`).
    final class FullFeatureStorage {
        /// Unchecked exclusivity: it is mutated only between `takeFullFeature()`, which makes the reference
        /// unique, and `store(_:)`, by the machine's own methods, which never call out; so accesses cannot
        /// overlap, and the runtime check (~130 instructions each) is left out.
        @exclusivity(unchecked) var value: FullFeature

        init(_ value: FullFeature) { self.value = value }
    }

    struct TextExchange {
        var text: ByteBuffer
        var promise: EventLoopPromise<ByteBuffer>
    }

    /// How far a logout (reason: close the session, RFC 7143 §11.14) has come.
    enum LogoutPhase {
        /// No logout asked for: new commands are accepted.
        case none
        /// Logout asked for (S7 LOGOUT_REQUESTED: "waiting for an internal event signaling readiness to
        /// proceed with Logout"): new commands are refused (or held for the next connection); the Logout
        /// Request goes out once the queued and outstanding commands are done.
        case draining(Logout)
        /// Logout Request sent (S6 IN_LOGOUT); waiting for the Logout Response.
        case requested(Logout)
        /// Logout Response received: the connection is closing. Held commands go back to the session when it
        /// has closed.
        case done(held: [PendingCommand])
    }

    struct Logout {
        /// Who waits for the Logout Response; nil for a logout the target asked for that nobody waits on.
        var promise: EventLoopPromise<Void>?
        /// RFC 7143 §11.9.1 AsyncEvent 1: the target asked for this logout. With a session above, commands
        /// submitted meanwhile wait for the next connection instead of failing.
        var requestedByTarget: Bool
        var held: [PendingCommand] = []
    }

    let configuration: ISCSISessionConfiguration
    var logger: Logger
    /// For the buffers the machine builds (assembled Data-In, text, login keys): the channel's allocator.
    var allocator = ByteBufferAllocator()
    /// Set by the session once the connection is in use: a lost connection hands its unanswered commands
    /// back instead of failing them (RFC 7143 §7.1.4.4 session recovery).
    var connectionLostSink: ConnectionLostSink?
    private(set) var state = State.idle
    /// The CmdSN of the leading Login Request and so of the first command (RFC 7143 §11.12.8: any value).
    let initialCmdSN: SerialNumber
    /// Why the connection ends, once known (the error handed to everything still outstanding).
    private(set) var closeReason: ISCSISessionError?
    /// Time2Wait from an Async Message announcing a drop (RFC 7143 §11.9.1, Parameter2).
    private var time2WaitHint: TimeAmount?
    /// When bytes last arrived (any PDU proves the connection alive).
    private(set) var lastReceive = NIODeadline.uptimeNanoseconds(0)
    /// Actions not taken yet: `outbox[outboxHead..<outboxCount]`. An array, not a ring, because `Array.append`
    /// takes its element owned (a move), and `nextAction()` swaps each one out (a move again): the payloads'
    /// references are not retained and released on the way (each copy of an action cost ~160 instructions).
    /// Slots past `outboxCount` hold `.flush` (no payload) and are overwritten in place by the next `emit`s;
    /// emptying the array instead cost ~200 instructions each time the queue ran dry.
    private var outbox: [ConnectionAction] = {
        var actions: [ConnectionAction] = []
        actions.reserveCapacity(16)
        return actions
    }()
    private var outboxHead = 0
    private var outboxCount = 0
    /// PDUs and errors of this connection (`iscsiadm -m session -s`); the handler counts what it writes.
    var counters = ISCSIPDUCounters()

    init(configuration: ISCSISessionConfiguration, logger: Logger, initialCmdSN: SerialNumber = SerialNumber(1)) {
        self.configuration = configuration
        self.logger = logger
        self.initialCmdSN = initialCmdSN
    }

    /// The next thing to do, in order; nil when there is nothing more.
    mutating func nextAction() -> ConnectionAction? {
        guard outboxHead < outboxCount else {
            outboxHead = 0
            outboxCount = 0
            return nil
        }
        var action = ConnectionAction.flush
        swap(&action, &outbox[outboxHead])
        outboxHead += 1
        return action
    }

    mutating func emit(_ action: consuming ConnectionAction) {
        if outboxCount < outbox.count {
            outbox[outboxCount] = action
        } else {
            outbox.append(action)
        }
        outboxCount += 1
    }

    // MARK: - Queries

    var isClosed: Bool {
        switch state {
        case .closed: return true
        case .fullFeature(let storage):
            if case .done = storage.value.logout { return true }
            return false
        case .idle, .loggingIn: return false
        case ._modifying: preconditionFailure("state queried while being modified")
        }
    }

    /// Logged in, no logout under way: the session may send through this connection.
    var isInFullFeaturePhase: Bool {
        guard case .fullFeature(let storage) = state, case .none = storage.value.logout else { return false }
        return true
    }

    var parameters: SessionParameters {
        guard case .fullFeature(let storage) = state else { return SessionParameters() }
        return storage.value.parameters
    }

    /// The command window and queue depth now; nil outside the full feature phase.
    var windowSnapshot: ISCSICommandWindowSnapshot? {
        guard case .fullFeature(let storage) = state else { return nil }
        let ff = storage.value
        return ISCSICommandWindowSnapshot(
            queueDepth: ff.depth.current, outstanding: ff.tasks.count, queued: ff.pending.count,
            cmdSN: ff.window.cmdSN.rawValue, expCmdSN: ff.window.expCmdSN.rawValue, maxCmdSN: ff.window.maxCmdSN.rawValue,
            window: ff.window.available)
    }

    var outstandingTasks: Int {
        guard case .fullFeature(let storage) = state else { return 0 }
        return storage.value.tasks.count
    }

    /// Takes the full feature payload out of `state`, leaving `_modifying`, so that it is mutated in place
    /// (`storage.value`); the caller puts it back with `store(_:)` before anything else reads `state`. A
    /// payload shared with a copy of this machine is copied first (copy on write), so the machine keeps
    /// value semantics.
    mutating func takeFullFeature() -> FullFeatureStorage? {
        guard case .fullFeature = state else { return nil }
        var taken = State._modifying
        swap(&taken, &state)
        guard case .fullFeature(var storage) = consume taken else { preconditionFailure("the state was full feature") }
        if !isKnownUniquelyReferenced(&storage) { storage = FullFeatureStorage(storage.value) }
        return storage
    }

    mutating func store(_ storage: FullFeatureStorage) { state = .fullFeature(storage) }

    mutating func enter(_ newState: State) { state = newState }

    // MARK: - Connection events

    /// Bytes arrived (before they are parsed).
    mutating func receivedBytes(at now: NIODeadline) { lastReceive = now }

    /// One inbound PDU. `dataPieces`: for a Data-In whose data segment spanned reads, the slices it arrived
    /// in (then `pdu.data` is empty); they are kept as they are. Commands queued for the window or a task
    /// slot go out as soon as the PDU lets them.
    mutating func receive(_ pdu: ISCSIPDU, dataPieces: [ByteBuffer] = [], now: NIODeadline) {
        var dataLength = pdu.data.readableBytes
        for piece in dataPieces { dataLength += piece.readableBytes }
        counters.countReceived(pdu.header.opcode, dataLength: dataLength)
        do throws(ISCSISessionError) {
            switch state {
            case .loggingIn(var loggingIn):
                guard pdu.header.opcode == .loginResponse else {
                    throw .protocolViolation("\(pdu.header.opcode) during login")
                }
                state = ._modifying
                do throws(ISCSISessionError) {
                    try receiveLoginResponse(pdu, &loggingIn, now: now)
                } catch {
                    state = .loggingIn(loggingIn)
                    throw error
                }
            case .idle:
                throw .protocolViolation("\(pdu.header.opcode) before login")
            case .closed:
                return
            case .fullFeature:
                guard let storage = takeFullFeature() else { preconditionFailure("the state was full feature") }
                if case .done = storage.value.logout {
                    store(storage)
                    return
                }
                do throws(ISCSISessionError) {
                    let message = try InboundMessage(pdu)
                    applySequenceNumbers(of: message, header: pdu.header, to: &storage.value.window)
                    try receive(message, dataPieces: dataPieces, &storage.value, now: now)
                    // The window may have opened or a task slot freed: queued commands go now, while the
                    // payload is out (a second take and store per PDU cost ~1,000 instructions).
                    if !storage.value.pending.isEmpty { sendQueuedCommands(&storage.value, now: now) }
                } catch {
                    store(storage)
                    throw error
                }
                store(storage)
            case ._modifying:
                preconditionFailure("re-entered while modifying")
            }
        } catch {
            targetFailed(error)
        }
    }

    /// The framing found a malformed PDU (RFC 7143 §11.2): the connection is dropped.
    mutating func receiveMalformed(_ error: ISCSIPDUError) {
        switch error {
        case .headerDigestMismatch, .dataDigestMismatch: counters.digestErrors &+= 1
        default: break
        }
        targetFailed(.malformedPDU(error))
    }

    /// The channel reported an error.
    mutating func errorCaught() {
        fail(closeReason ?? .connectionClosed)
    }

    /// The channel is down.
    mutating func connectionClosed() {
        connectionLost(closeReason ?? .connectionClosed)
    }

    /// The target broke the protocol (or refused the login): log, then drop the connection.
    private mutating func targetFailed(_ error: ISCSISessionError) {
        switch error {
        case .malformedPDU(let pduError):
            logger.error("malformed PDU from target, dropping connection", metadata: ["error": "\(pduError)"])
        case .login:
            // A refused login (authentication failed, target not found...) is the caller's error to report.
            logger.debug("login refused, closing the connection", metadata: ["error": "\(error)"])
        default:
            logger.error("target broke the protocol, dropping connection", metadata: ["error": "\(error)"])
        }
        fail(error)
    }

    // MARK: - Sequence numbers

    /// RFC 7143 §4.2.2.1, §4.2.2.2: the one place where the full feature phase takes in a target PDU's
    /// StatSN, ExpCmdSN and MaxCmdSN (every target PDU carries them in bytes 24, 28 and 32, §11.4.9-11).
    /// ExpCmdSN/MaxCmdSN always update the window. StatSN acknowledges a status except where it only
    /// announces the next one: R2T (§11.8.3), NOP-In with ITT 0xffffffff (§11.19.2), Data-In without the
    /// S bit (§11.7.3: "StatSN ... only [has] meaningful content if the S bit is set").
    private func applySequenceNumbers(of message: InboundMessage, header: BasicHeaderSegment, to window: inout CommandWindow) {
        window.update(expCmdSN: SerialNumber(header.field28), maxCmdSN: SerialNumber(header.field32))
        if message.carriesStatus { window.receiveStatSN(SerialNumber(header.field24)) }
    }

    // MARK: - Failure

    /// Drops the connection; `connectionClosed()` then finds nothing left.
    mutating func fail(_ error: ISCSISessionError) {
        if closeReason == nil { closeReason = error }
        let wasClosed = isClosed
        connectionLost(error)
        if !wasClosed { emit(.close) }
    }

    /// Sets the reason the connection will end with, whatever was recorded before (Async Message).
    mutating func recordCloseReason(_ error: ISCSISessionError) { closeReason = error }

    mutating func recordTime2Wait(_ time2Wait: TimeAmount) { time2WaitHint = time2Wait }

    /// Fails every outstanding task, queued command, login, text exchange and logout; with a session above
    /// (`connectionLostSink`), the commands go back to it for re-issue instead.
    private mutating func connectionLost(_ error: ISCSISessionError) {
        let previous = state
        state = .closed
        emit(.cancelAllTimers)
        var failed: [SCSITask] = []
        var queued = CircularBuffer<PendingCommand>()
        var held: [PendingCommand] = []
        var logout: EventLoopPromise<Void>?
        switch previous {
        case .idle, .closed:
            break
        case .loggingIn(let loggingIn):
            emit(.completeLogin(loggingIn.promise, .failure(error)))
        case .fullFeature(let storage):
            var ff = storage.value
            failed = ff.tasks.removeAll()
            queued = ff.pending
            switch ff.logout {
            case .none: break
            case .draining(let l), .requested(let l):
                held = l.held
                logout = l.promise
            case .done(let h):
                held = h
            }
            if let text = ff.text { emit(.completeText(text.promise, .failure(error))) }
        case ._modifying:
            preconditionFailure("connection lost while modifying")
        }
        if let sink = connectionLostSink {
            connectionLostSink = nil
            var reissue: [PendingCommand] = []
            reissue.reserveCapacity(failed.count + queued.count + held.count)
            for task in failed.sorted(by: { $0.sequence < $1.sequence }) {
                let recoveries = task.original.timeoutRecoveries
                guard recoveries < configuration.maxTimeoutRecoveries else {
                    logger.error("command unanswered through \(recoveries) connection recoveries: failing it", metadata: [
                        "scsi.cdb": "\(task.original.command.cdb)",
                    ])
                    emit(.failCommand(task.promise, .timeout("command (unanswered through \(recoveries) connection recoveries)")))
                    continue
                }
                reissue.append(task.original)
            }
            reissue.append(contentsOf: queued)
            reissue.append(contentsOf: held)
            // A target-requested logout that completed is not a failure of the logout itself.
            if let logout { emit(.completeLogout(logout, error == .targetRequestedLogout ? .success(()) : .failure(error))) }
            emit(.handBack(sink, error, reissue, time2Wait: time2WaitHint))
            return
        }
        for task in failed { emit(.failCommand(task.promise, error)) }
        for command in queued { emit(.failCommand(command.promise, error)) }
        for command in held { emit(.failCommand(command.promise, error)) }
        if let logout { emit(.completeLogout(logout, .failure(error))) }
    }
}

/// The PDUs a target may send in the full feature phase (RFC 7143 §11), decoded.
enum InboundMessage {
    case dataIn(ISCSIPDU.DataIn)
    case scsiResponse(ISCSIPDU.SCSIResponse)
    case readyToTransfer(ISCSIPDU.ReadyToTransfer)
    case nopIn(ISCSIPDU.NOPIn)
    case asyncMessage(ISCSIPDU.AsyncMessage)
    case reject(ISCSIPDU.Reject)
    case logoutResponse(ISCSIPDU.LogoutResponse)
    case taskManagementResponse(ISCSIPDU.TaskManagementResponse)
    case textResponse(ISCSIPDU.TextResponse)

    init(_ pdu: ISCSIPDU) throws(ISCSISessionError) {
        switch pdu.header.opcode {
        case .dataIn: self = .dataIn(try Self.decode(pdu))
        case .scsiResponse: self = .scsiResponse(try Self.decode(pdu))
        case .readyToTransfer: self = .readyToTransfer(try Self.decode(pdu))
        case .nopIn: self = .nopIn(try Self.decode(pdu))
        case .asyncMessage: self = .asyncMessage(try Self.decode(pdu))
        case .reject: self = .reject(try Self.decode(pdu))
        case .logoutResponse: self = .logoutResponse(try Self.decode(pdu))
        case .taskManagementResponse: self = .taskManagementResponse(try Self.decode(pdu))
        case .textResponse: self = .textResponse(try Self.decode(pdu))
        default: throw .protocolViolation("unexpected \(pdu.header.opcode) in full feature phase")
        }
    }

    private static func decode<Message: ISCSIPDUConvertible>(_ pdu: ISCSIPDU) throws(ISCSISessionError) -> Message {
        do {
            return try Message(pdu)
        } catch {
            throw .malformedPDU(error)
        }
    }

    /// Whether the PDU's StatSN numbers a status (see `applySequenceNumbers`).
    var carriesStatus: Bool {
        switch self {
        case .dataIn(let dataIn): dataIn.statusPresent
        case .readyToTransfer: false
        case .nopIn(let nop): nop.initiatorTaskTag != reservedTaskTag
        case .scsiResponse, .asyncMessage, .reject, .logoutResponse, .taskManagementResponse, .textResponse: true
        }
    }
}
