import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Reads on a socket descriptor the channel shares (a `dup` of it), for a pause at a request boundary:
/// the channel does not read meanwhile, so these bytes are exactly the next ones of the stream.
public enum SocketReading {
    /// The next `count` bytes of `fd` (blocking or not), or nil when they do not all arrive within
    /// `timeout` or the peer closes first. Bytes read before a failure are lost: the stream is then unusable
    /// anyway.
    public static func readExactly(fd: Int32, count: Int, timeout: Duration, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer? {
        guard count > 0 else { return allocator.buffer(capacity: 0) }
        var buffer = allocator.buffer(capacity: count)
        let deadline = ContinuousClock.now + timeout
        while buffer.readableBytes < count {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ms = Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            let ready = poll(&p, 1, ms)
            if ready < 0 {
                if errno == EINTR { continue }
                return nil
            }
            guard ready > 0 else { continue }
            let want = count - buffer.readableBytes
            var n = 0
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: want) { raw in
                n = recv(fd, raw.baseAddress, want, Int32(MSG_DONTWAIT))
                return max(n, 0)
            }
            if n == 0 { return nil }
            if n < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                return nil
            }
        }
        return buffer
    }
}
