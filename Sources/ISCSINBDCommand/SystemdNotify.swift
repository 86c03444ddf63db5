#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// sd_notify(3) without libsystemd: one datagram to `$NOTIFY_SOCKET` (a path, or `@name` for the
/// abstract namespace). A no-op when not started by systemd with `Type=notify`.
enum SystemdNotify {
    @discardableResult
    static func send(_ state: String, environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        send(state, descriptors: [], environment: environment)
    }

    /// The fd store (sd_pid_notify_with_fds(3), `FDSTORE=1`): systemd keeps a duplicate of each descriptor
    /// while the unit is not stopped for good (FileDescriptorStoreMax=), across restarts and crashes of the
    /// daemon, and passes them back at the next start (LISTEN_FDS, named by FDNAME=). A daemon stopping
    /// under a device in use stores its ends of the kernel NBD sockets there, left at a request boundary,
    /// so the kernel's connections outlive the process (`KernelAttachment.handOver`).
    @discardableResult
    static func store(_ descriptors: [Int32], name: String,
                      environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        send("FDSTORE=1\nFDNAME=\(name)", descriptors: descriptors, environment: environment)
    }

    /// Drops the stored descriptors named `name` (FDSTOREREMOVE=1), when their device is detached.
    @discardableResult
    static func removeStored(name: String, environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        send("FDSTOREREMOVE=1\nFDNAME=\(name)", environment: environment)
    }

    /// Sends `state`, with `descriptors` as SCM_RIGHTS ancillary data.
    static func send(_ state: String, descriptors: [Int32], environment: [String: String]) -> Bool {
        guard var path = environment["NOTIFY_SOCKET"], !path.isEmpty else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let abstract = path.hasPrefix("@")
        if abstract { path.removeFirst() }
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count + (abstract ? 1 : 0) < capacity else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            let offset = abstract ? 1 : 0  // abstract names start with a NUL byte
            for (i, b) in bytes.enumerated() { raw[offset + i] = b }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 1 : 0))
        var message = Array(state.utf8)
        // cmsg(3): one SCM_RIGHTS header, then the descriptors; CMSG_SPACE rounds both to size_t.
        let align = MemoryLayout<Int>.size
        func aligned(_ n: Int) -> Int { (n + align - 1) & ~(align - 1) }
        let headerSize = aligned(MemoryLayout<cmsghdr>.size)
        let dataSize = descriptors.count * MemoryLayout<Int32>.size
        var control = [UInt8](repeating: 0, count: descriptors.isEmpty ? 0 : headerSize + aligned(dataSize))
        if !descriptors.isEmpty {
            control.withUnsafeMutableBytes { raw in
                var header = cmsghdr()
                header.cmsg_len = headerSize + dataSize
                header.cmsg_level = SOL_SOCKET
                header.cmsg_type = Int32(SCM_RIGHTS)
                raw.storeBytes(of: header, as: cmsghdr.self)
                for (i, d) in descriptors.enumerated() {
                    raw.storeBytes(of: d, toByteOffset: headerSize + i * MemoryLayout<Int32>.size, as: Int32.self)
                }
            }
        }
        let sent = message.withUnsafeMutableBytes { payload in
            control.withUnsafeMutableBytes { controlBytes in
                withUnsafeMutablePointer(to: &addr) { addrPointer in
                    var iov = iovec(iov_base: payload.baseAddress, iov_len: payload.count)
                    return withUnsafeMutablePointer(to: &iov) { iovPointer in
                        var header = msghdr()
                        header.msg_name = UnsafeMutableRawPointer(addrPointer)
                        header.msg_namelen = length
                        header.msg_iov = iovPointer
                        header.msg_iovlen = 1
                        header.msg_control = controlBytes.count > 0 ? controlBytes.baseAddress : nil
                        header.msg_controllen = controlBytes.count
                        return sendmsg(fd, &header, Int32(MSG_NOSIGNAL))
                    }
                }
            }
        }
        return sent == message.count
    }
}
