import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Turns signals into calls of a handler on a private queue. The signals' default actions stay off while
/// the watcher lives, so a second Ctrl-C during a drain does not kill the process mid-logout.
final class SignalWatcher: @unchecked Sendable {
    // SAFETY: `sources` is written once in init (before any handler can run) and only read afterwards.
    private var sources: [any DispatchSourceSignal] = []
    private let queue = DispatchQueue(label: "iscsi-nbd.signals")

    init(_ signals: [Int32], handler: @escaping @Sendable (Int32) -> Void) {
        for sig in signals {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { handler(sig) }
            sources.append(source)
            source.resume()
        }
    }

    func cancel() {
        for s in sources { s.cancel() }
    }

    deinit { cancel() }
}

/// The first of several asynchronous events: a signal, a session that closed, a daemon request.
/// `next()` returns the first reason given; later ones are ignored.
struct StopReasons: Sendable {
    private let stream: AsyncStream<String>
    let continuation: AsyncStream<String>.Continuation

    init() {
        (stream, continuation) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingOldest(8))
    }

    func stop(_ reason: String) { continuation.yield(reason) }

    func first() async -> String {
        var iterator = stream.makeAsyncIterator()
        return await iterator.next() ?? "stopped"
    }
}
