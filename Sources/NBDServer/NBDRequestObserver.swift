import NBDProtocol
import NIOCore

/// Told about the requests a connection hands to its device and how each ended (metrics). Called on the
/// connection's event loop, once per request: an implementation must be cheap and must not block. Without an
/// observer the server reads no clock.
public protocol NBDRequestObserver: AnyObject, Sendable {
    /// A connection entered service (handshake or transmission) and left it.
    func connectionOpened()
    func connectionClosed()
    /// A request went to the device (it is in flight until `requestFinished`).
    func requestStarted()
    /// The request `command` that started at `start` ended at `end` (`NIODeadline.uptimeNanoseconds`); `bytes`
    /// is the length of a READ or WRITE that succeeded (0 otherwise). Called for every started request, on a
    /// closed connection too.
    func requestFinished(_ command: NBDCommand, bytes: UInt32, start: UInt64, end: UInt64, succeeded: Bool)
    /// A request answered with an error without reaching the device (out of range, misaligned, read-only...).
    func requestRefused()
}

/// Gives each connection its observer, for the event loop the connection runs on: the counting can then be
/// plain integers owned by that loop (the kernel's queues of one device run on several loops).
public protocol NBDRequestObserverFactory: Sendable {
    func observer(on loop: any EventLoop) -> any NBDRequestObserver
}
