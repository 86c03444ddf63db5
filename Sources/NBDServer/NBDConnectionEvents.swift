import BlockBackend
import NBDProtocol
import NIOCore

/// Asks a connection to finish: handshake connections close at once; transmission connections stop reading,
/// let in-flight requests complete and send their replies, then close (nbd-proto.md "Terminating the
/// transmission phase": "On a server shutdown, the server SHOULD wait for inflight requests to be serviced
/// prior to initiating a hard disconnect").
struct NBDDrainEvent: Sendable {}

/// Asks a kernel connection to stop at a request boundary, so that its socket can go on in another process
/// (a restarting daemon takes it from systemd's fd store): reads are withheld, requests already read are
/// served and answered, a request the last read cut short is completed with exactly the bytes it lacks
/// (`readExactly`, on the socket's other descriptor, while the channel does not read), and once nothing is
/// buffered, in flight or unsent the channel is closed in that same event-loop turn. `done` is true then;
/// false when the stream could not be left at a boundary (the socket must not be reused).
struct NBDPauseEvent: Sendable {
    var readExactly: @Sendable (Int) -> ByteBuffer?
    var done: EventLoopPromise<Bool>
}

extension BlockWriteFlags {
    /// A device request's flags (`NBDCommandFlags.deviceFlags(for:)`), one to one.
    init(_ flags: NBDCommandFlags) {
        self = []
        if flags.contains(.fua) { insert(.fua) }
        if flags.contains(.noHole) { insert(.noHole) }
        if flags.contains(.fastZero) { insert(.fastZero) }
    }
}
