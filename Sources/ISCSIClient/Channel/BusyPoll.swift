import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// How long to busy-poll before the event loop sleeps: adaptive, the way QEMU's event loop adjusts its
/// `poll-max-ns` window (util/aio-posix.c). A window that an event beat is kept; after one that ran out,
/// the time the loop then slept decides: an event that came soon after (within the maximum) means a
/// longer window would have caught it (double it), a long sleep means polling only burns CPU here
/// (halve it, down to nothing). Pure logic: the caller measures the times.
public struct BusyPollPolicy: Sendable, Hashable {
    /// Longest window (the `--poll-us` setting).
    public let maximumNanoseconds: UInt64
    /// The window the next poll uses (0: do not poll).
    public private(set) var windowNanoseconds: UInt64
    /// Where a window that grows from nothing starts.
    public static let startNanoseconds: UInt64 = 4_000

    public init(maximumNanoseconds: UInt64) {
        self.maximumNanoseconds = maximumNanoseconds
        self.windowNanoseconds = min(maximumNanoseconds, Self.startNanoseconds)
    }

    /// A window ran out and the loop slept `sleptNanoseconds` until the next event.
    public mutating func windowExpired(thenSlept sleptNanoseconds: UInt64) {
        if sleptNanoseconds <= maximumNanoseconds {
            let grown = windowNanoseconds == 0 ? Self.startNanoseconds : windowNanoseconds * 2
            windowNanoseconds = min(maximumNanoseconds, grown)
        } else {
            windowNanoseconds /= 2
            if windowNanoseconds < Self.startNanoseconds { windowNanoseconds = 0 }
        }
    }
}

/// Busy-polls an event loop's epoll descriptor before NIO blocks in `epoll_wait`: at queue depth 1 every
/// I/O wakes this process twice (the target's answer, the client's next request), and on a VM whose idle
/// vCPUs halt each wake-up is a VM exit. Polling keeps the thread running through those short gaps.
/// Linux only; off unless `ISCSISessionConfiguration.busyPollMicroseconds` > 0.
///
/// NIO has no API for its epoll descriptor. It is found once per connection: the iSCSI socket's
/// descriptor is the one whose local and peer addresses are the channel's, and the loop's epoll
/// descriptor is the `anon_inode:[eventpoll]` whose /proc/self/fdinfo lists that socket. `poll(2)` on an
/// epoll descriptor reports readiness without consuming any event, so NIO sees everything as usual.
final class BusyPoller {
    private var policy: BusyPollPolicy
    private let epollFD: Int32
    private var scheduled = false
    /// When the last window ran out without an event (to measure the sleep that followed).
    private var expiredAt: UInt64?

    private let logger: Logger
    private var reportedCatch = false

    private init(maximum: UInt64, epollFD: Int32, logger: Logger) {
        self.policy = BusyPollPolicy(maximumNanoseconds: maximum)
        self.epollFD = epollFD
        self.logger = logger
    }

    /// A poller for the loop that carries `channel`, or nil (polling off, not Linux, descriptor not found).
    static func make(for channel: any Channel, microseconds: Int, logger: Logger) -> BusyPoller? {
        guard microseconds > 0 else { return nil }
        #if os(Linux)
        guard let local = channel.localAddress, let remote = channel.remoteAddress,
              let socket = socketDescriptor(local: local, remote: remote),
              let epoll = epollDescriptor(watching: socket)
        else {
            logger.notice("busy polling unavailable: the event loop's epoll descriptor was not found")
            return nil
        }
        logger.debug("busy polling", metadata: ["poll.us": "\(microseconds)", "poll.epollFD": "\(epoll)"])
        return BusyPoller(maximum: UInt64(microseconds) * 1_000, epollFD: epoll, logger: logger)
        #else
        return nil
        #endif
    }

    /// Polling pays only when the loop would otherwise sleep between a request and its answer: with
    /// more commands than this in flight the loop rarely sleeps, and on a busy machine the polling
    /// thread would take CPU time from the target and the client (measured: polling at every depth
    /// raised CPU per I/O at 4k QD32 on 2 CPUs by a third).
    static let maximumOutstandingToPoll = 2

    /// Call when the loop has just had work, with the commands now in flight: once the tasks queued so
    /// far have run, polls for the current window (or only notes the time when the window is 0, so the
    /// next event can grow it).
    func arm(on loop: any EventLoop, outstanding: Int) {
        guard outstanding <= Self.maximumOutstandingToPoll else {
            expiredAt = nil  // a deep queue teaches nothing about the gaps at low depth
            return
        }
        if let expired = expiredAt {
            expiredAt = nil
            policy.windowExpired(thenSlept: Self.monotonicNanoseconds() &- expired)
        }
        guard !scheduled else { return }
        scheduled = true
        loop.assumeIsolated().execute { [self] in
            scheduled = false
            if poll() {
                if !reportedCatch {
                    reportedCatch = true
                    logger.debug("busy polling caught its first event", metadata: ["poll.windowUs": "\(policy.windowNanoseconds / 1_000)"])
                }
            } else {
                expiredAt = Self.monotonicNanoseconds()
            }
        }
    }

    /// True when an event arrived within the window.
    private func poll() -> Bool {
        let window = policy.windowNanoseconds
        guard window > 0 else { return false }
        var entry = pollfd(fd: epollFD, events: Int16(POLLIN), revents: 0)
        let deadline = Self.monotonicNanoseconds() &+ window
        repeat {
            if Glibc.poll(&entry, 1, 0) != 0 { return true }  // an event (or an error: epoll_wait will see it)
        } while Self.monotonicNanoseconds() < deadline
        return false
    }

    private static func monotonicNanoseconds() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

    #if os(Linux)
    private static func openDescriptors() -> [Int32] {
        guard let dir = opendir("/proc/self/fd") else { return [] }
        defer { closedir(dir) }
        var out: [Int32] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let fd = Int32(name) { out.append(fd) }
        }
        return out
    }

    private static func linkTarget(_ fd: Int32) -> String? {
        var buffer = [CChar](repeating: 0, count: 128)
        let n = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The TCP socket whose local and peer ports are the channel's (unique among our connections).
    private static func socketDescriptor(local: SocketAddress, remote: SocketAddress) -> Int32? {
        guard let localPort = local.port, let remotePort = remote.port else { return nil }
        for fd in openDescriptors() where linkTarget(fd)?.hasPrefix("socket:") == true {
            if port(of: fd, peer: false) == localPort, port(of: fd, peer: true) == remotePort { return fd }
        }
        return nil
    }

    private static func port(of fd: Int32, peer: Bool) -> Int? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { peer ? getpeername(fd, $0, &length) : getsockname(fd, $0, &length) }
        }
        guard rc == 0 else { return nil }
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) } }
        case AF_INET6:
            return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) } }
        default:
            return nil
        }
    }

    /// A small /proc file (their size is 0 to stat, so read until EOF).
    private static func readProcFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n < 0 { return nil }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[..<n])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func epollDescriptor(watching socket: Int32) -> Int32? {
        for fd in openDescriptors() where linkTarget(fd) == "anon_inode:[eventpoll]" {
            guard let info = readProcFile("/proc/self/fdinfo/\(fd)") else { continue }
            // "tfd:        7 events:       19 data: ..." (fs/eventpoll.c ep_show_fdinfo)
            for line in info.split(separator: "\n") where line.hasPrefix("tfd:") {
                let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                if fields.count > 1, Int32(fields[1]) == socket { return fd }
            }
        }
        return nil
    }
    #endif
}
