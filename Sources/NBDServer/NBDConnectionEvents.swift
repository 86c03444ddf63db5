import BlockBackend
import NBDProtocol
import NIOCore

/// Asks a connection to finish: handshake connections close at once; transmission connections stop reading,
/// let in-flight requests complete and send their replies, then close (nbd-proto.md "Terminating the
/// transmission phase": "On a server shutdown, the server SHOULD wait for inflight requests to be serviced
/// prior to initiating a hard disconnect").
struct NBDDrainEvent: Sendable {}

extension BlockWriteFlags {
    /// A device request's flags (`NBDCommandFlags.deviceFlags(for:)`), one to one.
    init(_ flags: NBDCommandFlags) {
        self = []
        if flags.contains(.fua) { insert(.fua) }
        if flags.contains(.noHole) { insert(.noHole) }
        if flags.contains(.fastZero) { insert(.fastZero) }
    }
}
