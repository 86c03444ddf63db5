import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@testable import ISCSINBDCommand

/// sd_notify without libsystemd, checked from the receiving end: a datagram socket standing in for
/// systemd's notification socket reads what the daemon sends, descriptors included (SCM_RIGHTS).
@Suite struct SystemdNotifyTests {
    /// A bound datagram socket and the environment that points NOTIFY_SOCKET at it.
    func listener() throws -> (fd: Int32, environment: [String: String], path: String) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("notify-\(UUID().uuidString.prefix(8)).sock").path
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        return (fd, ["NOTIFY_SOCKET": path], path)
    }

    /// Receives one datagram: its text and the descriptors that came with it.
    func receive(_ fd: Int32) -> (text: String, descriptors: [Int32]) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var space = [UInt8](repeating: 0, count: 256)
        var controlLength = 0
        let count = buffer.withUnsafeMutableBytes { payload in
            space.withUnsafeMutableBytes { controlBytes in
                var iov = iovec(iov_base: payload.baseAddress, iov_len: payload.count)
                return withUnsafeMutablePointer(to: &iov) { iovPointer in
                    var header = msghdr()
                    header.msg_iov = iovPointer
                    header.msg_iovlen = 1
                    header.msg_control = controlBytes.baseAddress
                    header.msg_controllen = controlBytes.count
                    let n = recvmsg(fd, &header, 0)
                    controlLength = header.msg_controllen
                    return n
                }
            }
        }
        let control = Array(space.prefix(controlLength))
        var descriptors: [Int32] = []
        if control.count >= MemoryLayout<cmsghdr>.size {
            control.withUnsafeBytes { raw in
                let header = raw.load(as: cmsghdr.self)
                let start = (MemoryLayout<cmsghdr>.size + 7) & ~7
                let n = (header.cmsg_len - start) / MemoryLayout<Int32>.size
                if header.cmsg_level == SOL_SOCKET, header.cmsg_type == Int32(SCM_RIGHTS) {
                    descriptors = (0..<n).map { raw.load(fromByteOffset: start + $0 * 4, as: Int32.self) }
                }
            }
        }
        return (String(decoding: buffer.prefix(max(0, count)), as: UTF8.self), descriptors)
    }

    @Test func plainStates() throws {
        let (fd, env, path) = try listener()
        defer { close(fd); unlink(path) }
        #expect(SystemdNotify.send("READY=1\nSTATUS=ready", environment: env))
        let got = receive(fd)
        #expect(got.text == "READY=1\nSTATUS=ready" && got.descriptors.isEmpty)
        #expect(!SystemdNotify.send("READY=1", environment: [:]), "no NOTIFY_SOCKET: nothing sent")
    }

    /// FDSTORE=1 with FDNAME=, and the descriptors really cross: the received ones name the same sockets.
    @Test func descriptorsGoToTheStore() throws {
        let (fd, env, path) = try listener()
        defer { close(fd); unlink(path) }
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        defer { close(pair[0]); close(pair[1]) }
        #expect(SystemdNotify.store([pair[0]], name: "nbd3.0", environment: env))
        let got = receive(fd)
        #expect(got.text == "FDSTORE=1\nFDNAME=nbd3.0")
        #expect(got.descriptors.count == 1)
        guard let passed = got.descriptors.first else { return }
        defer { close(passed) }
        var a = stat(), b = stat()
        fstat(pair[0], &a)
        fstat(passed, &b)
        #expect(a.st_ino == b.st_ino && passed != pair[0], "a duplicate of the same socket")
        // Through the duplicate the peer is still reachable: the kernel's connection would outlive us.
        #expect(write(passed, "x", 1) == 1)
        var byte: UInt8 = 0
        #expect(read(pair[1], &byte, 1) == 1 && byte == UInt8(ascii: "x"))
        #expect(SystemdNotify.removeStored(name: "nbd3.0", environment: env))
        #expect(receive(fd).text == "FDSTOREREMOVE=1\nFDNAME=nbd3.0")
    }
}
