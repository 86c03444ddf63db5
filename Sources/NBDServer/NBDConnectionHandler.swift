import BlockBackend
import Logging
import NBDProtocol
import NIOCore
import NIOSSL

/// Asks a connection to finish: handshake connections close at once; transmission connections stop reading,
/// let in-flight requests complete and send their replies, then close (nbd-proto.md "Terminating the
/// transmission phase": "On a server shutdown, the server SHOULD wait for inflight requests to be serviced
/// prior to initiating a hard disconnect").
struct NBDDrainEvent: Sendable {}

/// One NBD connection: handshake state machine, then the transmission phase against a `BlockDevice`.
///
/// - Requests are dispatched as soon as they are decoded, up to `maxInFlight` requests and `maxInFlightBytes`
///   of READ/WRITE data at once, and only while the channel is writable (a peer that does not read its replies
///   cannot make them pile up). Otherwise the handler stops decoding and withholds `read()` from the channel
///   (backpressure), resuming as replies complete or the channel becomes writable again.
/// - Replies are written as each request completes (out of order). Flushes are coalesced: one flush at the
///   end of each read burst (`channelReadComplete`), and for completions outside a read burst one flush per
///   event-loop tick.
/// - READ data is written as the device's own `ByteBuffer` after a small header (no copy); WRITE payloads
///   are zero-copy slices of the receive buffer.
/// - Malformed input (bad magic, bad client flags, oversized option, truncated message) closes this
///   connection only, with the reason logged.
final class NBDConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum Phase {
        /// Fixed newstyle option haggling.
        case handshake(NBDServerHandshake)
        /// Requests and replies.
        case transmission(Transmission)
        /// Closing: ignore input.
        case closed
    }

    private struct Transmission {
        var validator: NBDRequestValidator
        var decoder: NBDRequestDecoder
        var structured: Bool
    }

    private let device: any BlockDevice
    private let maxInFlight: Int
    /// FORCEDTLS: the context for the TLS handler installed after NBD_OPT_STARTTLS.
    private let tlsContext: NIOSSLContext?
    /// A connection waiting for the rest of a message (or in the handshake) with no input for this long is
    /// closed: a stalled client cannot pin its buffers or a connection slot for ever. `nil`: no limit.
    private let stallTimeout: TimeAmount?
    private var lastInput: NIODeadline = .uptimeNanoseconds(0)
    private var stallCheck: RepeatedTask?
    /// Shared budget for WRITE payloads; `reservedPartial` is this connection's share for the payload being
    /// received (payloads of dispatched writes are released when the write completes).
    private let payloadBudget: NBDPayloadBudget?
    private var reservedPartial = 0
    private let maxInFlightBytes: Int
    private var logger: Logger
    private var phase: Phase

    private var cumulation: ByteBuffer?
    private var inFlight = 0
    /// READ lengths and WRITE payload bytes of requests in flight.
    private var inFlightBytes = 0
    private var readWithheld = false
    private var inReadBurst = false
    private var flushScheduled = false
    private var needsFlush = false
    /// Replies without payload, batched into one buffer per flush.
    private var smallReplies: ByteBuffer?
    /// NBD_CMD_DISC received or server shutting down: no more requests are taken.
    private var draining = false
    private var isActive = false

    /// Bytes currently buffered from the peer (for tests of the memory bound).
    var bufferedInboundBytes: Int { cumulation?.readableBytes ?? 0 }
    /// Capacity held by the receive buffer (for tests of the memory bound).
    var bufferedInboundCapacity: Int { cumulation?.capacity ?? 0 }

    /// A connection that starts with the fixed newstyle handshake.
    init(
        device: any BlockDevice, export: NBDExport, maxInFlight: Int, maxInFlightBytes: Int = 64 << 20,
        maxOptionLength: UInt32, tlsContext: NIOSSLContext? = nil, stallTimeout: TimeAmount? = nil,
        payloadBudget: NBDPayloadBudget? = nil, logger: Logger
    ) {
        self.payloadBudget = payloadBudget
        self.device = device
        self.maxInFlight = max(1, maxInFlight)
        self.maxInFlightBytes = max(1, maxInFlightBytes)
        self.logger = logger
        self.tlsContext = tlsContext
        self.stallTimeout = stallTimeout
        self.phase = .handshake(
            NBDServerHandshake(export: export, maximumOptionLength: maxOptionLength, tlsRequired: tlsContext != nil))
    }

    /// A connection that starts in the transmission phase with simple replies (the kernel's socket after
    /// netlink NBD_CMD_CONNECT, nbd-netlink-proto.md).
    init(
        device: any BlockDevice, transmissionOnly export: NBDExport, maxInFlight: Int, maxInFlightBytes: Int = 64 << 20,
        logger: Logger
    ) {
        self.device = device
        self.maxInFlight = max(1, maxInFlight)
        self.maxInFlightBytes = max(1, maxInFlightBytes)
        self.logger = logger
        self.tlsContext = nil
        self.stallTimeout = nil
        self.payloadBudget = nil
        let parameters = NBDTransmissionParameters(export: export, structuredReplies: false)
        self.phase = .transmission(Self.makeTransmission(parameters))
    }

    private static func makeTransmission(_ parameters: NBDTransmissionParameters) -> Transmission {
        Transmission(
            validator: NBDRequestValidator(parameters: parameters),
            decoder: NBDRequestDecoder(maximumBufferedPayload: parameters.export.maximumPayload),
            structured: parameters.structuredReplies)
    }

    /// The export grew: requests up to `size` are valid from now on (kernel devices told NBD_SET_SIZE).
    func exportGrew(to size: UInt64) {
        guard case .transmission(var t) = phase else { return }
        t.validator.grow(to: size)
        phase = .transmission(t)
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
        if var partial = cumulation, partial.readableBytes > 0, case .transmission(let t) = phase {
            // A request cut by the previous read, finished by the front of this one: copy only that request's
            // bytes (into a buffer of exactly its size: no more than was received), then decode the rest of
            // this read in place. Appending the whole read instead copied every WRITE payload once more.
            let missing = t.decoder.bytesNeeded(given: partial.readableBytes)
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
    private func append(_ incoming: ByteBuffer, context: ChannelHandlerContext) {
        var incoming = incoming
        guard incoming.readableBytes > 0 else { return }
        if var buffer = cumulation, buffer.readableBytes > 0 {
            cumulation = nil  // keep `buffer` uniquely referenced while appending
            if buffer.readerIndex > 0 || buffer.writableBytes < incoming.readableBytes {
                // Compact: copy only the unread tail (part of one message) into a buffer sized for it.
                let needed = buffer.readableBytes + incoming.readableBytes
                var messageSize = needed
                if case .transmission(let t) = phase { messageSize += t.decoder.bytesNeeded(given: needed) }
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
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let partial: Bool
        switch phase {
        case .transmission(let t): partial = bufferedInboundBytes > 0 || !t.decoder.isIdle
        case .handshake: partial = bufferedInboundBytes > 0
        case .closed: partial = false
        }
        if partial && !draining {
            logger.notice("connection closed in the middle of a message (truncated)", metadata: ["nbd.buffered": "\(bufferedInboundBytes)"])
        } else {
            logger.debug("connection closed", metadata: ["nbd.inflight": "\(inFlight)"])
        }
        phase = .closed
        cumulation = nil
        stallCheck?.cancel()
        stallCheck = nil
        releasePartial()
        context.fireChannelInactive()
    }

    /// Closes the connection when the peer owes us the rest of a message (handshake, partial request or
    /// WRITE payload) and sent nothing for `timeout`. Not while we withhold reads ourselves (backpressure).
    private func checkStall(context: ChannelHandlerContext, timeout: TimeAmount) {
        let waitingForPeer: Bool
        switch phase {
        case .handshake: waitingForPeer = true
        case .transmission(let t):
            waitingForPeer = (bufferedInboundBytes > 0 || !t.decoder.isIdle) && !draining && inFlight < maxInFlight
        case .closed: waitingForPeer = false
        }
        guard waitingForPeer, context.eventLoop.now - lastInput >= timeout else { return }
        logger.notice(
            "closing a connection stalled in the middle of a message",
            metadata: ["nbd.buffered": "\(bufferedInboundBytes)", "nbd.stallTimeout": "\(timeout)"])
        phase = .closed
        cumulation = nil
        stallCheck?.cancel()
        stallCheck = nil
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.notice("connection error, closing", metadata: ["error": "\(error)"])
        phase = .closed
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is NBDDrainEvent {
            switch phase {
            case .handshake, .closed:
                phase = .closed
                context.close(promise: nil)
            case .transmission:
                draining = true
                closeIfDrained(context: context)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Whether another request may be taken: the in-flight window (count and bytes) has room and the peer is
    /// reading our replies (channel writable: replies the peer does not read must not pile up in memory).
    private func canTakeRequest(context: ChannelHandlerContext) -> Bool {
        !draining && inFlight < maxInFlight && inFlightBytes < maxInFlightBytes && context.channel.isWritable
    }

    /// Backpressure: withhold reads while no request may be taken.
    func read(context: ChannelHandlerContext) {
        if !canTakeRequest(context: context) {
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
    private func resumeIfPossible(context: ChannelHandlerContext) {
        guard case .transmission = phase, canTakeRequest(context: context) else { return }
        if cumulation != nil { processInbound(context: context) }
        if readWithheld && canTakeRequest(context: context) {
            readWithheld = false
            context.read()
        }
    }

    // MARK: - Input

    private func processInbound(context: ChannelHandlerContext) {
        do {
            while var buffer = cumulation {
                cumulation = nil
                defer { cumulation = buffer.readableBytes > 0 ? buffer : nil }
                switch phase {
                case .closed:
                    buffer.clear()
                    return
                case .handshake(var handshake):
                    let action: NBDHandshakeAction?
                    do {
                        action = try handshake.receive(&buffer)
                    } catch {
                        phase = .closed
                        throw error
                    }
                    phase = .handshake(handshake)
                    guard let action else { return }
                    if case .sendAndStartTLS = action, buffer.readableBytes > 0 {
                        // The client must wait for our ACK before its ClientHello (nbd-proto.md "TLS support").
                        phase = .closed
                        throw NBDProtocolError(.unexpectedData, "plain-text data after NBD_OPT_STARTTLS")
                    }
                    try perform(action, context: context)
                    // Loop: remaining bytes may hold more options or the first requests.
                case .transmission(var transmission):
                    while canTakeRequest(context: context) {
                        let request: NBDRequest?
                        do {
                            request = try transmission.decoder.decode(&buffer)
                        } catch {
                            phase = .closed
                            throw error
                        }
                        guard var request else {
                            reservePartialPayload(&transmission, &buffer)
                            break
                        }
                        if let payload = request.payload, !admitPayload(payload.readableBytes) {
                            request.payload = nil
                            request.payloadDiscarded = true
                        }
                        dispatch(request, transmission: transmission, context: context)
                    }
                    if case .transmission = phase { phase = .transmission(transmission) }
                    return
                }
            }
        } catch {
            logger.notice("protocol violation, closing connection", metadata: ["error": "\(error)"])
            cumulation = nil
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
            phase = .transmission(Self.makeTransmission(parameters))
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        case .sendAndStartTLS:
            guard let tlsContext else {
                phase = .closed
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

    // MARK: - Write payload budget

    /// A complete payload arrived: turn the partial reservation into one for the whole payload (released when
    /// the write completes). False: no memory for it, the write is failed with ENOMEM.
    private func admitPayload(_ bytes: Int) -> Bool {
        guard let payloadBudget else { return true }
        let held = reservedPartial
        reservedPartial = 0
        if bytes <= held {
            payloadBudget.release(held - bytes)
            return true
        }
        if payloadBudget.tryReserve(bytes - held) { return true }
        payloadBudget.release(held)
        logger.notice("write payload refused: buffer budget exhausted", metadata: ["nbd.bytes": "\(bytes)", "nbd.budget": "\(payloadBudget.limit)"])
        return false
    }

    /// A payload is arriving: reserve what is buffered so far, or give it up (discard the rest, ENOMEM).
    private func reservePartialPayload(_ transmission: inout Transmission, _ buffer: inout ByteBuffer) {
        guard let payloadBudget, let length = transmission.decoder.payloadInProgress else { return }
        let have = min(buffer.readableBytes, Int(length))
        guard have > reservedPartial else { return }
        if payloadBudget.tryReserve(have - reservedPartial) {
            reservedPartial = have
            return
        }
        logger.notice(
            "write payload dropped while arriving: buffer budget exhausted",
            metadata: ["nbd.length": "\(length)", "nbd.budget": "\(payloadBudget.limit)"])
        transmission.decoder.abandonPayload(buffered: have)
        buffer.moveReaderIndex(forwardBy: have)
        releasePartial()
    }

    private func releasePartial() {
        if reservedPartial > 0 { payloadBudget?.release(reservedPartial) }
        reservedPartial = 0
    }

    // MARK: - Requests

    private func dispatch(_ request: NBDRequest, transmission: Transmission, context: ChannelHandlerContext) {
        let header = request.header
        // A WRITE payload admitted to the budget: given back when the device write completes, or at once on
        // every other path (refused, zero length, ...).
        var unreleased = payloadBudget == nil || request.payloadDiscarded ? 0 : (request.payload?.readableBytes ?? 0)
        defer { if unreleased > 0 { payloadBudget?.release(unreleased) } }
        if let rejection = transmission.validator.validate(header) {
            logger.debug("request refused", metadata: ["nbd.cookie": "\(header.cookie)", "nbd.command": "\(header.command)", "nbd.error": "\(rejection)"])
            replyError(header, rejection.code, rejection.message, structured: transmission.structured, context: context)
            return
        }
        let structured = transmission.structured
        switch header.command {
        case .disconnect:
            logger.debug("NBD_CMD_DISC", metadata: ["nbd.inflight": "\(inFlight)"])
            draining = true
            closeIfDrained(context: context)
        case .read:
            guard header.length > 0 else {
                replyReadData(header, [], length: 0, structured: structured, context: context)
                return
            }
            track(device.readSegments(offset: header.offset, length: header.length), header, structured, context) { handler, pieces in
                let total = pieces.reduce(0) { $0 + $1.readableBytes }
                guard total == Int(header.length) else {
                    handler.replyError(header, .eio, "device returned \(total) bytes", structured: structured, context: context)
                    return
                }
                handler.replyReadData(header, pieces, length: total, structured: structured, context: context)
            }
        case .write:
            guard let payload = request.payload, !request.payloadDiscarded else {
                // Validation refuses every discarded payload (length > maximum); zero length lands here.
                if request.payloadDiscarded && payloadBudget != nil && header.length <= transmission.validator.maximumPayload {
                    replyError(header, .enomem, "server out of write buffer memory, retry later", structured: structured, context: context)
                } else if request.payloadDiscarded {
                    replyError(header, .einval, "payload too large", structured: structured, context: context)
                } else {
                    replySuccess(header, context: context)
                }
                return
            }
            let flags: BlockWriteFlags = header.flags.contains(.fua) ? .fua : []
            let reserved = unreleased
            unreleased = 0
            let write = device.write(offset: header.offset, data: payload, flags: flags)
            if reserved > 0, let payloadBudget { write.whenComplete { _ in payloadBudget.release(reserved) } }
            trackVoid(write, header, structured, context)
        case .flush:
            trackVoid(device.flush(), header, structured, context)
        case .trim:
            guard header.length > 0 else { return replySuccess(header, context: context) }
            let flags: BlockWriteFlags = header.flags.contains(.fua) ? .fua : []
            trackVoid(device.trim(offset: header.offset, length: header.length, flags: flags), header, structured, context)
        case .writeZeroes:
            guard header.length > 0 else { return replySuccess(header, context: context) }
            var flags: BlockWriteFlags = []
            if header.flags.contains(.fua) { flags.insert(.fua) }
            if header.flags.contains(.noHole) { flags.insert(.noHole) }
            if header.flags.contains(.fastZero) { flags.insert(.fastZero) }
            trackVoid(device.writeZeroes(offset: header.offset, length: header.length, flags: flags), header, structured, context)
        case .cache:
            replySuccess(header, context: context)
        default:
            // The validator refuses every other command.
            replyError(header, .einval, "unsupported command", structured: structured, context: context)
        }
    }

    private func trackVoid(
        _ future: EventLoopFuture<Void>, _ header: NBDRequestHeader, _ structured: Bool, _ context: ChannelHandlerContext
    ) {
        track(future, header, structured, context) { handler, _ in handler.replySuccess(header, context: context) }
    }

    /// Counts the request in flight and runs `onSuccess` (or sends the error reply) on this channel's loop.
    private func track<T: Sendable>(
        _ future: EventLoopFuture<T>, _ header: NBDRequestHeader, _ structured: Bool, _ context: ChannelHandlerContext,
        onSuccess: @escaping (NBDConnectionHandler, T) -> Void
    ) {
        inFlight += 1
        let cost = header.command == .read || header.command == .write ? Int(header.length) : 0
        inFlightBytes += cost
        future.hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
            self.inFlight -= 1
            self.inFlightBytes -= cost
            switch result {
            case .success(let value):
                onSuccess(self, value)
            case .failure(let error):
                let (code, message): (NBDErrorCode, String)
                if let error = error as? BlockDeviceError {
                    (code, message) = (NBDErrorCode(errno: error.code.rawValue), error.message)
                } else {
                    (code, message) = (.eio, "\(error)")
                }
                self.logger.debug("request failed", metadata: ["nbd.cookie": "\(header.cookie)", "nbd.command": "\(header.command)", "error": "\(error)"])
                self.replyError(header, code, message, structured: structured, context: context)
            }
            self.requestCompleted(context: context)
        }
    }

    private func requestCompleted(context: ChannelHandlerContext) {
        if case .closed = phase { return }
        if draining {
            closeIfDrained(context: context)
            return
        }
        resumeIfPossible(context: context)
    }

    // MARK: - Replies

    private func replySuccess(_ header: NBDRequestHeader, context: ChannelHandlerContext) {
        // A simple reply is allowed for every non-READ request even with structured replies.
        var out = smallReplies ?? context.channel.allocator.buffer(capacity: 1024)
        smallReplies = nil
        out.writeNBDSimpleReply(cookie: header.cookie)
        smallReplies = out
        replyWritten(context: context)
    }

    private func replyError(
        _ header: NBDRequestHeader, _ code: NBDErrorCode, _ message: String, structured: Bool, context: ChannelHandlerContext
    ) {
        var out = smallReplies ?? context.channel.allocator.buffer(capacity: 1024)
        smallReplies = nil
        if structured {
            // "The server SHOULD prefer sending errors via a structured reply" (and MUST for READ).
            out.writeNBDStructuredError(cookie: header.cookie, error: code, message: message)
        } else {
            out.writeNBDSimpleReply(cookie: header.cookie, error: code)
        }
        smallReplies = out
        replyWritten(context: context)
    }

    /// The reply header, then the data pieces (`length` bytes in all) as they are: one vectored write when
    /// flushed, no copy.
    private func replyReadData(
        _ header: NBDRequestHeader, _ pieces: [ByteBuffer], length: Int, structured: Bool, context: ChannelHandlerContext
    ) {
        guard length > 0 else {
            var out = smallReplies ?? context.channel.allocator.buffer(capacity: 1024)
            smallReplies = nil
            if structured { out.writeNBDStructuredNone(cookie: header.cookie) } else { out.writeNBDSimpleReply(cookie: header.cookie) }
            smallReplies = out
            replyWritten(context: context)
            return
        }
        var head = context.channel.allocator.buffer(capacity: 32)
        if structured {
            // One OFFSET_DATA chunk marked DONE: the data is complete, no error can follow.
            head.writeNBDOffsetDataHeader(cookie: header.cookie, flags: .done, offset: header.offset, dataLength: UInt32(length))
        } else {
            head.writeNBDSimpleReply(cookie: header.cookie)
        }
        context.write(wrapOutboundOut(head), promise: nil)
        for piece in pieces where piece.readableBytes > 0 { context.write(wrapOutboundOut(piece), promise: nil) }
        replyWritten(context: context)
    }

    private func replyWritten(context: ChannelHandlerContext) {
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

    private func closeIfDrained(context: ChannelHandlerContext) {
        guard draining, inFlight == 0 else { return }
        if case .closed = phase { return }
        flushNow(context: context)
        phase = .closed
        cumulation = nil
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension NBDConnectionHandler: Sendable {}
