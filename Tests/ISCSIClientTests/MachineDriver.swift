@testable import ISCSIClient
import ISCSIProtocol
import Logging
import NIOCore
import NIOEmbedded
import SCSI

/// Drives `ConnectionStateMachine` directly: PDUs, submissions, ticks and connection events in, actions
/// out. No channel and no sockets: promises live on an EmbeddedEventLoop, and time is a deadline the test
/// moves by hand.
final class MachineDriver: ScriptedTarget {
    let loop = EmbeddedEventLoop()
    var machine: ConnectionStateMachine
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    var statSN = SerialNumber(100)
    var expCmdSN: SerialNumber
    var maxCmdSN: SerialNumber
    let targetKeys: [(String, String)]
    /// What the session above got back (`connectionLostSink`), when `recordHandBacks()` installed one.
    private(set) var handedBack: [(error: ISCSISessionError, commands: [PendingCommand], time2Wait: TimeAmount?)] = []

    init(
        initialCmdSN: UInt32 = 1, window: UInt32 = 64, keys: [(String, String)] = FakeTargetHarness.defaultKeys,
        noopOutInterval: TimeAmount? = nil, commandTimeout: TimeAmount? = nil
    ) throws {
        machine = ConnectionStateMachine(
            configuration: .scripted(noopOutInterval: noopOutInterval, commandTimeout: commandTimeout), logger: Logger(label: "test.machine"), initialCmdSN: SerialNumber(initialCmdSN))
        expCmdSN = SerialNumber(initialCmdSN)
        maxCmdSN = SerialNumber(initialCmdSN &+ window &- 1)
        targetKeys = keys
    }

    deinit {
        // Whatever is still outstanding fails (NIO flags promises that are never completed).
        machine.connectionLostSink = nil
        machine.connectionClosed()
        take()
        for call in handedBack { for command in call.commands { command.promise.fail(ISCSISessionError.sessionClosed) } }
    }

    /// Hands lost commands to `handedBack` instead of failing them, as a session above does.
    func recordHandBacks() {
        machine.connectionLostSink = { [unowned self] error, commands, time2Wait in
            self.handedBack.append((error, commands, time2Wait))
        }
    }

    /// The actions queued since the last call. Promise completions and hand-backs are carried out as the
    /// channel handler would; everything is returned for the test to look at.
    @discardableResult
    func take() -> [ConnectionAction] {
        var taken: [ConnectionAction] = []
        while let action = machine.nextAction() {
            switch action {
            case .succeedCommand(let promise, let result): promise.succeed(result)
            case .failCommand(let promise, let error): promise.fail(error)
            case .completeLogin(let promise, let result): promise.completeWith(result.mapError { $0 })
            case .completeText(let promise, let result): promise.completeWith(result.mapError { $0 })
            case .completeLogout(let promise, let result): promise.completeWith(result.mapError { $0 })
            case .cascadeLogout(let first, let second): first.futureResult.cascade(to: second)
            case .handBack(let sink, let error, let commands, let time2Wait): sink(error, commands, time2Wait)
            case .send, .sendDataOut, .flush, .scheduleFlush, .armTimer, .cancelTimer, .cancelAllTimers,
                .enterFullFeature, .close:
                break
            }
            taken.append(action)
        }
        return taken
    }

    /// Logs in (AuthMethod=None, then `targetKeys`) and returns what the login completion queued.
    @discardableResult
    func login() throws -> [ConnectionAction] {
        let promise = loop.makePromise(of: LoginOutcome.self)
        machine.startLogin(try LoginStateMachine(configuration: machine.configuration.loginConfiguration), promise: promise)
        var actions = take()
        while let request = try Self.pdus(actions).first(where: { $0.opcode == .loginRequest }).map(ISCSIPDU.LoginRequest.init) {
            actions = deliver(loginResponse(answering: request))
        }
        guard case .success(.loggedIn)? = outcome(promise.futureResult) else {
            throw DriverError(what: "login did not complete: \(String(describing: outcome(promise.futureResult)))")
        }
        return actions
    }

    /// One target PDU, and what the machine did about it. `pieces`: a Data-In's data as the slices of
    /// several reads (the handler's zero-copy path).
    @discardableResult
    func deliver(_ message: ISCSIMessage, pieces: [ByteBuffer] = []) -> [ConnectionAction] {
        machine.receive(message.pdu, dataPieces: pieces, now: now)
        return take()
    }

    /// Delivers several PDUs as one read, as the handler does (queued commands go as soon as the window opens).
    @discardableResult
    func deliverRead(_ messages: ISCSIMessage...) -> [ConnectionAction] {
        machine.receivedBytes(at: now)
        for message in messages { machine.receive(message.pdu, now: now) }
        return take()
    }

    func submit(_ command: SCSICommand, lun: UInt16 = 1) -> (EventLoopFuture<SCSICommandResult>, [ConnectionAction]) {
        let promise = loop.makePromise(of: SCSICommandResult.self)
        machine.submit(PendingCommand(command: command, lun: LogicalUnitNumber(lun), promise: promise), now: now)
        return (promise.futureResult, take())
    }

    func tick(_ timer: ConnectionTimer, after delay: TimeAmount) -> [ConnectionAction] {
        now = now + delay
        machine.timerFired(timer, now: now)
        return take()
    }

    /// The PDUs among `actions`, Data-Out bursts unrolled, as they would go on the wire.
    static func pdus(_ actions: [ConnectionAction]) -> [ISCSIPDU] {
        var pdus: [ISCSIPDU] = []
        for action in actions {
            switch action {
            case .send(let pdu):
                pdus.append(ISCSIPDU(header: pdu.header, additionalHeaderSegments: pdu.additionalHeaderSegments,
                                     data: pdu.data ?? ISCSIPDU.emptyData))
            case .sendDataOut(var burst):
                while let pdu = burst.next() { pdus.append(ISCSIPDU(header: pdu.header, data: pdu.data ?? ISCSIPDU.emptyData)) }
            default:
                break
            }
        }
        return pdus
    }

    static func closes(_ actions: [ConnectionAction]) -> Bool {
        actions.contains { if case .close = $0 { true } else { false } }
    }

    static func armed(_ actions: [ConnectionAction]) -> [(ConnectionTimer, TimeAmount)] {
        actions.compactMap { if case .armTimer(let timer, let delay) = $0 { (timer, delay) } else { nil } }
    }
}

struct DriverError: Error {
    var what: String
}
