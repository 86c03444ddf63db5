import ISCSIProtocol
import Logging
import NIOCore
import SCSI

/// How a login attempt ended (failures fail the promise instead).
enum LoginOutcome: Sendable {
    case loggedIn(OperationalParameters, tsih: UInt16)
    case redirect(TargetPortalAddress)
}

/// A SCSI task in flight.
struct SCSITask {
    var lun: UInt64
    var promise: EventLoopPromise<SCSICommandResult>
    /// The command as submitted, kept for re-issue on a new connection after session recovery.
    var original: PendingCommand
    /// Submission order, so re-issued commands keep their original order.
    var sequence: UInt64
    /// For ABORT TASK's RefCmdSN (RFC 7143 §11.5.3) and the command timeout.
    var cmdSN = SerialNumber(0)
    var sentAt = NIODeadline.uptimeNanoseconds(0)
    /// The write payload (slices of it go out as Data-Out; never copied).
    var dataOut: ByteBuffer?
    var expectedDataIn: Int
    /// Data-In so far: the first PDU's slice, or an assembled buffer once a second PDU came.
    var dataIn: ByteBuffer?
    var dataInAssembled = false
    /// With `SCSICommand.segmentedDataIn` and more than one Data-In PDU: every slice, in order (never
    /// joined); `dataIn` then is nil. A single PDU stays in `dataIn`.
    var dataInSegments: [ByteBuffer] = []
    var dataInReceived = 0
    var nextDataSN = SerialNumber(0)
    var nextR2TSN = SerialNumber(0)
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

/// The connection's protocol engine: login, then the full feature phase (RFC 7143 §4.2.2, §11).
/// Lives on the channel's event loop; every method must be called there.
final class ISCSIConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Fixed tags for the connection's own exchanges, above every TaskTable slot.
    static let loginITT: UInt32 = 0x0000_FFF1
    static let pingITT: UInt32 = 0x0000_FFF2
    static let logoutITT: UInt32 = 0x0000_FFF3
    static let textITT: UInt32 = 0x0000_FFF4
    static let taskManagementITT: UInt32 = 0x0000_FFF5

    private enum State {
        /// Connected, login not started.
        case idle
        /// Login Requests/Responses are being exchanged (RFC 7143 §6.3).
        case loggingIn(LoginStateMachine, EventLoopPromise<LoginOutcome>)
        /// Full feature phase: SCSI commands flow.
        case fullFeature
        /// Logout Request sent; waiting for the Logout Response (RFC 7143 §11.14).
        case loggingOut
        /// The connection is closed or closing.
        case closed
    }

    private let configuration: ISCSISessionConfiguration
    private var logger: Logger
    private var context: ChannelHandlerContext?
    /// Busy polling before the loop sleeps (`ISCSISessionConfiguration.busyPollMicroseconds`).
    private var poller: BusyPoller?
    private var state = State.idle
    private var parser: PDUParser
    private var encoder = PDUEncoder()
    /// The front of a PDU cut by the end of a read, until its header segment group is whole.
    private var cumulation: ByteBuffer?
    /// The rest of that PDU once its header is framed: its data segment gathered as slices of the reads.
    private var collector: DataSegmentCollector?
    private(set) var parameters = SessionParameters()
    /// A Text Request exchange in progress (discovery): the text so far and who waits for it.
    private var textExchange: (text: ByteBuffer, promise: EventLoopPromise<ByteBuffer>)?
    private var window = CommandWindow(cmdSN: SerialNumber(1), expCmdSN: SerialNumber(1), maxCmdSN: SerialNumber(1), expStatSN: SerialNumber(0))
    private var loginExpStatSN = SerialNumber(0)
    private var tsih: UInt16 = 0
    private var tasks: TaskTable<SCSITask>
    private var pending = CircularBuffer<PendingCommand>(initialCapacity: 16)
    private var needsFlush = false
    private var flushScheduled = false
    private var loginTimeout: Scheduled<Void>?
    /// Set by `logout`: no new commands; the Logout goes out when all tasks are done.
    private var logoutPromise: EventLoopPromise<Void>?
    private var logoutTimeout: Scheduled<Void>?
    private var closeError: ISCSISessionError?
    private var lastReceive = NIODeadline.now()
    private var pingSentAt: NIODeadline?
    private var pingTimer: Scheduled<Void>?
    /// Set by the session once the connection is in use: a lost connection hands its unanswered
    /// commands back instead of failing them (RFC 7143 §7.1.4.4 session recovery).
    var connectionLostSink: ConnectionLostSink?
    /// Commands submitted while a target-requested logout is in progress: they wait for the new connection.
    private var held: [PendingCommand] = []
    /// Time2Wait from an Async Message announcing a drop (RFC 7143 §11.9.1, Parameter2).
    private var time2WaitHint: TimeAmount?
    private var nextSequence: UInt64 = 0
    /// The command-timeout ladder on this connection and the task management function in flight.
    private var escalation = TimeoutEscalation()
    private var taskManagement: (step: TimeoutEscalation.Step, sentAt: NIODeadline, victim: UInt32, lun: UInt64)?
    private var commandTimer: Scheduled<Void>?
    /// Lowered on TASK SET FULL / BUSY, grown back slowly.
    private var depth: AdaptiveQueueDepth

    init(configuration: ISCSISessionConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        self.tasks = TaskTable(capacity: max(1, min(configuration.queueDepth, 0xFF00)))
        self.depth = AdaptiveQueueDepth(maximum: max(1, min(configuration.queueDepth, 0xFF00)))
        self.parser = PDUParser(
            digests: .none,
            maxDataSegmentLength: max(8192, configuration.proposal.maxRecvDataSegmentLength),
            direction: .targetToInitiator
        )
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelInactive(context: ChannelHandlerContext) {
        connectionLost(closeError ?? .connectionClosed)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.warning("iSCSI connection error", metadata: ["error": "\(error)"])
        fail(closeError ?? .connectionClosed)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        lastReceive = context.eventLoop.now
        do {
            // A PDU cut by the previous read is completed from the front of this read, copying only its own
            // bytes; the rest of the read is parsed in place (PDU payloads stay slices of the receive buffer).
            if cumulation != nil || collector != nil, try !completeCarriedPDU(from: &buffer, allocator: context.channel.allocator) {
                return
            }
            while !isClosed, let pdu = try parser.parse(&buffer) {
                try process(pdu)
            }
        } catch let error as ISCSIPDUError {
            logger.error("malformed PDU from target, dropping connection", metadata: ["error": "\(error)"])
            fail(.malformedPDU(error))
            return
        } catch let error as ISCSISessionError {
            if case .login = error {
                // A refused login (authentication failed, target not found...) is the caller's error to report.
                logger.debug("login refused, closing the connection", metadata: ["error": "\(error)"])
            } else {
                logger.error("target broke the protocol, dropping connection", metadata: ["error": "\(error)"])
            }
            fail(error)
            return
        } catch {
            fail(.protocolViolation("\(error)"))
            return
        }
        if buffer.readableBytes > 0 { cumulation = buffer }
        drainPending()
    }

    /// Completes the PDU cut by the end of an earlier read from the front of `incoming`; the rest of
    /// `incoming` is then parsed in place. Only the header segment group (at most 1,072 bytes) is ever
    /// copied; the data segment is gathered as slices of the reads (`DataSegmentCollector`), so a Data-In
    /// larger than a socket read reaches the NBD reply without being copied in userspace. Returns false
    /// when `incoming` ran out first (the PDU stays carried over).
    private func completeCarriedPDU(from incoming: inout ByteBuffer, allocator: ByteBufferAllocator) throws -> Bool {
        if var partial = cumulation {
            cumulation = nil
            var frame = try parser.frame(partial)
            if frame == nil {
                // The header segment group itself was cut: copy it whole, a few bytes at a time if need be.
                var head = allocator.buffer(capacity: BasicHeaderSegment.length + 1024 + 4)
                head.writeBuffer(&partial)
                while frame == nil, incoming.readableBytes > 0 {
                    let wanted = max(parser.headerGroupLength(head) - head.readableBytes, 1)  // always progress
                    if var piece = incoming.readSlice(length: min(wanted, incoming.readableBytes)) { head.writeBuffer(&piece) }
                    frame = try parser.frame(head)
                }
                partial = head
            }
            guard let frame else {
                cumulation = partial
                return false
            }
            partial.moveReaderIndex(forwardBy: frame.headerGroupLength)
            var gathered = DataSegmentCollector(frame: frame)
            _ = gathered.take(from: &partial)  // `partial` held less than one PDU: all of it is this PDU's
            collector = gathered
        }
        guard var gathered = collector else { return true }
        collector = nil
        guard gathered.take(from: &incoming) else {
            collector = gathered
            return false
        }
        let pieces = try gathered.finish()
        let frame = gathered.frame
        let pdu = ISCSIPDU(header: frame.header, additionalHeaderSegments: frame.additionalHeaderSegments,
                           data: pieces.count == 1 ? pieces[0] : ISCSIPDU.emptyData)
        try process(pdu, dataPieces: pieces.count > 1 ? pieces : [])
        return true
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushIfNeeded()
        context.fireChannelReadComplete()
        // The next event is the client's next request, or the target's next answer.
        poller?.arm(on: context.eventLoop, outstanding: tasks.count)
    }

    private var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    // MARK: - Login

    func startLogin(_ machine: LoginStateMachine, promise: EventLoopPromise<LoginOutcome>) {
        guard case .idle = state, let context else {
            promise.fail(ISCSISessionError.connectionClosed)
            return
        }
        var machine = machine
        let step = machine.start()
        state = .loggingIn(machine, promise)
        poller = BusyPoller.make(for: context.channel, microseconds: configuration.busyPollMicroseconds, logger: logger)
        loginTimeout = context.eventLoop.assumeIsolated().scheduleTask(in: configuration.loginTimeout) { [self] in
            self.fail(.timeout("login"))
        }
        sendLoginRequest(step)
        flushIfNeeded()
    }

    private func sendLoginRequest(_ step: LoginRequestStep) {
        var request = ISCSIPDU.LoginRequest()
        request.transit = step.transit
        request.continue = step.continue
        request.currentStage = step.csg.rawValue
        request.nextStage = step.wireNSG.rawValue
        request.isid = configuration.isid
        request.tsih = 0
        request.initiatorTaskTag = Self.loginITT
        request.connectionID = 0
        request.cmdSN = window.cmdSN
        request.expStatSN = loginExpStatSN
        request.data = step.keys.encoded(allocator: context?.channel.allocator ?? ByteBufferAllocator())
        let pdu = request.pdu
        send(pdu.header, data: pdu.data)
    }

    private func receiveLogin(_ pdu: ISCSIPDU, machine: LoginStateMachine, promise: EventLoopPromise<LoginOutcome>) throws {
        var machine = machine
        let response = try ISCSIPDU.LoginResponse(pdu)
        guard response.initiatorTaskTag == Self.loginITT else {
            throw ISCSISessionError.protocolViolation("Login Response with ITT \(response.initiatorTaskTag)")
        }
        loginExpStatSN = response.statSN + 1
        let summary = LoginResponseSummary(
            statusClass: response.statusClass, statusDetail: response.statusDetail, transit: response.transit,
            continue: response.continue, csg: LoginStage(rawValue: response.currentStage),
            nsg: LoginStage(rawValue: response.nextStage), tsih: response.tsih, text: response.data
        )
        let action: LoginAction
        do {
            action = try machine.receive(summary)
        } catch {
            throw ISCSISessionError.login(error)
        }
        switch action {
        case .send(let step):
            state = .loggingIn(machine, promise)
            sendLoginRequest(step)
        case .complete(let operational, let tsih):
            loginTimeout?.cancel()
            self.tsih = tsih
            let negotiated = SessionParameters(operational)
            parameters = negotiated
            // RFC 7143 §4.2.2.1: the first command carries the CmdSN of the login; the final Login
            // Response sets the window and StatSN.
            window = CommandWindow(
                cmdSN: window.cmdSN, expCmdSN: response.expCmdSN, maxCmdSN: response.maxCmdSN,
                expStatSN: response.statSN + 1
            )
            // Digests start with the first PDU after the Login Phase (RFC 7143 §13.1).
            parser.digests = negotiated.digests
            parser.maxDataSegmentLength = negotiated.initiatorMaxRecvDataSegmentLength
            encoder.digests = negotiated.digests
            state = .fullFeature
            lastReceive = context?.eventLoop.now ?? .now()
            schedulePingTimer()
            scheduleCommandTimer()
            logger.debug("iSCSI login complete", metadata: ["iscsi.tsih": "\(tsih)", "iscsi.parameters": "\(negotiated)"])
            promise.succeed(.loggedIn(operational, tsih: tsih))
        case .redirect(let address, _):
            loginTimeout?.cancel()
            guard let portal = TargetPortalAddress(parsing: address) else {
                throw ISCSISessionError.login(LoginError(.protocolViolation, key: "TargetAddress", "unusable redirect address"))
            }
            state = .closed
            promise.succeed(.redirect(portal))
            context?.close(promise: nil)
        }
    }

    // MARK: - Text (discovery)

    /// Sends a Text Request and collects the whole response text, following C-bit continuations
    /// (RFC 7143 §11.10, §11.11). One exchange at a time.
    func sendText(_ keys: TextKeyValues, promise: EventLoopPromise<ByteBuffer>) {
        guard case .fullFeature = state, textExchange == nil, window.isOpen, let context else {
            promise.fail(closeError ?? ISCSISessionError.sessionClosed)
            return
        }
        textExchange = (context.channel.allocator.buffer(capacity: 1024), promise)
        var request = ISCSIPDU.TextRequest()
        request.final = true
        request.initiatorTaskTag = Self.textITT
        request.targetTransferTag = reservedTaskTag
        request.cmdSN = window.assignCmdSN()
        request.expStatSN = window.expStatSN
        request.data = keys.encoded(allocator: context.channel.allocator)
        let pdu = request.pdu
        send(pdu.header, data: pdu.data)
        scheduleFlush()
    }

    private func receiveTextResponse(_ response: ISCSIPDU.TextResponse) throws {
        window.update(expCmdSN: response.expCmdSN, maxCmdSN: response.maxCmdSN)
        window.receiveStatSN(response.statSN)
        guard response.initiatorTaskTag == Self.textITT, var exchange = textExchange else {
            throw ISCSISessionError.protocolViolation("unexpected Text Response")
        }
        guard exchange.text.readableBytes + response.data.readableBytes <= TextLimits.default.maxTotalBytes else {
            throw ISCSISessionError.protocolViolation("Text Response longer than \(TextLimits.default.maxTotalBytes) bytes")
        }
        exchange.text.writeImmutableBuffer(response.data)
        if response.final {
            textExchange = nil
            exchange.promise.succeed(exchange.text)
            return
        }
        textExchange = exchange
        // RFC 7143 §11.11.2, §11.10.4: ask for the rest with an empty Text Request echoing the TTT.
        var request = ISCSIPDU.TextRequest()
        request.final = true
        request.initiatorTaskTag = Self.textITT
        request.targetTransferTag = response.targetTransferTag
        request.cmdSN = window.assignCmdSN()
        request.expStatSN = window.expStatSN
        send(request.pdu.header, data: nil)
    }

    // MARK: - Commands

    /// Queues a command; it goes out when the CmdSN window and the queue depth allow.
    func submit(_ command: SCSICommand, lun: LogicalUnitNumber, promise: EventLoopPromise<SCSICommandResult>) {
        submit(PendingCommand(command: command, lun: lun, promise: promise))
    }

    /// Queues a command handed back by a lost connection, keeping what it carries (`timeoutRecoveries`).
    func submit(_ pendingCommand: PendingCommand) {
        if connectionLostSink != nil, closeError == .targetRequestedLogout, !isClosed {
            // The target asked for a logout; the session reconnects and sends these on the new connection.
            held.append(pendingCommand)
            return
        }
        guard case .fullFeature = state, logoutPromise == nil else {
            pendingCommand.promise.fail(closeError ?? ISCSISessionError.sessionClosed)
            return
        }
        let command = pendingCommand.command
        let writeLength = command.dataOut?.readableBytes ?? 0
        guard writeLength <= Int(UInt32.max), command.cdb.count <= 16 else {
            pendingCommand.promise.fail(ISCSISessionError.invalidCommand("transfer length or CDB too long"))
            return
        }
        pending.append(pendingCommand)
        drainPending()
        scheduleFlush()
    }

    /// Sends queued commands while the window is open and task slots are free (RFC 7143 §4.2.2.1).
    private func drainPending() {
        guard case .fullFeature = state else { return }
        while !pending.isEmpty, window.isOpen, !tasks.isFull, tasks.count < depth.current {
            let next = pending.removeFirst()
            sendCommand(next)
        }
        if pending.isEmpty, tasks.isEmpty, textExchange == nil, logoutPromise != nil { sendLogout() }
    }

    private func sendCommand(_ pendingCommand: PendingCommand) {
        let command = pendingCommand.command
        let lun = pendingCommand.lun.encoded
        let writeLength = command.dataOut?.readableBytes ?? 0
        let expectedIn = Int(command.expectedDataInLength)
        let sequence = nextSequence
        nextSequence &+= 1
        guard
            let itt = tasks.insert({ _ in
                SCSITask(lun: lun, promise: pendingCommand.promise, original: pendingCommand, sequence: sequence,
                         dataOut: command.dataOut, expectedDataIn: expectedIn)
            })
        else {
            preconditionFailure("drainPending checked for a free slot")
        }
        let immediate = DataOutPlanner.immediateLength(total: writeLength, parameters: parameters)
        let unsolicited = DataOutPlanner.unsolicitedLength(total: writeLength, parameters: parameters)

        var pdu = ISCSIPDU.SCSICommand()
        pdu.final = unsolicited == immediate
        pdu.read = expectedIn > 0
        pdu.write = writeLength > 0
        pdu.attribute = .simple
        pdu.lun = lun
        pdu.initiatorTaskTag = itt
        pdu.cmdSN = window.assignCmdSN()
        let now = context?.eventLoop.now ?? .now()
        if let slot = tasks.slot(for: itt) {
            tasks.modify(slot: slot) { task in
                task.cmdSN = pdu.cmdSN
                task.sentAt = now
            }
        }
        pdu.expStatSN = window.expStatSN
        var cdb = ISCSIPDU.CDBField()
        var high: UInt64 = 0
        var low: UInt64 = 0
        for i in 0..<command.cdb.count {
            let b = UInt64(command.cdb[i])
            if i < 8 { high |= b << (56 - 8 * UInt64(i)) } else { low |= b << (56 - 8 * UInt64(i - 8)) }
        }
        cdb.high = high
        cdb.low = low
        pdu.cdb = cdb
        var ahs: ByteBuffer? = nil
        if writeLength > 0 {
            pdu.expectedDataTransferLength = UInt32(writeLength)
            if expectedIn > 0 {
                // RFC 7143 §11.2.2.4: bidirectional commands carry the read length in an AHS.
                ahs = AdditionalHeaderSegment.encode([.bidirectionalReadExpectedDataTransferLength(UInt32(expectedIn))])
            }
        } else {
            pdu.expectedDataTransferLength = UInt32(expectedIn)
        }
        var header = pdu.pdu.header
        header.totalAHSLength = 0
        let data = immediate > 0 ? command.dataOut.flatMap { $0.getSlice(at: $0.readerIndex, length: immediate) } : nil
        send(header, ahs: ahs, data: data)

        if unsolicited > immediate, let dataOut = command.dataOut {
            // RFC 7143 §13.10: with InitialR2T=No, unsolicited Data-Out (TTT 0xffffffff) up to FirstBurstLength.
            for segment in DataOutPlanner.segments(
                offset: immediate, length: unsolicited - immediate,
                maxSegment: parameters.targetMaxRecvDataSegmentLength, targetTransferTag: reservedTaskTag)
            {
                sendDataOut(segment, itt: itt, lun: lun, payload: dataOut)
            }
        }
    }

    private func sendDataOut(_ segment: DataOutSegment, itt: UInt32, lun: UInt64, payload: ByteBuffer) {
        var out = ISCSIPDU.DataOut()
        out.final = segment.final
        out.lun = lun
        out.initiatorTaskTag = itt
        out.targetTransferTag = segment.targetTransferTag
        out.expStatSN = window.expStatSN
        out.dataSN = SerialNumber(segment.dataSN)
        out.bufferOffset = UInt32(segment.bufferOffset)
        let slice = payload.getSlice(at: payload.readerIndex + segment.bufferOffset, length: segment.length)
        var header = out.header
        header.dataSegmentLength = 0
        send(header, data: slice)
    }

    // MARK: - Full feature phase PDUs

    /// `dataPieces`: the data segment as the slices of the reads it spanned (then `pdu.data` is empty).
    /// Data-In keeps them as they are; any other PDU gets them joined into `pdu.data`.
    private func process(_ pdu: ISCSIPDU, dataPieces: [ByteBuffer] = []) throws {
        if !dataPieces.isEmpty, pdu.header.opcode != .dataIn {
            var joined = pdu
            joined.data = (context?.channel.allocator ?? ByteBufferAllocator()).buffer(capacity: dataPieces.reduce(0) { $0 + $1.readableBytes })
            for piece in dataPieces { joined.data.writeImmutableBuffer(piece) }
            return try process(joined)
        }
        switch state {
        case .loggingIn(let machine, let promise):
            guard pdu.header.opcode == .loginResponse else {
                throw ISCSISessionError.protocolViolation("\(pdu.header.opcode) during login")
            }
            try receiveLogin(pdu, machine: machine, promise: promise)
            return
        case .idle:
            throw ISCSISessionError.protocolViolation("\(pdu.header.opcode) before login")
        case .closed:
            return
        case .fullFeature, .loggingOut:
            break
        }
        switch pdu.header.opcode {
        case .dataIn: try receiveDataIn(ISCSIPDU.DataIn(pdu), pieces: dataPieces)
        case .scsiResponse: try receiveSCSIResponse(ISCSIPDU.SCSIResponse(pdu))
        case .readyToTransfer: try receiveR2T(ISCSIPDU.ReadyToTransfer(pdu))
        case .nopIn: try receiveNOPIn(ISCSIPDU.NOPIn(pdu))
        case .asyncMessage: try receiveAsyncMessage(ISCSIPDU.AsyncMessage(pdu))
        case .reject: try receiveReject(ISCSIPDU.Reject(pdu))
        case .logoutResponse: try receiveLogoutResponse(ISCSIPDU.LogoutResponse(pdu))
        case .taskManagementResponse: try receiveTaskManagementResponse(ISCSIPDU.TaskManagementResponse(pdu))
        case .textResponse: try receiveTextResponse(ISCSIPDU.TextResponse(pdu))
        default:
            throw ISCSISessionError.protocolViolation("unexpected \(pdu.header.opcode) in full feature phase")
        }
    }

    private func taskSlot(_ itt: UInt32, _ what: String) throws -> Int {
        guard let slot = tasks.slot(for: itt) else {
            throw ISCSISessionError.protocolViolation("\(what) for unknown ITT 0x\(String(itt, radix: 16))")
        }
        return slot
    }

    /// RFC 7143 §11.7: Data-In, checked for DataSN and Buffer Offset order (DataPDUInOrder=Yes) and
    /// the expected length; the status may ride on the last one (S bit).
    /// `pieces`: the data segment as the slices it arrived in, when it spanned reads (else `dataIn.data`).
    private func receiveDataIn(_ dataIn: ISCSIPDU.DataIn, pieces: [ByteBuffer] = []) throws {
        window.update(expCmdSN: dataIn.expCmdSN, maxCmdSN: dataIn.maxCmdSN)
        let slot = try taskSlot(dataIn.initiatorTaskTag, "Data-In")
        let allocator = context?.channel.allocator ?? ByteBufferAllocator()
        try tasks.modify(slot: slot) { (task: inout SCSITask) throws in
            let length = pieces.isEmpty ? dataIn.data.readableBytes : pieces.reduce(0) { $0 + $1.readableBytes }
            guard dataIn.dataSN == task.nextDataSN else {
                throw ISCSISessionError.protocolViolation("Data-In DataSN \(dataIn.dataSN), expected \(task.nextDataSN)")
            }
            guard Int(dataIn.bufferOffset) == task.dataInReceived else {
                throw ISCSISessionError.protocolViolation("Data-In Buffer Offset \(dataIn.bufferOffset), expected \(task.dataInReceived)")
            }
            guard task.dataInReceived + length <= task.expectedDataIn else {
                throw ISCSISessionError.protocolViolation("Data-In beyond the expected \(task.expectedDataIn) bytes")
            }
            task.nextDataSN += 1
            if pieces.isEmpty {
                if length > 0 { Self.store(dataIn.data, in: &task, allocator: allocator) }
            } else {
                for piece in pieces { Self.store(piece, in: &task, allocator: allocator) }
            }
            task.dataInReceived += length
        }
        if dataIn.statusPresent {
            window.receiveStatSN(dataIn.statSN)
            guard let task = tasks.remove(slot: slot) else { return }
            if depth.record(SCSIStatus(rawValue: dataIn.status)) {
                logger.debug("queue depth now \(depth.current)")
            }
            let result = SCSICommandResult(
                status: SCSIStatus(rawValue: dataIn.status), senseData: nil, dataIn: task.dataIn,
                residual: dataIn.signedResidual, dataInSegments: task.dataInSegments
            )
            task.promise.succeed(result)
            taskFinished()
        }
    }

    /// Keeps one piece of Data-In: the first as it is (the common case: no array, no copy); later ones
    /// as further slices with `SCSICommand.segmentedDataIn`, else appended to one assembled buffer.
    private static func store(_ piece: ByteBuffer, in task: inout SCSITask, allocator: ByteBufferAllocator) {
        if task.dataIn == nil && task.dataInSegments.isEmpty {
            task.dataIn = piece
        } else if task.original.command.segmentedDataIn {
            if let first = task.dataIn {
                task.dataInSegments = [first]
                task.dataIn = nil
            }
            task.dataInSegments.append(piece)
        } else {
            if !task.dataInAssembled, let first = task.dataIn {
                var assembled = allocator.buffer(capacity: task.expectedDataIn)
                assembled.writeImmutableBuffer(first)
                task.dataIn = assembled
                task.dataInAssembled = true
            }
            task.dataIn!.writeImmutableBuffer(piece)
        }
    }

    /// RFC 7143 §11.4: status, sense data (a slice of the PDU) and residuals.
    private func receiveSCSIResponse(_ response: ISCSIPDU.SCSIResponse) throws {
        window.update(expCmdSN: response.expCmdSN, maxCmdSN: response.maxCmdSN)
        window.receiveStatSN(response.statSN)
        let slot = try taskSlot(response.initiatorTaskTag, "SCSI Response")
        guard let task = tasks.remove(slot: slot) else { return }
        if response.response != 0 {
            task.promise.fail(ISCSISessionError.targetFailure(response: response.response))
        } else {
            let status = SCSIStatus(rawValue: response.status)
            if depth.record(status) {
                logger.notice("queue depth now \(depth.current)", metadata: ["scsi.status": "\(status)"])
            }
            task.promise.succeed(
                SCSICommandResult(
                    status: SCSIStatus(rawValue: response.status), senseData: response.senseData,
                    dataIn: task.dataIn, residual: response.signedResidual, dataInSegments: task.dataInSegments
                )
            )
        }
        taskFinished()
    }

    /// RFC 7143 §11.8: send the requested range as Data-Out PDUs of at most the target's
    /// MaxRecvDataSegmentLength, DataSN from 0, F on the last (RFC 7143 §11.7.1).
    private func receiveR2T(_ r2t: ISCSIPDU.ReadyToTransfer) throws {
        window.update(expCmdSN: r2t.expCmdSN, maxCmdSN: r2t.maxCmdSN)
        let slot = try taskSlot(r2t.initiatorTaskTag, "R2T")
        guard let task = tasks[slot: slot], let payload = task.dataOut else {
            throw ISCSISessionError.protocolViolation("R2T for a command without data")
        }
        guard r2t.r2tSN == task.nextR2TSN else {
            throw ISCSISessionError.protocolViolation("R2TSN \(r2t.r2tSN), expected \(task.nextR2TSN)")
        }
        let offset = Int(r2t.bufferOffset)
        let length = Int(r2t.desiredDataTransferLength)
        // RFC 7143 §11.8.4: "The Desired Data Transfer Length MUST NOT be 0 and MUST NOT exceed MaxBurstLength."
        guard length <= parameters.maxBurstLength, offset + length <= payload.readableBytes else {
            throw ISCSISessionError.protocolViolation("R2T for \(length) bytes at \(offset) outside the write")
        }
        tasks.modify(slot: slot) { $0.nextR2TSN += 1 }
        for segment in DataOutPlanner.segments(
            offset: offset, length: length, maxSegment: parameters.targetMaxRecvDataSegmentLength,
            targetTransferTag: r2t.targetTransferTag)
        {
            sendDataOut(segment, itt: r2t.initiatorTaskTag, lun: task.lun, payload: payload)
        }
    }

    /// RFC 7143 §11.19: answer a target ping (TTT set) with a NOP-Out; a NOP-In with our ITT answers our ping.
    private func receiveNOPIn(_ nop: ISCSIPDU.NOPIn) throws {
        window.update(expCmdSN: nop.expCmdSN, maxCmdSN: nop.maxCmdSN)
        if nop.initiatorTaskTag != reservedTaskTag {
            window.receiveStatSN(nop.statSN)
            if nop.initiatorTaskTag == Self.pingITT { pingSentAt = nil }
        }
        if nop.targetTransferTag != reservedTaskTag {
            var out = ISCSIPDU.NOPOut()
            out.immediate = true
            out.lun = nop.lun
            out.initiatorTaskTag = reservedTaskTag
            out.targetTransferTag = nop.targetTransferTag
            out.cmdSN = window.immediateCmdSN
            out.expStatSN = window.expStatSN
            let pdu = out.pdu
            send(pdu.header, data: nop.data)
        }
    }

    /// RFC 7143 §11.9.1.
    private func receiveAsyncMessage(_ message: ISCSIPDU.AsyncMessage) throws {
        window.update(expCmdSN: message.expCmdSN, maxCmdSN: message.maxCmdSN)
        window.receiveStatSN(message.statSN)
        switch message.event {
        case .logoutRequested:
            logger.notice("target requested logout", metadata: ["iscsi.seconds": "\(message.parameter3)"])
            closeError = .targetRequestedLogout
            if logoutPromise == nil, let context {
                beginLogout(promise: context.eventLoop.makePromise(of: Void.self))
            }
        case .connectionWillDrop, .sessionWillDrop:
            // RFC 7143 §11.9.1: Parameter2 is Time2Wait, the seconds to wait before reconnecting.
            logger.warning("target will drop the connection", metadata: [
                "iscsi.event": "\(message.event.rawValue)", "iscsi.time2wait": "\(message.parameter2)",
            ])
            time2WaitHint = .seconds(Int64(min(message.parameter2, 3600)))
            closeError = .connectionClosed
        default:
            logger.info("async message", metadata: ["iscsi.event": "\(message.event.rawValue)"])
        }
    }

    /// RFC 7143 §11.17: fail the rejected command; other rejections end the connection (ERL 0).
    private func receiveReject(_ reject: ISCSIPDU.Reject) throws {
        window.update(expCmdSN: reject.expCmdSN, maxCmdSN: reject.maxCmdSN)
        window.receiveStatSN(reject.statSN)
        logger.warning("target rejected a PDU", metadata: ["iscsi.reason": "\(reject.reason.rawValue)"])
        if let header = reject.rejectedHeader, header.opcode == .scsiCommand,
            let slot = tasks.slot(for: header.initiatorTaskTag), let task = tasks.remove(slot: slot)
        {
            task.promise.fail(ISCSISessionError.rejected(reason: reject.reason.rawValue))
            taskFinished()
            return
        }
        if let header = reject.rejectedHeader, header.opcode == .nopOut { return }
        throw ISCSISessionError.rejected(reason: reject.reason.rawValue)
    }

    private func receiveLogoutResponse(_ response: ISCSIPDU.LogoutResponse) throws {
        window.update(expCmdSN: response.expCmdSN, maxCmdSN: response.maxCmdSN)
        window.receiveStatSN(response.statSN)
        guard case .loggingOut = state, response.initiatorTaskTag == Self.logoutITT else {
            throw ISCSISessionError.protocolViolation("unexpected Logout Response")
        }
        logoutTimeout?.cancel()
        let promise = logoutPromise
        logoutPromise = nil
        state = .closed
        if response.response == 0 {
            promise?.succeed(())
        } else {
            promise?.fail(ISCSISessionError.protocolViolation("logout response \(response.response)"))
        }
        context?.close(promise: nil)
    }

    private func taskFinished() {
        if taskManagement == nil { escalation.reset() }
        if logoutPromise != nil, tasks.isEmpty, pending.isEmpty, case .fullFeature = state { sendLogout() }
    }

    // MARK: - Logout

    /// Stops taking commands, lets the outstanding ones finish, then logs out (reason: close the session).
    func beginLogout(promise: EventLoopPromise<Void>) {
        guard case .fullFeature = state, logoutPromise == nil, let context else {
            if let existing = logoutPromise {
                existing.futureResult.cascade(to: promise)
            } else {
                promise.fail(closeError ?? ISCSISessionError.sessionClosed)
            }
            return
        }
        logoutPromise = promise
        logoutTimeout = context.eventLoop.assumeIsolated().scheduleTask(in: configuration.logoutTimeout) { [self] in
            self.fail(.timeout("logout"))
        }
        if tasks.isEmpty && pending.isEmpty && textExchange == nil { sendLogout() }
    }

    private func sendLogout() {
        guard case .fullFeature = state else { return }
        state = .loggingOut
        var request = ISCSIPDU.LogoutRequest()
        request.immediate = true
        request.reason = .closeSession
        request.initiatorTaskTag = Self.logoutITT
        request.cmdSN = window.immediateCmdSN
        request.expStatSN = window.expStatSN
        send(request.pdu.header, data: nil)
        scheduleFlush()
    }

    // MARK: - Pings

    private func schedulePingTimer() {
        guard let interval = configuration.noopOutInterval, let context else { return }
        let tick = TimeAmount.nanoseconds(max(min(interval.nanoseconds, configuration.noopOutTimeout.nanoseconds) / 2, 10_000_000))
        pingTimer = context.eventLoop.assumeIsolated().scheduleTask(in: tick) { [self] in
            self.pingTick(interval: interval)
        }
    }

    private func pingTick(interval: TimeAmount) {
        guard case .fullFeature = state, let context else { return }
        let now = context.eventLoop.now
        if let sent = pingSentAt, lastReceive > sent {
            // Any PDU received after the ping proves the connection alive (a busy target may answer the
            // NOP-Out late; open-iscsi #97): the ping is settled.
            pingSentAt = nil
        } else if let sent = pingSentAt {
            if now - sent > configuration.noopOutTimeout {
                logger.error("NOP-Out ping timed out, dropping connection")
                fail(.timeout("NOP-Out ping"))
                return
            }
        } else if now - lastReceive >= interval {
            var out = ISCSIPDU.NOPOut()
            out.immediate = true
            out.initiatorTaskTag = Self.pingITT
            out.targetTransferTag = reservedTaskTag
            out.cmdSN = window.immediateCmdSN
            out.expStatSN = window.expStatSN
            send(out.pdu.header, data: nil)
            pingSentAt = now
            flushIfNeeded()
        }
        schedulePingTimer()
    }

    // MARK: - Command timeouts (RFC 7143 §7.11; §11.5 task management)

    private func scheduleCommandTimer() {
        guard let timeout = configuration.commandTimeout, let context else { return }
        let tick = TimeAmount.nanoseconds(max(min(timeout.nanoseconds, configuration.taskManagementTimeout.nanoseconds) / 4, 10_000_000))
        commandTimer = context.eventLoop.assumeIsolated().scheduleTask(in: tick) { [self] in
            self.commandTimerTick(timeout: timeout)
        }
    }

    private func commandTimerTick(timeout: TimeAmount) {
        guard case .fullFeature = state, let context else { return }
        let now = context.eventLoop.now
        if let tmf = taskManagement {
            if now - tmf.sentAt > configuration.taskManagementTimeout {
                logger.warning("task management function timed out", metadata: ["iscsi.tmf": "\(tmf.step)"])
                escalate(victim: tmf.victim, lun: tmf.lun)
            }
        } else if let (itt, task) = oldestTask(), now - task.sentAt > timeout {
            logger.warning(
                "command timed out",
                metadata: ["iscsi.itt": "0x\(String(itt, radix: 16))", "scsi.cdb": "\(task.original.command.cdb)"])
            escalate(victim: itt, lun: task.lun)
        }
        if !isClosed { scheduleCommandTimer() }
    }

    private func oldestTask() -> (UInt32, SCSITask)? {
        var oldest: (UInt32, SCSITask)?
        tasks.forEach { itt, task in
            if oldest == nil || task.sentAt < oldest!.1.sentAt { oldest = (itt, task) }
        }
        return oldest
    }

    /// Takes the ladder's next step for the command `victim`: ABORT TASK, LOGICAL UNIT RESET, then dropping
    /// the connection (session recovery re-issues everything).
    private func escalate(victim: UInt32, lun: UInt64) {
        let step = escalation.escalate()
        guard let context else { return }
        let function: ISCSIPDU.TaskManagementFunction
        switch step {
        case .abortTask: function = .abortTask
        case .logicalUnitReset: function = .logicalUnitReset
        case .connectionRecovery:
            taskManagement = nil
            if let slot = tasks.slot(for: victim) { tasks.modify(slot: slot) { $0.original.timeoutRecoveries += 1 } }
            logger.error("command still unanswered after ABORT TASK and LOGICAL UNIT RESET, dropping the connection")
            fail(.timeout("command (after ABORT TASK and LOGICAL UNIT RESET)"))
            return
        }
        var request = ISCSIPDU.TaskManagementRequest()
        request.immediate = true
        request.function = function
        request.lun = lun
        request.initiatorTaskTag = Self.taskManagementITT
        request.cmdSN = window.immediateCmdSN
        request.expStatSN = window.expStatSN
        if step == .abortTask, let slot = tasks.slot(for: victim), let task = tasks[slot: slot] {
            // RFC 7143 §11.5.2, §11.5.3: the task's ITT and CmdSN.
            request.referencedTaskTag = victim
            request.refCmdSN = task.cmdSN
        }
        taskManagement = (step, context.eventLoop.now, victim, lun)
        logger.warning("sending task management function", metadata: ["iscsi.tmf": "\(step)", "scsi.lun": "\(lun)"])
        send(request.pdu.header, data: nil)
        flushIfNeeded()
    }

    /// RFC 7143 §11.6.1: 0 function complete, 1 task does not exist: the aborted (or reset) tasks are gone
    /// at the target and are re-issued here; anything else escalates at once.
    private func receiveTaskManagementResponse(_ response: ISCSIPDU.TaskManagementResponse) throws {
        window.update(expCmdSN: response.expCmdSN, maxCmdSN: response.maxCmdSN)
        window.receiveStatSN(response.statSN)
        guard response.initiatorTaskTag == Self.taskManagementITT, let tmf = taskManagement else {
            logger.debug("unsolicited task management response ignored")
            return
        }
        taskManagement = nil
        guard response.response == 0 || response.response == 1 else {
            logger.warning("task management function refused", metadata: ["iscsi.tmf": "\(tmf.step)", "iscsi.response": "\(response.response)"])
            escalate(victim: tmf.victim, lun: tmf.lun)
            return
        }
        var reissue: [SCSITask] = []
        switch tmf.step {
        case .abortTask:
            if let slot = tasks.slot(for: tmf.victim), let task = tasks.remove(slot: slot) { reissue.append(task) }
        case .logicalUnitReset:
            // RFC 7143 §11.5.1 / SAM: a LU reset aborts every task of the LU.
            reissue = tasks.removeAll { $0.lun == tmf.lun }
        case .connectionRecovery:
            break
        }
        reissue.sort { $0.sequence < $1.sequence }
        for task in reissue.reversed() { pending.prepend(task.original) }
        if !reissue.isEmpty {
            logger.notice("re-issuing commands after \(tmf.step)", metadata: ["count": "\(reissue.count)"])
        }
    }

    // MARK: - Output

    /// Header (and small payloads) in one buffer; large payloads go as their own write (a slice of the
    /// caller's buffer, not copied), followed by padding and digest.
    private func send(_ header: BasicHeaderSegment, ahs: ByteBuffer? = nil, data: ByteBuffer?) {
        guard let context else { return }
        let dataLength = data?.readableBytes ?? 0
        let inline = dataLength <= 2048
        let headerLength = BasicHeaderSegment.length + (ahs?.readableBytes ?? 0) + 4
        var buffer = context.channel.allocator.buffer(capacity: headerLength + (inline ? dataLength + 8 : 0))
        encoder.writeHeader(header, ahs: ahs, dataLength: dataLength, into: &buffer)
        if let data, dataLength > 0 {
            if inline {
                buffer.writeImmutableBuffer(data)
                encoder.writeDataTrailer(for: data, into: &buffer)
                context.write(wrapOutboundOut(buffer), promise: nil)
            } else {
                context.write(wrapOutboundOut(buffer), promise: nil)
                context.write(wrapOutboundOut(data), promise: nil)
                if encoder.dataTrailerLength(forDataLength: dataLength) > 0 {
                    var trailer = context.channel.allocator.buffer(capacity: 8)
                    encoder.writeDataTrailer(for: data, into: &trailer)
                    context.write(wrapOutboundOut(trailer), promise: nil)
                }
            }
        } else {
            context.write(wrapOutboundOut(buffer), promise: nil)
        }
        needsFlush = true
    }

    private func flushIfNeeded() {
        guard needsFlush, let context else { return }
        needsFlush = false
        context.flush()
        // Commands went out: their answers are the next event.
        if let poller, !tasks.isEmpty { poller.arm(on: context.eventLoop, outstanding: tasks.count) }
    }

    /// One flush per event-loop tick for commands submitted outside a read.
    private func scheduleFlush() {
        guard !flushScheduled, let context else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute { [self] in
            self.flushScheduled = false
            self.flushIfNeeded()
        }
    }

    // MARK: - Failure

    /// Drops the connection; `channelInactive` then fails everything outstanding.
    private func fail(_ error: ISCSISessionError) {
        if closeError == nil { closeError = error }
        let wasClosed = isClosed
        connectionLost(error)
        if !wasClosed { context?.close(promise: nil) }
    }

    /// Fails every outstanding task, queued command, login and logout; with a session above
    /// (`connectionLostSink`), the commands go back to it for re-issue instead.
    private func connectionLost(_ error: ISCSISessionError) {
        let previous = state
        state = .closed
        loginTimeout?.cancel()
        logoutTimeout?.cancel()
        pingTimer?.cancel()
        commandTimer?.cancel()
        if case .loggingIn(_, let promise) = previous { promise.fail(error) }
        let failed = tasks.removeAll()
        let queued = pending
        pending.removeAll()
        let heldCommands = held
        held.removeAll()
        let logout = logoutPromise
        logoutPromise = nil
        let text = textExchange
        textExchange = nil
        text?.promise.fail(error)
        if let sink = connectionLostSink {
            connectionLostSink = nil
            var reissue: [PendingCommand] = []
            reissue.reserveCapacity(failed.count + queued.count + heldCommands.count)
            for task in failed.sorted(by: { $0.sequence < $1.sequence }) {
                guard task.original.timeoutRecoveries < configuration.maxTimeoutRecoveries else {
                    logger.error("command unanswered through \(task.original.timeoutRecoveries) connection recoveries: failing it", metadata: [
                        "scsi.cdb": "\(task.original.command.cdb)",
                    ])
                    task.promise.fail(ISCSISessionError.timeout("command (unanswered through \(task.original.timeoutRecoveries) connection recoveries)"))
                    continue
                }
                reissue.append(task.original)
            }
            reissue.append(contentsOf: queued)
            reissue.append(contentsOf: heldCommands)
            // A target-requested logout that completed is not a failure of the logout itself.
            if error == .targetRequestedLogout { logout?.succeed(()) } else { logout?.fail(error) }
            sink(error, reissue, time2WaitHint)
            return
        }
        for task in failed { task.promise.fail(error) }
        for command in queued { command.promise.fail(error) }
        for command in heldCommands { command.promise.fail(error) }
        logout?.fail(error)
    }

    var closeFailure: ISCSISessionError? { closeError }
    var isInFullFeaturePhase: Bool {
        if case .fullFeature = state { return logoutPromise == nil }
        return false
    }
    var testConfiguration: ISCSISessionConfiguration { configuration }
}

@available(*, unavailable)
extension ISCSIConnectionHandler: Sendable {}
