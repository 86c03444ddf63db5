import ISCSIProtocol
import Logging
import NIOCore
import SCSI

/// The IO side of one iSCSI connection: framing, writes and flushes, timers, promises and busy polling.
/// The protocol (login, the full feature phase, logout, timeouts) is `ConnectionStateMachine`: this
/// handler feeds it bytes-turned-PDUs and events and carries out the actions it queues.
/// Lives on the channel's event loop; every method must be called there.
final class ISCSIConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Unchecked exclusivity: the machine is mutated only here, on the event loop, and never calls out while
    /// it is being mutated (what it wants done waits in its action queue until `runActions` takes it, after
    /// the access has ended), so two accesses cannot overlap. The runtime check cost ~130 instructions per
    /// access, about 11 accesses per I/O.
    @exclusivity(unchecked) private var machine: ConnectionStateMachine
    private let logger: Logger
    private var context: ChannelHandlerContext?
    /// Busy polling before the loop sleeps (`ISCSISessionConfiguration.busyPollMicroseconds`).
    private var poller: BusyPoller?
    private var parser: PDUParser
    private var encoder = PDUEncoder()
    /// The front of a PDU cut by the end of a read, until its header segment group is whole.
    private var cumulation: ByteBuffer?
    /// The rest of that PDU once its header is framed: its data segment gathered as slices of the reads.
    private var collector: DataSegmentCollector?
    private var needsFlush = false
    private var flushScheduled = false
    /// The machine's timers, indexed by `ConnectionTimer.rawValue`.
    private var timers = [Scheduled<Void>?](repeating: nil, count: ConnectionTimer.allCases.count)

    init(configuration: ISCSISessionConfiguration, logger: Logger) {
        self.logger = logger
        self.machine = ConnectionStateMachine(configuration: configuration, logger: logger)
        self.parser = PDUParser(
            digests: .none,
            maxDataSegmentLength: max(8192, configuration.proposal.maxRecvDataSegmentLength),
            direction: .targetToInitiator
        )
    }

    /// Set by the session once the connection is in use: a lost connection hands its unanswered
    /// commands back instead of failing them (RFC 7143 §7.1.4.4 session recovery).
    var connectionLostSink: ConnectionLostSink? {
        get { machine.connectionLostSink }
        set { machine.connectionLostSink = newValue }
    }

    var parameters: SessionParameters { machine.parameters }

    var isInFullFeaturePhase: Bool { machine.isInFullFeaturePhase }
    /// This connection's PDU counters and command window (`ISCSISession.statistics()`).
    var counters: ISCSIPDUCounters { machine.counters }
    var windowSnapshot: ISCSICommandWindowSnapshot? { machine.windowSnapshot }
    var testConfiguration: ISCSISessionConfiguration { machine.configuration }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        machine.allocator = context.channel.allocator
    }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelInactive(context: ChannelHandlerContext) {
        machine.connectionClosed()
        runActions()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.warning("iSCSI connection error", metadata: ["error": "\(error)"])
        machine.errorCaught()
        runActions()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        let now = context.eventLoop.now
        machine.receivedBytes(at: now)
        do {
            // A PDU cut by the previous read is completed from the front of this read, copying only its own
            // bytes; the rest of the read is parsed in place (PDU payloads stay slices of the receive buffer).
            if cumulation != nil || collector != nil,
                try !completeCarriedPDU(from: &buffer, allocator: context.channel.allocator, now: now)
            {
                return
            }
            while !machine.isClosed, let pdu = try parser.parse(&buffer) {
                machine.receive(pdu, now: now)
                runActions()
            }
        } catch {
            machine.receiveMalformed(error)
            runActions()
            return
        }
        if buffer.readableBytes > 0 { cumulation = buffer }
    }

    /// Completes the PDU cut by the end of an earlier read from the front of `incoming`; the rest of
    /// `incoming` is then parsed in place. Only the header segment group (at most 1,072 bytes) is ever
    /// copied; the data segment is gathered as slices of the reads (`DataSegmentCollector`), so a Data-In
    /// larger than a socket read reaches the NBD reply without being copied in userspace. Returns false
    /// when `incoming` ran out first (the PDU stays carried over).
    private func completeCarriedPDU(
        from incoming: inout ByteBuffer, allocator: ByteBufferAllocator, now: NIODeadline
    ) throws(ISCSIPDUError) -> Bool {
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
        var pdu = ISCSIPDU(header: frame.header, additionalHeaderSegments: frame.additionalHeaderSegments,
                           data: pieces.count == 1 ? pieces[0] : ISCSIPDU.emptyData)
        if pieces.count > 1, frame.header.opcode != .dataIn {
            // Only Data-In keeps its pieces (they go to the caller as they are); any other PDU gets them joined.
            var joined = allocator.buffer(capacity: pieces.reduce(0) { $0 + $1.readableBytes })
            for piece in pieces { joined.writeImmutableBuffer(piece) }
            pdu.data = joined
            machine.receive(pdu, now: now)
        } else {
            machine.receive(pdu, dataPieces: pieces.count > 1 ? pieces : [], now: now)
        }
        runActions()
        return true
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushIfNeeded()
        context.fireChannelReadComplete()
        // The next event is the client's next request, or the target's next answer.
        poller?.arm(on: context.eventLoop, outstanding: machine.outstandingTasks)
    }

    // MARK: - Requests from the session

    func startLogin(_ login: LoginStateMachine, promise: EventLoopPromise<LoginOutcome>) {
        guard let context else {
            promise.fail(ISCSISessionError.connectionClosed)
            return
        }
        if machine.startLogin(login, promise: promise) {
            poller = BusyPoller.make(
                for: context.channel, microseconds: machine.configuration.busyPollMicroseconds, logger: logger)
        }
        runActions()
    }

    /// Sends a Text Request and collects the whole response text (RFC 7143 §11.10, §11.11).
    func sendText(_ keys: TextKeyValues, promise: EventLoopPromise<ByteBuffer>) {
        machine.sendText(keys, promise: promise)
        runActions()
    }

    /// Queues a command; it goes out when the CmdSN window and the queue depth allow.
    func submit(_ command: SCSICommand, lun: LogicalUnitNumber, promise: EventLoopPromise<SCSICommandResult>) {
        submit(PendingCommand(command: command, lun: lun, promise: promise))
    }

    /// Queues a command handed back by a lost connection, keeping what it carries (`timeoutRecoveries`).
    func submit(_ pendingCommand: PendingCommand) {
        machine.submit(pendingCommand, now: context?.eventLoop.now ?? .now())
        runActions()
    }

    /// Stops taking commands, lets the outstanding ones finish, then logs out (reason: close the session).
    func beginLogout(promise: EventLoopPromise<Void>) {
        machine.beginLogout(promise: promise)
        runActions()
    }

    // MARK: - Actions

    /// Carries out what the machine queued, in order. A promise completed here may call back into the
    /// handler; the nested call carries out the rest of the queue.
    private func runActions() {
        while let action = machine.nextAction() {
            switch consume action {
            case .send(let pdu):
                send(pdu.header, ahs: pdu.additionalHeaderSegments, data: pdu.data)
            case .sendDataOut(var burst):
                while let pdu = burst.next() { send(pdu.header, ahs: nil, data: pdu.data) }
            case .flush:
                flushIfNeeded()
            case .scheduleFlush:
                scheduleFlush()
            case .armTimer(let timer, let delay):
                arm(timer, in: delay)
            case .cancelTimer(let timer):
                timers[timer.rawValue]?.cancel()
            case .cancelAllTimers:
                for timer in timers { timer?.cancel() }
            case .enterFullFeature(let negotiated):
                parser.digests = negotiated.digests
                parser.maxDataSegmentLength = negotiated.initiatorMaxRecvDataSegmentLength
                encoder.digests = negotiated.digests
            case .succeedCommand(let promise, let result):
                promise.succeed(result)
            case .failCommand(let promise, let error):
                promise.fail(error)
            case .completeLogin(let promise, let result):
                promise.completeWith(result.mapError { $0 })
            case .completeText(let promise, let result):
                promise.completeWith(result.mapError { $0 })
            case .completeLogout(let promise, let result):
                promise.completeWith(result.mapError { $0 })
            case .cascadeLogout(let first, let second):
                first.futureResult.cascade(to: second)
            case .handBack(let sink, let error, let commands, let time2Wait):
                sink(error, commands, time2Wait)
            case .close:
                context?.close(promise: nil)
            }
        }
    }

    private func arm(_ timer: ConnectionTimer, in delay: TimeAmount) {
        guard let context else { return }
        let loop = context.eventLoop
        timers[timer.rawValue] = loop.assumeIsolated().scheduleTask(in: delay) { [self] in
            self.machine.timerFired(timer, now: loop.now)
            self.runActions()
        }
    }

    // MARK: - Output

    /// Header (and small payloads) in one buffer; large payloads go as their own write (a slice of the
    /// caller's buffer, not copied), followed by padding and digest.
    private func send(_ header: BasicHeaderSegment, ahs: ByteBuffer?, data: ByteBuffer?) {
        guard let context else { return }
        let dataLength = data?.readableBytes ?? 0
        machine.counters.countSent(header.opcode, dataLength: dataLength)
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
        if let poller, machine.outstandingTasks > 0 { poller.arm(on: context.eventLoop, outstanding: machine.outstandingTasks) }
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
}

@available(*, unavailable)
extension ISCSIConnectionHandler: Sendable {}
