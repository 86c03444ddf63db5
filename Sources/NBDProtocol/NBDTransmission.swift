import NIOCore

/// The transmission phase of one connection (nbd-proto.md "Transmission"), server side: nbdkit's protocol.c as a
/// value type. Events in (bytes received, a device request finished, a drain), actions out (ask the device,
/// send a reply, close); it does no IO. The connection keeps the bytes, the sockets, backpressure, timers and
/// the memory accounting of the write budget.
///
///     var transmission = NBDTransmission(parameters: parameters, maximumInFlight: 256, maximumInFlightBytes: 64 << 20)
///     while channelIsWritable {
///         switch try transmission.receive(&inbound) {
///         case .noRequest: return                          // wait for bytes or for a completion
///         case .payloadArriving(let buffered, _): return   // after reserving `buffered`, or refusePayload(in:)
///         case .execute(let request): start(request)      // then deviceCompleted(request.header, result)
///         case .reply(let reply): send(reply)
///         case .drain(.closeNow): close(); return
///         case .drain(.awaitInFlight): return             // the last completion answers .replyAndClose
///         }
///     }
///
/// Rules:
/// - Admission: a request is taken only while the in-flight window (`maximumInFlight` requests,
///   `maximumInFlightBytes` of READ lengths and WRITE payloads) has room. Decoding errors are a hard
///   disconnect (the call throws). Every other check is `NBDRequestValidator`'s and ends in an error reply, the
///   connection staying usable.
/// - WRITE payloads (nbd-proto.md "Size constraints"): up to the maximum payload one is buffered and handed on
///   as a slice. A longer one is discarded as it arrives and answered EINVAL by validation. One that the
///   connection's write budget cannot hold is refused: while arriving (`refusePayload`: what is buffered is
///   dropped, the rest discarded as it arrives) or once complete (`refuseWrite`); either way it is answered
///   ENOMEM after validation ("SHOULD NOT return NBD_ENOMEM if at all possible": only when memory is short).
/// - Zero-length READ, WRITE, TRIM, WRITE_ZEROES and every CACHE are answered at once without the device.
/// - Device requests carry the command flags that ask something of the device (`deviceFlags(for:)`); device
///   errors become NBD errors by `NBDErrorCode(errno:)`.
/// - Replies (nbd-proto.md "Ordering of messages and writes"): a request is answered only once the device
///   finished it, so a write is on the device before its reply (FUA is the device's to honour, and a FLUSH
///   follows every write completed before it); replies go out in completion order, not request order. Their
///   form is `NBDReply`'s: structured only when negotiated, and then always for READ and for errors.
/// - NBD_CMD_DISC has no reply (nbd-proto.md "Terminating the transmission phase"): no further request is
///   taken, the requests in flight are answered, then the connection closes. A server shutdown drains the same
///   way ("SHOULD wait for inflight requests to be serviced prior to initiating a hard disconnect").
public struct NBDTransmission: Sendable {
    /// What the connection does after `receive`.
    public enum OnReceive: Hashable, Sendable {
        /// No request taken: the buffer holds none complete, the window is full, or the machine takes no more
        /// requests (draining, closed).
        case noRequest
        /// No request taken: a WRITE payload of `length` bytes is arriving and `buffered` of them are in the
        /// buffer. A connection with a write budget holds them in it or calls `refusePayload`.
        case payloadArriving(buffered: Int, length: UInt32)
        /// Ask the device; report the outcome with `deviceCompleted`.
        case execute(NBDDeviceRequest)
        /// Send this reply now; the device is not involved.
        case reply(NBDReply)
        /// NBD_CMD_DISC: no reply; no more requests are taken.
        case drain(Drain)
    }

    /// When a draining connection closes.
    public enum Drain: Hashable, Sendable {
        /// Nothing in flight: send what is pending, then close.
        case closeNow
        /// Requests are in flight: the completion of the last one says `.replyAndClose`.
        case awaitInFlight
    }

    /// What the connection does after a device request finished.
    public enum OnCompletion: Hashable, Sendable {
        /// Send this reply.
        case reply(NBDReply)
        /// Send this reply, then close: it answers the last request a drain waited for.
        case replyAndClose(NBDReply)
        /// Closed: nothing is sent.
        case ignored

        /// The reply to send, if any.
        public var reply: NBDReply? {
            switch self {
            case .reply(let reply), .replyAndClose(let reply): reply
            case .ignored: nil
            }
        }
    }

    private enum State: Sendable {
        /// Taking requests.
        case serving(Serving)
        /// NBD_CMD_DISC received or server shutting down: no more requests are taken; closes once the window
        /// is empty.
        case draining(Window)
        /// A drain finished or the peer broke the framing: nothing more is taken or answered.
        case closed
        /// Held while a payload is mutated in place (nio-http2's idiom), so that the payload is never copied on
        /// write; never seen from outside a mutating method.
        case _modifying
    }

    private struct Serving: Sendable {
        var decoder: NBDRequestDecoder
        var validator: NBDRequestValidator
        var window = Window()
    }

    /// Requests executing on the device.
    private struct Window: Sendable {
        var count = 0
        /// READ lengths and WRITE payload bytes.
        var bytes = 0

        mutating func add(_ header: NBDRequestHeader) {
            count += 1
            bytes += Self.cost(header)
        }

        mutating func remove(_ header: NBDRequestHeader) {
            precondition(count > 0, "a completion without a request in flight")
            count -= 1
            bytes -= Self.cost(header)
        }

        private static func cost(_ header: NBDRequestHeader) -> Int {
            header.command == .read || header.command == .write ? Int(header.length) : 0
        }
    }

    public let structuredReplies: Bool
    public let maximumInFlight: Int
    public let maximumInFlightBytes: Int
    private var state: State

    /// Starts serving with what the handshake agreed (or, for the kernel's socket, simple replies).
    public init(parameters: NBDTransmissionParameters, maximumInFlight: Int, maximumInFlightBytes: Int) {
        structuredReplies = parameters.structuredReplies
        self.maximumInFlight = max(1, maximumInFlight)
        self.maximumInFlightBytes = max(1, maximumInFlightBytes)
        state = .serving(
            Serving(
                decoder: NBDRequestDecoder(maximumBufferedPayload: parameters.export.maximumPayload),
                validator: NBDRequestValidator(parameters: parameters)))
    }

    // MARK: - Queries

    /// Whether `receive` may take a request: serving, with room in the window.
    public var canTakeRequest: Bool {
        switch state {
        case .serving(let serving): hasRoom(serving.window)
        case .draining, .closed: false
        case ._modifying: preconditionFailure("NBDTransmission read while being modified")
        }
    }

    /// Requests executing on the device.
    public var inFlight: Int {
        switch state {
        case .serving(let serving): serving.window.count
        case .draining(let window): window.count
        case .closed: 0
        case ._modifying: preconditionFailure("NBDTransmission read while being modified")
        }
    }

    /// Whether the peer is in the middle of a request: `buffered` bytes of one are held, or a header announced a
    /// payload that has not all arrived. False once draining: nothing after NBD_CMD_DISC is waited for.
    public func isMidMessage(buffered: Int) -> Bool {
        switch state {
        case .serving(let serving): buffered > 0 || !serving.decoder.isIdle
        case .draining, .closed: false
        case ._modifying: preconditionFailure("NBDTransmission read while being modified")
        }
    }

    /// How many more bytes the request being received needs at least, given `available` (a buffer sizing
    /// hint; 0 if unknown or when no request is taken).
    public func bytesNeeded(given available: Int) -> Int {
        switch state {
        case .serving(let serving): serving.decoder.bytesNeeded(given: available)
        case .draining, .closed: 0
        case ._modifying: preconditionFailure("NBDTransmission read while being modified")
        }
    }

    // MARK: - Events

    /// Takes at most one request from `buffer`. Throws on a framing error (the connection must be closed).
    public mutating func receive(_ buffer: inout ByteBuffer) throws(NBDProtocolError) -> OnReceive {
        switch state {
        case .serving(var serving):
            guard hasRoom(serving.window) else { return .noRequest }
            state = ._modifying
            let decoded: NBDRequest?
            do {
                decoded = try serving.decoder.decode(&buffer)
            } catch {
                state = .closed
                throw error
            }
            guard let request = decoded else {
                state = .serving(serving)
                guard let length = serving.decoder.payloadInProgress else { return .noRequest }
                return .payloadArriving(buffered: min(buffer.readableBytes, Int(length)), length: length)
            }
            let header = request.header
            if let rejection = serving.validator.validate(header) {
                state = .serving(serving)
                return .reply(failure(header, rejection))
            }
            if header.command == .disconnect {
                return .drain(drain(serving.window))
            }
            let action = admit(request)
            if case .execute = action { serving.window.add(header) }
            state = .serving(serving)
            return action
        case .draining, .closed:
            return .noRequest
        case ._modifying:
            preconditionFailure("NBDTransmission modified reentrantly")
        }
    }

    /// The write budget cannot hold the payload announced by `.payloadArriving`: the bytes of it in `buffer`
    /// are dropped, the rest is discarded as it arrives, and the WRITE is answered ENOMEM (after validation)
    /// once it has all arrived. The connection stays usable.
    public mutating func refusePayload(in buffer: inout ByteBuffer) {
        switch state {
        case .serving(var serving):
            guard let length = serving.decoder.payloadInProgress else { return }
            state = ._modifying
            let buffered = min(buffer.readableBytes, Int(length))
            serving.decoder.abandonPayload(buffered: buffered)
            buffer.moveReaderIndex(forwardBy: buffered)
            state = .serving(serving)
        case .draining, .closed:
            return
        case ._modifying:
            preconditionFailure("NBDTransmission modified reentrantly")
        }
    }

    /// The write budget cannot hold the complete payload of the WRITE `header` that `.execute` asked for: it is
    /// not executed and is answered ENOMEM instead.
    public mutating func refuseWrite(_ header: NBDRequestHeader) -> OnCompletion {
        complete(header, with: failure(header, Self.outOfBudget))
    }

    /// The device finished the request `header` that `.execute` asked for.
    public mutating func deviceCompleted(_ header: NBDRequestHeader, _ result: NBDDeviceResult) -> OnCompletion {
        let reply: NBDReply
        switch result {
        case .success(let data):
            reply = header.command == .read ? readReply(header, data) : .simple(cookie: header.cookie)
        case .failure(let errno, let message):
            // A failure without an errno is an IO error (the BlockDevice contract).
            reply = failure(header, NBDRequestRejection(errno.map(NBDErrorCode.init(errno:)) ?? .eio, message))
        }
        return complete(header, with: reply)
    }

    /// The server is shutting down: stop taking requests, close once those in flight are answered.
    public mutating func startDrain() -> Drain {
        switch state {
        case .serving(let serving): drain(serving.window)
        case .draining: .awaitInFlight
        case .closed: .closeNow
        case ._modifying: preconditionFailure("NBDTransmission modified reentrantly")
        }
    }

    /// The export grew (a kernel device told NBD_SET_SIZE): requests up to `size` are valid from now on.
    public mutating func grow(to size: UInt64) {
        switch state {
        case .serving(var serving):
            state = ._modifying
            serving.validator.grow(to: size)
            state = .serving(serving)
        case .draining, .closed:
            return
        case ._modifying:
            preconditionFailure("NBDTransmission modified reentrantly")
        }
    }

    // MARK: - Rules

    private func hasRoom(_ window: Window) -> Bool {
        window.count < maximumInFlight && window.bytes < maximumInFlightBytes
    }

    /// A validated request other than NBD_CMD_DISC: what to ask the device, or the reply when there is nothing
    /// to ask (nbd-proto.md "Request types").
    private func admit(_ request: NBDRequest) -> OnReceive {
        let header = request.header
        let done = NBDReply.simple(cookie: header.cookie)
        switch header.command {
        case .read:
            guard header.length > 0 else {
                return .reply(structuredReplies ? .structuredNone(cookie: header.cookie) : done)
            }
            return .execute(.read(header))
        case .write:
            guard let payload = request.payload else {
                // Validation refused the payloads discarded for their size; this one was refused by the budget.
                return .reply(request.payloadDiscarded ? failure(header, Self.outOfBudget) : done)
            }
            return .execute(.write(header, payload: payload, flags: header.flags.deviceFlags(for: .write)))
        case .flush:
            return .execute(.flush(header))
        case .trim:
            guard header.length > 0 else { return .reply(done) }
            return .execute(.trim(header, flags: header.flags.deviceFlags(for: .trim)))
        case .writeZeroes:
            guard header.length > 0 else { return .reply(done) }
            return .execute(.writeZeroes(header, flags: header.flags.deviceFlags(for: .writeZeroes)))
        case .cache:
            // Accepted as a no-op: the device has no cache to fill that would change what a READ returns.
            return .reply(done)
        default:
            // The validator refuses every other command, and `receive` takes NBD_CMD_DISC before this.
            return .reply(failure(header, NBDRequestRejection(.einval, "unsupported command")))
        }
    }

    /// A successful READ: exactly `length` bytes, or EIO (nothing has been sent for it yet, so the error can
    /// still be reported cleanly).
    private func readReply(_ header: NBDRequestHeader, _ data: [ByteBuffer]) -> NBDReply {
        let total = data.reduce(0) { $0 + $1.readableBytes }
        guard total == Int(header.length) else {
            return failure(header, NBDRequestRejection(.eio, "device returned \(total) bytes"))
        }
        if structuredReplies {
            return .offsetData(cookie: header.cookie, offset: header.offset, length: header.length, data: data)
        }
        return .simpleData(cookie: header.cookie, data: data)
    }

    /// "The server SHOULD prefer sending errors via a structured reply" (and MUST for READ).
    private func failure(_ header: NBDRequestHeader, _ rejection: NBDRequestRejection) -> NBDReply {
        structuredReplies
            ? .structuredError(cookie: header.cookie, rejection) : .simpleError(cookie: header.cookie, rejection)
    }

    private static let outOfBudget = NBDRequestRejection(.enomem, "server out of write buffer memory, retry later")

    /// Stops taking requests: closed at once with nothing in flight.
    private mutating func drain(_ window: Window) -> Drain {
        guard window.count > 0 else {
            state = .closed
            return .closeNow
        }
        state = .draining(window)
        return .awaitInFlight
    }

    /// Takes `header` out of the window and says what to do with its reply.
    private mutating func complete(_ header: NBDRequestHeader, with reply: NBDReply) -> OnCompletion {
        switch state {
        case .serving(var serving):
            state = ._modifying
            serving.window.remove(header)
            state = .serving(serving)
            return .reply(reply)
        case .draining(var window):
            window.remove(header)
            guard window.count > 0 else {
                state = .closed
                return .replyAndClose(reply)
            }
            state = .draining(window)
            return .reply(reply)
        case .closed:
            return .ignored
        case ._modifying:
            preconditionFailure("NBDTransmission modified reentrantly")
        }
    }
}
