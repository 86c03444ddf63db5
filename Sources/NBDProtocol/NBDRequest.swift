import NIOCore

/// The 28-byte request header (nbd-proto.md "Request message").
public struct NBDRequestHeader: Hashable, Sendable {
    public var flags: NBDCommandFlags
    public var command: NBDCommand
    /// Opaque cookie echoed in the reply (formerly "handle").
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt32

    public init(flags: NBDCommandFlags = [], command: NBDCommand, cookie: UInt64, offset: UInt64, length: UInt32) {
        self.flags = flags
        self.command = command
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }

    public static let size = 28
}

/// A decoded request. For NBD_CMD_WRITE the payload is a zero-copy slice of the receive buffer, or `nil`
/// if the payload was larger than we buffer and was discarded as it arrived (`payloadDiscarded`).
public struct NBDRequest: Hashable, Sendable {
    public var header: NBDRequestHeader
    public var payload: ByteBuffer?
    /// The WRITE payload exceeded `NBDRequestDecoder.maximumBufferedPayload` and was skipped; the request
    /// must be answered with an error (validation does so: length > maximum payload → EINVAL).
    public var payloadDiscarded: Bool

    public init(header: NBDRequestHeader, payload: ByteBuffer? = nil, payloadDiscarded: Bool = false) {
        self.header = header
        self.payload = payload
        self.payloadDiscarded = payloadDiscarded
    }
}

/// Incremental decoder of transmission-phase requests: `nil` = more bytes needed, throw = malformed (the
/// connection must be closed).
///
/// Memory policy: a WRITE payload of up to `maximumBufferedPayload` bytes (the advertised maximum payload) is
/// buffered and handed on as a zero-copy slice. A larger WRITE payload is never buffered: its bytes are
/// discarded as they arrive and the request is then delivered with `payloadDiscarded` so that it can be
/// failed with `NBD_EINVAL` while the connection stays usable (nbd-proto.md "Size constraints": a client
/// MUST NOT send a WRITE larger than the maximum payload; the server "MUST cleanly error commands that fall
/// outside the constraints"). So a connection never holds more than one maximum payload plus one read
/// buffer of inbound data, whatever lengths a client claims. Nothing is allocated ahead of the bytes
/// actually received.
public struct NBDRequestDecoder: Sendable {
    public var maximumBufferedPayload: UInt32

    private enum State: Sendable {
        /// Waiting for a 28-byte header.
        case header
        /// Header of a WRITE seen; waiting for its whole payload.
        case payload(NBDRequestHeader)
        /// Header of an oversized WRITE seen; skipping `remaining` payload bytes.
        case discarding(NBDRequestHeader, remaining: UInt32)
    }
    private var state: State = .header

    public init(maximumBufferedPayload: UInt32) {
        self.maximumBufferedPayload = maximumBufferedPayload
    }

    /// How many more bytes the message being decoded needs at least (a hint for buffer sizing; 0 if unknown).
    public func bytesNeeded(given available: Int) -> Int {
        switch state {
        case .header: return max(0, NBDRequestHeader.size - available)
        case .payload(let header): return max(0, Int(header.length) - available)
        case .discarding: return 0
        }
    }

    /// The length of the WRITE payload being received (header decoded, payload not complete), else nil.
    public var payloadInProgress: UInt32? {
        if case .payload(let header) = state { return header.length }
        return nil
    }

    /// Gives up buffering the WRITE payload in progress (the server is out of buffer memory): the `buffered`
    /// payload bytes the caller already holds are dropped by the caller, the rest is discarded as it arrives,
    /// and the request is then delivered with `payloadDiscarded` (to be failed, e.g. with NBD_ENOMEM).
    public mutating func abandonPayload(buffered: Int) {
        guard case .payload(let header) = state else { return }
        let remaining = header.length - UInt32(clamping: min(max(buffered, 0), Int(header.length)))
        state = .discarding(header, remaining: remaining)
    }

    /// True while in the middle of a message (used to detect a truncated request at end of stream).
    public var isIdle: Bool {
        if case .header = state { return true }
        return false
    }

    public mutating func decode(_ buffer: inout ByteBuffer) throws(NBDProtocolError) -> NBDRequest? {
        while true {
            switch state {
            case .header:
                guard let header = try Self.readHeader(&buffer) else { return nil }
                guard header.command == .write, header.length > 0 else { return NBDRequest(header: header) }
                if header.length <= maximumBufferedPayload {
                    state = .payload(header)
                } else {
                    state = .discarding(header, remaining: header.length)
                }
            case .payload(let header):
                guard let payload = buffer.readSlice(length: Int(header.length)) else { return nil }
                state = .header
                return NBDRequest(header: header, payload: payload)
            case .discarding(let header, let remaining):
                guard remaining > 0 else {
                    state = .header
                    return NBDRequest(header: header, payload: nil, payloadDiscarded: true)
                }
                let n = min(Int(remaining), buffer.readableBytes)
                buffer.moveReaderIndex(forwardBy: n)
                let left = remaining - UInt32(n)
                if left > 0 {
                    state = .discarding(header, remaining: left)
                    return nil
                }
                state = .header
                return NBDRequest(header: header, payload: nil, payloadDiscarded: true)
            }
        }
    }

    private static func readHeader(_ buffer: inout ByteBuffer) throws(NBDProtocolError) -> NBDRequestHeader? {
        guard buffer.readableBytes >= NBDRequestHeader.size,
            let fields = buffer.readMultipleIntegers(as: (UInt32, UInt16, UInt16, UInt64, UInt64, UInt32).self)
        else { return nil }
        let (magic, flags, command, cookie, offset, length) = fields
        guard magic == NBDMagic.request else {
            throw NBDProtocolError(.badMagic, "request magic 0x\(String(magic, radix: 16))")
        }
        return NBDRequestHeader(
            flags: NBDCommandFlags(rawValue: flags), command: NBDCommand(rawValue: command),
            cookie: cookie, offset: offset, length: length)
    }
}

extension ByteBuffer {
    /// Writes a request header (client side; tests and tools). The WRITE payload follows separately.
    @discardableResult
    public mutating func writeNBDRequestHeader(_ header: NBDRequestHeader) -> Int {
        writeMultipleIntegers(
            NBDMagic.request, header.flags.rawValue, header.command.rawValue, header.cookie, header.offset,
            header.length)
    }
}
