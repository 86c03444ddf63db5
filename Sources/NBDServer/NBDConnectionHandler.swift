import BlockBackend
import Logging
import NBDProtocol
import NIOCore
import NIOSSL

/// One NBD connection: the handshake state machine, then the transmission state machine (`NBDTransmission`,
/// which holds every rule of that phase) against a `BlockDevice`. This handler does the bytes, backpressure and
/// timers, and carries out what the machines ask.
///
/// - Requests are taken as soon as they are decoded, while the machine's in-flight window has room and the
///   channel is writable (a peer that does not read its replies cannot make them pile up). Otherwise the handler
///   stops decoding and withholds `read()` from the channel (backpressure), resuming as replies complete or the
///   channel becomes writable again.
/// - Replies are written as each request completes (out of order). Flushes are coalesced: one flush at the
///   end of each read burst (`channelReadComplete`), and for completions outside a read burst one flush per
///   event-loop tick.
/// - READ data is written as the device's own `ByteBuffer`s after a small header (no copy); WRITE payloads
///   are zero-copy slices of the receive buffer.
/// - Malformed input (bad magic, bad client flags, oversized option, truncated message) closes this
///   connection only, with the reason logged.
final class NBDConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Phase {
        /// Fixed newstyle option haggling.
        case handshake(NBDServerHandshake)
        /// Requests and replies, by the rules of `transmission`.
        case transmission
        /// Closing: ignore input.
        case closed
    }

    let device: any BlockDevice
    private let maxInFlight: Int
    private let maxInFlightBytes: Int
    /// FORCEDTLS: the context for the TLS handler installed after NBD_OPT_STARTTLS.
    private let tlsContext: NIOSSLContext?
    /// A connection waiting for the rest of a message (or in the handshake) with no input for this long is
    /// closed: a stalled client cannot pin its buffers or a connection slot for ever. `nil`: no limit.
    private let stallTimeout: TimeAmount?
    private var lastInput: NIODeadline = .uptimeNanoseconds(0)
    private var stallCheck: RepeatedTask?
    /// Shared budget for WRITE payloads; `reservedPartial` is this connection's share for the payload being
    /// received (payloads of dispatched writes are released when the write completes).
    let payloadBudget: NBDPayloadBudget?
    var reservedPartial = 0
    var logger: Logger
    /// Told about every request and its end (metrics); nil: no clock is read.
    let observer: (any NBDRequestObserver)?
    var phase: Phase
    /// The transmission phase's machine, set when that phase starts. A stored property rather than a payload of
    /// `phase` so that it is mutated in place, with no copy per request (completions run between its events).
    /// Unchecked exclusivity: it is used only on the event loop, and the machine never calls out while it is
    /// being mutated (it returns what to do, carried out after the access has ended), so accesses cannot
    /// overlap; the runtime check cost ~130 instructions per access, several per request.
    @exclusivity(unchecked) var transmission: NBDTransmission?

    var cumulation: ByteBuffer?
    private var readWithheld = false
    private var inReadBurst = false
    private var flushScheduled = false
    var needsFlush = false
    /// Replies without payload, batched into one buffer per flush.
    var smallReplies: ByteBuffer?
    private var isActive = false
    /// Set while pausing at a request boundary (`NBDPauseEvent`).
    var pause: NBDPauseEvent?

    /// Bytes currently buffered from the peer (for tests of the memory bound).
    var bufferedInboundBytes: Int { cumulation?.readableBytes ?? 0 }
    /// Capacity held by the receive buffer (for tests of the memory bound).
    var bufferedInboundCapacity: Int { cumulation?.capacity ?? 0 }

    private init(
        device: any BlockDevice, maxInFlight: Int, maxInFlightBytes: Int, tlsContext: NIOSSLContext?,
        stallTimeout: TimeAmount?, payloadBudget: NBDPayloadBudget?, observer: (any NBDRequestObserver)?,
        logger: Logger, phase: Phase
    ) {
        self.observer = observer
        self.device = device
        self.maxInFlight = maxInFlight
        self.maxInFlightBytes = maxInFlightBytes
        self.tlsContext = tlsContext
        self.stallTimeout = stallTimeout
        self.payloadBudget = payloadBudget
        self.logger = logger
        self.phase = phase
    }

    /// A connection that starts with the fixed newstyle handshake.
    convenience init(
        device: any BlockDevice, export: NBDExport, maxInFlight: Int, maxInFlightBytes: Int = 64 << 20,
        maxOptionLength: UInt32, tlsContext: NIOSSLContext? = nil, stallTimeout: TimeAmount? = nil,
        payloadBudget: NBDPayloadBudget? = nil, observer: (any NBDRequestObserver)? = nil, logger: Logger
    ) {
        let handshake = NBDServerHandshake(
            export: export, maximumOptionLength: maxOptionLength, tlsRequired: tlsContext != nil)
        self.init(
            device: device, maxInFlight: maxInFlight, maxInFlightBytes: maxInFlightBytes, tlsContext: tlsContext,
            stallTimeout: stallTimeout, payloadBudget: payloadBudget, observer: observer, logger: logger,
            phase: .handshake(handshake))
    }

    /// A connection that starts in the transmission phase with simple replies (the kernel's socket after
    /// netlink NBD_CMD_CONNECT, nbd-netlink-proto.md).
    convenience init(
        device: any BlockDevice, transmissionOnly export: NBDExport, maxInFlight: Int, maxInFlightBytes: Int = 64 << 20,
        observer: (any NBDRequestObserver)? = nil, logger: Logger
    ) {
        self.init(
            device: device, maxInFlight: maxInFlight, maxInFlightBytes: maxInFlightBytes, tlsContext: nil,
            stallTimeout: nil, payloadBudget: nil, observer: observer, logger: logger, phase: .transmission)
        startTransmission(NBDTransmissionParameters(export: export, structuredReplies: false))
    }

    private func startTransmission(_ parameters: NBDTransmissionParameters) {
        transmission = NBDTransmission(
            parameters: parameters, maximumInFlight: maxInFlight, maximumInFlightBytes: maxInFlightBytes)
        phase = .transmission
    }

    /// The export grew: requests up to `size` are valid from now on (kernel devices told NBD_SET_SIZE).
    func exportGrew(to size: UInt64) {
        transmission?.grow(to: size)
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { becomeActive(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        becomeActive(context: context)
        context.fireChannelActive()
    }

    private func becomeActive(context: ChannelHandlerContext) {
        guard !isActive else { return }
        isActive = true
        observer?.connectionOpened()
        lastInput = context.eventLoop.now
        if let stallTimeout, stallTimeout > .zero {
            let period = TimeAmount.nanoseconds(max(stallTimeout.nanoseconds / 4, 10_000_000))
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            stallCheck = context.eventLoop.scheduleRepeatedTask(initialDelay: period, delay: period) { _ in
                let (handler, context) = bound.value
                handler.checkStall(context: context, timeout: stallTimeout)
            }
        }
        if case .handshake(let handshake) = phase {
            var greeting = context.channel.allocator.buffer(capacity: 18)
            greeting.writeNBDGreeting(flags: handshake.handshakeFlags)
            context.writeAndFlush(wrapOutboundOut(greeting), promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)

        if case .closed = phase { return }
        lastInput = context.eventLoop.now
        inReadBurst = true
        if var partial = cumulation, partial.readableBytes > 0, case .transmission = phase, let transmission {
            // A request cut by the previous read, finished by the front of this one: copy only that request's
            // bytes (into a buffer of exactly its size: no more than was received), then decode the rest of
            // this read in place. Appending the whole read instead copied every WRITE payload once more.
            let missing = transmission.bytesNeeded(given: partial.readableBytes)
            if missing > 0, missing <= incoming.readableBytes, var head = incoming.readSlice(length: missing) {
                cumulation = nil
                var fresh = context.channel.allocator.buffer(capacity: partial.readableBytes + missing)
                fresh.writeBuffer(&partial)
                fresh.writeBuffer(&head)
                cumulation = fresh
                processInbound(context: context)
                if case .closed = phase { return }
                if cumulation == nil || cumulation?.readableBytes == 0 {
                    cumulation = incoming.readableBytes > 0 ? incoming : nil
                    if cumulation != nil { processInbound(context: context) }
                    return
                }
                // Backpressure left part of the completed request buffered: append as below.
            }
        }
        append(incoming, context: context)
        processInbound(context: context)
    }

    /// Adds received bytes after what is buffered (compacting the buffered tail first when needed).
    func append(_ incoming: ByteBuffer, context: ChannelHandlerContext) {
        var incoming = incoming
        guard incoming.readableBytes > 0 else { return }
        if var buffer = cumulation, buffer.readableBytes > 0 {
            cumulation = nil  // keep `buffer` uniquely referenced while appending
            if buffer.readerIndex > 0 || buffer.writableBytes < incoming.readableBytes {
                // Compact: copy only the unread tail (part of one message) into a buffer sized for it.
                let needed = buffer.readableBytes + incoming.readableBytes
                var messageSize = needed
                if case .transmission = phase, let transmission { messageSize += transmission.bytesNeeded(given: needed) }
                var fresh = context.channel.allocator.buffer(capacity: max(needed, min(messageSize, 2 * needed)))
                fresh.writeBuffer(&buffer)
                buffer = fresh
            }
            buffer.writeBuffer(&incoming)
            cumulation = buffer
        } else {
            cumulation = incoming
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        inReadBurst = false
        if needsFlush { flushNow(context: context) }
        if pause != nil { continuePause(context: context) }
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let partial: Bool
        switch phase {
        case .transmission: partial = transmission?.isMidMessage(buffered: bufferedInboundBytes) ?? false
        case .handshake: partial = bufferedInboundBytes > 0
        case .closed: partial = false
        }
        if partial {
            logger.notice("connection closed in the middle of a message (truncated)", metadata: ["nbd.buffered": "\(bufferedInboundBytes)"])
        } else {
            logger.debug("connection closed", metadata: ["nbd.inflight": "\(transmission?.inFlight ?? 0)"])
        }
        markClosed()
        stallCheck?.cancel()
        stallCheck = nil
        releasePartial()
        pause.take()?.done.succeed(false)
        if isActive { observer?.connectionClosed() }
        context.fireChannelInactive()
    }

    /// Closes the connection when the peer owes us the rest of a message (handshake, partial request or
    /// WRITE payload) and sent nothing for `timeout`. Not while we withhold reads ourselves (backpressure).
    private func checkStall(context: ChannelHandlerContext, timeout: TimeAmount) {
        let waitingForPeer: Bool
        switch phase {
        case .handshake:
            waitingForPeer = true
        case .transmission:
            guard let transmission else { return }
            waitingForPeer =
                transmission.isMidMessage(buffered: bufferedInboundBytes)
                && transmission.inFlight < transmission.maximumInFlight
        case .closed:
            waitingForPeer = false
        }
        guard waitingForPeer, context.eventLoop.now - lastInput >= timeout else { return }
        logger.notice(
            "closing a connection stalled in the middle of a message",
            metadata: ["nbd.buffered": "\(bufferedInboundBytes)", "nbd.stallTimeout": "\(timeout)"])
        markClosed()
        stallCheck?.cancel()
        stallCheck = nil
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.notice("connection error, closing", metadata: ["error": "\(error)"])
        markClosed()
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is NBDDrainEvent {
            switch phase {
            case .handshake, .closed:
                markClosed()
                context.close(promise: nil)
            case .transmission:
                if transmission?.startDrain() == .closeNow { closeDrained(context: context) }
            }
            return
        }
        if let event = event as? NBDPauseEvent {
            guard case .transmission = phase, pause == nil else {
                event.done.succeed(false)
                return
            }
            pause = event
            continuePause(context: context)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Input is ignored from now on; in-flight completions are dropped.
    func markClosed() {
        phase = .closed
        cumulation = nil
    }

    /// Whether another request may be taken: the transmission machine's window has room (the handshake takes
    /// input freely) and the peer is reading our replies (channel writable: replies the peer does not read must
    /// not pile up in memory).
    func canTakeRequest(context: ChannelHandlerContext) -> Bool {
        guard context.channel.isWritable else { return false }
        switch phase {
        case .handshake: return true
        case .transmission: return transmission?.canTakeRequest ?? false
        case .closed: return false
        }
    }

    /// Backpressure: withhold reads while no request may be taken.
    func read(context: ChannelHandlerContext) {
        if pause != nil || !canTakeRequest(context: context) {
            readWithheld = true
            return
        }
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { resumeIfPossible(context: context) }
        context.fireChannelWritabilityChanged()
    }

    /// Takes buffered requests and asks for more input once the window has room again.
    func resumeIfPossible(context: ChannelHandlerContext) {
        guard case .transmission = phase, canTakeRequest(context: context) else { return }
        if cumulation != nil { processInbound(context: context) }
        if pause != nil {
            continuePause(context: context)
            return
        }
        if readWithheld && canTakeRequest(context: context) {
            readWithheld = false
            context.read()
        }
    }

    // MARK: - Input

    func processInbound(context: ChannelHandlerContext) {
        do {
            while var buffer = cumulation {
                cumulation = nil
                defer { cumulation = buffer.readableBytes > 0 ? buffer : nil }
                switch phase {
                case .closed:
                    buffer.clear()
                    return
                case .handshake(var handshake):
                    let action = try handshake.receive(&buffer)
                    phase = .handshake(handshake)
                    guard let action else { return }
                    if case .sendAndStartTLS = action, buffer.readableBytes > 0 {
                        // The client must wait for our ACK before its ClientHello (nbd-proto.md "TLS support").
                        throw NBDProtocolError(.unexpectedData, "plain-text data after NBD_OPT_STARTTLS")
                    }
                    try perform(action, context: context)
                    // Loop: remaining bytes may hold more options or the first requests.
                case .transmission:
                    try takeRequests(from: &buffer, context: context)
                    return
                }
            }
        } catch {
            logger.notice("protocol violation, closing connection", metadata: ["error": "\(error)"])
            markClosed()
            context.close(promise: nil)
        }
    }

    private func perform(_ action: NBDHandshakeAction, context: ChannelHandlerContext) throws {
        let messages: [NBDHandshakeMessage]
        switch action {
        case .send(let m), .sendAndStartTransmission(let m, _), .sendAndClose(let m), .sendAndStartTLS(let m): messages = m
        }
        var out = context.channel.allocator.buffer(capacity: 64 * messages.count)
        for message in messages { out.writeNBDHandshakeMessage(message) }
        switch action {
        case .send:
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        case .sendAndStartTransmission(_, let parameters):
            logger.debug(
                "entering transmission phase",
                metadata: ["nbd.structured": "\(parameters.structuredReplies)", "nbd.flags": "0x\(String(parameters.transmissionFlags.rawValue, radix: 16))"])
            startTransmission(parameters)
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        case .sendAndStartTLS:
            guard let tlsContext else {
                throw NBDProtocolError(.unexpectedData, "STARTTLS accepted without a TLS context")
            }
            // The ACK goes out in plain text (it is below the TLS handler once written); everything after it,
            // in both directions, passes through TLS.
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
            try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tlsContext), position: .first)
            logger.debug("NBD_OPT_STARTTLS: TLS handshake started")
        case .sendAndClose:
            phase = .closed
            context.writeAndFlush(wrapOutboundOut(out)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }

    /// Carries out the transmission machine's answers to the buffered input while the channel is writable.
    private func takeRequests(from buffer: inout ByteBuffer, context: ChannelHandlerContext) throws(NBDProtocolError) {
        while case .transmission = phase, context.channel.isWritable {
            guard let action = try transmission?.receive(&buffer) else { return }
            switch action {
            case .noRequest:
                return
            case .payloadArriving(let buffered, let length):
                reservePartialPayload(buffered, of: length, in: &buffer)
                return
            case .execute(let request):
                execute(request, context: context)
            case .reply(let reply):
                // A payload held for a refused WRITE is given back at once.
                releasePartial()
                // Answered without the device: a refusal, or a success that needs none (CACHE, length 0).
                if let rejection = reply.rejection {
                    observer?.requestRefused()
                    logger.debug("request refused", metadata: ["nbd.cookie": "\(reply.cookie)", "nbd.error": "\(rejection)"])
                }
                send(reply, context: context)
            case .drain(let drain):
                logger.debug("NBD_CMD_DISC", metadata: ["nbd.inflight": "\(transmission?.inFlight ?? 0)"])
                if drain == .closeNow { closeDrained(context: context) }
            }
        }
    }

    // MARK: - Replies

    /// READ data goes out as the device's buffers after a small header, each written as it is (one vectored
    /// write when flushed, no copy); every other reply is appended to `smallReplies`, one buffer per flush.
    func send(_ reply: NBDReply, context: ChannelHandlerContext) {
        if let data = reply.data {
            var head = context.channel.allocator.buffer(capacity: 32)
            head.writeNBDReply(reply)
            context.write(wrapOutboundOut(head), promise: nil)
            for piece in data where piece.readableBytes > 0 { context.write(wrapOutboundOut(piece), promise: nil) }
        } else {
            var out = smallReplies ?? context.channel.allocator.buffer(capacity: 1024)
            smallReplies = nil  // keep `out` uniquely referenced while appending
            out.writeNBDReply(reply)
            smallReplies = out
        }
        needsFlush = true
        if inReadBurst || flushScheduled { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.flushScheduled = false
            if self.needsFlush { self.flushNow(context: context) }
        }
    }

    private func flushNow(context: ChannelHandlerContext) {
        needsFlush = false
        if case .closed = phase { smallReplies = nil; return }
        if let out = smallReplies, out.readableBytes > 0 {
            smallReplies = nil
            context.write(wrapOutboundOut(out), promise: nil)
        }
        context.flush()
    }

    /// A drain is complete: what is pending goes out, then the connection closes.
    func closeDrained(context: ChannelHandlerContext) {
        flushNow(context: context)
        markClosed()
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension NBDConnectionHandler: Sendable {}
