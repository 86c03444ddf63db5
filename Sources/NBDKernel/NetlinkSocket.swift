import CLinuxNBD
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A generic netlink socket: `socket(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC)`, bound to a kernel-assigned
/// port id. The only file in this module that makes syscalls. Blocking; use it from one thread at a time.
final class NetlinkSocket {
    private let fd: Int32
    /// Our port id (`nl_pid` after bind).
    let portID: UInt32
    private var sequence: UInt32
    private let allocator = ByteBufferAllocator()
    /// Upper bound of one datagram we accept (the kernel's generic netlink replies are at most a few pages).
    static let maximumDatagram = 1 << 20

    init() throws(NBDKernelError) {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), NETLINK_GENERIC)
        guard fd >= 0 else { throw .systemCall("socket(AF_NETLINK, NETLINK_GENERIC)", errno: errno) }
        var one: Int32 = 1
        // Best effort: extended acks carry the kernel's error text; capped acks do not echo our request.
        _ = setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
            }
        }
        guard bound == 0 else {
            let error = errno
            close(fd)
            throw .systemCall("bind(AF_NETLINK)", errno: error)
        }
        var length = socklen_t(MemoryLayout<sockaddr_nl>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else {
            let error = errno
            close(fd)
            throw .systemCall("getsockname(AF_NETLINK)", errno: error)
        }
        self.fd = fd
        self.portID = address.nl_pid
        // Any start value works; a time-derived one makes stale replies of an earlier socket easy to tell apart.
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        self.sequence = UInt32(truncatingIfNeeded: now.tv_nsec) | 1
    }

    deinit { close(fd) }

    func nextSequence() -> UInt32 {
        sequence &+= 1
        if sequence == 0 { sequence = 1 }  // 0 is what multicast notifications carry
        return sequence
    }

    /// `NETLINK_ADD_MEMBERSHIP`: receive a family's multicast group (e.g. NBD's link-dead notifications).
    func joinMulticastGroup(_ group: UInt32) throws(NBDKernelError) {
        var group = group
        guard setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, socklen_t(MemoryLayout<UInt32>.size)) == 0 else {
            throw .systemCall("setsockopt(NETLINK_ADD_MEMBERSHIP)", errno: errno)
        }
    }

    func send(_ message: ByteBuffer) throws(NBDKernelError) {
        var kernel = sockaddr_nl()
        kernel.nl_family = sa_family_t(AF_NETLINK)
        while true {
            let sent = message.withUnsafeReadableBytes { bytes in
                withUnsafePointer(to: &kernel) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, bytes.baseAddress, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                    }
                }
            }
            if sent < 0 && errno == EINTR { continue }
            guard sent == message.readableBytes else {
                throw .systemCall("sendto(netlink)", errno: sent < 0 ? errno : EMSGSIZE)
            }
            return
        }
    }

    /// Waits up to `deadline` for one datagram from the kernel and returns its messages; nil on timeout.
    /// Datagrams from other ports (not the kernel) are dropped.
    func receive(until deadline: ContinuousClock.Instant) throws(NBDKernelError) -> [NetlinkMessage]? {
        while true {
            let remaining = ContinuousClock.now.duration(to: deadline)
            if remaining <= .zero { return nil }
            let (seconds, attoseconds) = remaining.components
            let milliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
            var pollfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pollfd, 1, milliseconds)
            if ready < 0 {
                if errno == EINTR { continue }
                throw .systemCall("poll(netlink)", errno: errno)
            }
            if ready == 0 { continue }  // loop re-checks the deadline
            // Learn the datagram's size first (MSG_PEEK | MSG_TRUNC returns the full length).
            let size = recv(fd, nil, 0, Int32(MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT))
            if size < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                // ENOBUFS: the receive queue overflowed; replies may be lost.
                throw .systemCall("recv(netlink)", errno: errno)
            }
            guard size <= NetlinkSocket.maximumDatagram else {
                _ = recv(fd, nil, 0, Int32(MSG_DONTWAIT))  // drop it, so the next call does not see it again
                throw .malformedReply("datagram of \(size) bytes exceeds \(NetlinkSocket.maximumDatagram)")
            }
            var buffer = allocator.buffer(capacity: max(size, 16))
            var sender = sockaddr_nl()
            var senderLength = socklen_t(MemoryLayout<sockaddr_nl>.size)
            var receiveError: Int32 = 0
            _ = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: max(size, 16)) { bytes in
                withUnsafeMutablePointer(to: &sender) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        let n = recvfrom(fd, bytes.baseAddress, bytes.count, Int32(MSG_DONTWAIT), $0, &senderLength)
                        if n < 0 { receiveError = errno }
                        return max(n, 0)
                    }
                }
            }
            if receiveError == EINTR || receiveError == EAGAIN { continue }
            guard receiveError == 0 else { throw .systemCall("recvfrom(netlink)", errno: receiveError) }
            guard sender.nl_family == sa_family_t(AF_NETLINK), sender.nl_pid == 0 else { continue }
            return try NetlinkMessage.parseDatagram(buffer)
        }
    }

    /// Sends `request` (built with `sequence`) and collects replies until the kernel's ACK.
    /// Throws `.kernelRejected` with the errno when the kernel refuses, `.timedOut` after `timeout`.
    func transact(
        _ request: ByteBuffer, sequence: UInt32, what: String, timeout: Duration
    ) throws(NBDKernelError) -> [NetlinkMessage] {
        try send(request)
        var transaction = NetlinkTransaction(sequence: sequence, portID: portID)
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            guard let messages = try receive(until: deadline) else {
                throw .timedOut(what, seconds: Double(timeout.components.seconds))
            }
            for message in messages {
                switch try transaction.receive(message) {
                case .needMore: continue
                case .acknowledged: return transaction.replies
                case .rejected(let error):
                    throw .kernelRejected(what, errno: error.errno, extendedMessage: error.extendedMessage)
                }
            }
        }
    }

    /// Runs `modprobe NAME` and returns nil on success, else its stderr (or why it could not run).
    static func modprobe(_ name: String) -> String? {
        var pipeFDs: [Int32] = [-1, -1]
        guard pipe(&pipeFDs) == 0 else { return "pipe: \(NBDKernelError.systemMessage(errno))" }
        // Not inherited by other children; dup2 onto 1 and 2 in the child clears the flag there.
        _ = fcntl(pipeFDs[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(pipeFDs[1], F_SETFD, FD_CLOEXEC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 2)
        let arguments = ["modprobe", name]
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid = pid_t()
        let spawned = posix_spawnp(&pid, "modprobe", &actions, nil, argv, environ)
        close(pipeFDs[1])
        defer { close(pipeFDs[0]) }
        guard spawned == 0 else { return "cannot run modprobe: \(NBDKernelError.systemMessage(spawned))" }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while output.count < 4096 {
            let n = chunk.withUnsafeMutableBytes { read(pipeFDs[0], $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            output += chunk[0..<n]
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        // WIFEXITED && WEXITSTATUS == 0 (the macros do not import).
        if status & 0x7f == 0 && (status >> 8) & 0xff == 0 { return nil }
        let text = String(decoding: output, as: UTF8.self).split(whereSeparator: \.isNewline).joined(separator: "; ")
        return text.isEmpty ? "modprobe exited with status \(status)" : text
    }
}

@available(*, unavailable)
extension NetlinkSocket: Sendable {}
