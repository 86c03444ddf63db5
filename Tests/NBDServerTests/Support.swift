import BlockBackend
import CLibNBD
import Foundation
import ISCSITestSupport
import Logging
import NBDProtocol
import NBDServer
import NIOCore
import NIOPosix

/// A running server on a private unix socket backed by a MemoryBlockDevice.
final class ServerFixture: @unchecked Sendable {
    // SAFETY: immutable after init; used from one test at a time.
    let group: MultiThreadedEventLoopGroup
    let device: MemoryBlockDevice
    let server: NBDServer
    let directory: URL
    let socketPath: String
    var uri: String { "nbd+unix:///?socket=\(socketPath)" }

    static let exportName = "iqn.2026-11.test:disk/lun1"

    init(
        info: BlockDeviceInfo = BlockDeviceInfo(size: 16 << 20, maxTransferLength: 1 << 20, canTrim: true, description: "memory disk"),
        latency: TimeAmount? = nil, randomLatency: Bool = false, maxInFlight: Int = 256, tcp: Bool = false,
        observers: (any NBDRequestObserverFactory)? = nil
    ) async throws {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        device = MemoryBlockDevice(info: info, eventLoop: group.next(), latency: latency, randomLatency: randomLatency)
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("nbdtest-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        socketPath = directory.appendingPathComponent("nbd.sock").path
        var logger = Logger(label: "nbd-test")
        logger.logLevel = ProcessInfo.processInfo.environment["NBD_TEST_LOG"] != nil ? .trace : .critical
        var listen: [NBDServerConfiguration.ListenAddress] = [.unix(path: socketPath)]
        if tcp { listen.append(.tcp(host: "127.0.0.1", port: 0)) }
        server = NBDServer(
            device: device,
            configuration: NBDServerConfiguration(exportName: Self.exportName, listen: listen, maxInFlightPerConnection: maxInFlight),
            group: group, logger: logger, observers: observers)
        try await server.start()
    }

    func stop() async {
        await server.shutdown()
        try? await group.shutdownGracefully()
        try? FileManager.default.removeItem(at: directory)
    }
}

struct LibNBDError: Error, CustomStringConvertible {
    var description: String
    var errno: Int32
}

/// A minimal Swift wrapper over libnbd, an independent NBD client.
final class LibNBD {
    let h: OpaquePointer

    init(socketPath: String? = nil, tcpPort: Int? = nil, structured: Bool = true, strict: Bool = true, exportName: String = "") throws {
        guard let h = nbd_create() else { throw LibNBDError(description: "nbd_create failed", errno: 0) }
        self.h = h
        nbd_set_request_structured_replies(h, structured)
        nbd_set_full_info(h, true)
        _ = nbd_set_export_name(h, exportName)
        if !strict { nbd_set_strict_mode(h, 0) }
        let rc: Int32
        if let socketPath { rc = nbd_connect_unix(h, socketPath) } else { rc = nbd_connect_tcp(h, "127.0.0.1", String(tcpPort ?? 10809)) }
        try check(Int64(rc))
    }

    deinit { nbd_close(h) }

    var lastError: LibNBDError {
        LibNBDError(description: nbd_get_error().map { String(cString: $0) } ?? "?", errno: nbd_get_errno())
    }

    @discardableResult
    func check(_ rc: Int64) throws -> Int64 {
        if rc < 0 { throw lastError }
        return rc
    }

    var size: Int64 { nbd_get_size(h) }
    func blockSize(_ kind: Int32) -> Int64 { nbd_get_block_size(h, kind) }
    func flag(_ f: (OpaquePointer?) -> Int32) -> Bool { f(h) == 1 }
    var canonicalName: String? { Self.take(nbd_get_canonical_export_name(h)) }
    var exportDescription: String? { Self.take(nbd_get_export_description(h)) }

    private static func take(_ p: UnsafeMutablePointer<CChar>?) -> String? {
        guard let p else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    func pread(offset: UInt64, count: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: count)
        try buf.withUnsafeMutableBytes { try check(Int64(nbd_pread(h, $0.baseAddress, count, offset, 0))) }
        return buf
    }

    func pwrite(_ bytes: [UInt8], offset: UInt64, fua: Bool = false) throws {
        try bytes.withUnsafeBytes { try check(Int64(nbd_pwrite(h, $0.baseAddress, bytes.count, offset, fua ? UInt32(LIBNBD_CMD_FLAG_FUA) : 0))) }
    }

    func flush() throws { try check(Int64(nbd_flush(h, 0))) }
    func trim(offset: UInt64, count: UInt64) throws { try check(Int64(nbd_trim(h, count, offset, 0))) }
    func zero(offset: UInt64, count: UInt64, flags: UInt32 = 0) throws { try check(Int64(nbd_zero(h, count, offset, flags))) }
    func shutdown() { nbd_shutdown(h, 0) }

    static var noCompletion: nbd_completion_callback { nbd_completion_callback(callback: nil, user_data: nil, free: nil) }
}

/// Random bytes, deterministic per seed.
func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    return (0..<count).map { _ in
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return UInt8(truncatingIfNeeded: state)
    }
}

/// A raw client socket speaking NBD by hand, for malformed input.
final class RawConnection {
    let fd: Int32

    init(fd: Int32) { self.fd = fd; setTimeout(seconds: 5) }

    convenience init(unixPath: String) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(unixPath.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { close(fd); throw TestPeerError("connect \(unixPath): errno \(errno)") }
        self.init(fd: fd)
    }

    deinit { close(fd) }

    func setTimeout(seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ buffer: ByteBuffer) throws {
        try send(Array(buffer.readableBytesView))
    }

    func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw TestPeerError("send failed: errno \(errno)") }
            sent += n
        }
    }

    /// Reads exactly `count` bytes; nil on EOF or timeout.
    func read(_ count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out[got...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return nil }
            got += n
        }
        return out
    }

    /// True if the peer closed the connection (EOF) within the timeout.
    func isClosedByPeer() -> Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, 0) == 0
    }

    /// Fixed newstyle handshake: flags, optional structured replies, GO on the default export.
    func handshake(structured: Bool = false) throws {
        guard let greeting = read(18) else { throw TestPeerError("no greeting") }
        guard Array(greeting[0..<16]) == Array("NBDMAGICIHAVEOPT".utf8) else { throw TestPeerError("bad greeting") }
        var out = ByteBuffer()
        out.writeInteger(NBDClientFlags([.fixedNewstyle, .noZeroes]).rawValue)
        if structured { out.writeNBDOptionRequest(NBDOptionRequest(option: .structuredReply, data: ByteBuffer())) }
        var go = ByteBuffer()
        go.writeInteger(UInt32(0))
        go.writeInteger(UInt16(0))
        out.writeNBDOptionRequest(NBDOptionRequest(option: .go, data: go))
        try send(out)
        var pendingAcks = structured ? 2 : 1
        while pendingAcks > 0 {
            let reply = try readOptionReply()
            if reply.type.isError { throw TestPeerError("option refused: \(reply)") }
            if reply.type == .ack { pendingAcks -= 1 }
        }
    }

    func readOptionReply() throws -> NBDOptionReply {
        guard let head = read(20) else { throw TestPeerError("no option reply") }
        var buffer = ByteBuffer(bytes: head)
        let length = Int(buffer.getInteger(at: 16, as: UInt32.self)!)
        if length > 0 {
            guard let body = read(length) else { throw TestPeerError("truncated option reply") }
            buffer.writeBytes(body)
        }
        guard let reply = try buffer.readNBDOptionReply() else { throw TestPeerError("undecodable option reply") }
        return reply
    }

    func request(_ header: NBDRequestHeader, payload: [UInt8] = []) throws {
        var b = ByteBuffer()
        b.writeNBDRequestHeader(header)
        b.writeBytes(payload)
        try send(b)
    }

    /// Reads a simple reply: (cookie, error); `dataLength` bytes of data follow on success.
    func readSimpleReply(dataLength: Int = 0) throws -> (cookie: UInt64, error: UInt32, data: [UInt8]) {
        guard let head = read(16) else { throw TestPeerError("no reply (connection closed or timeout)") }
        let b = ByteBuffer(bytes: head)
        guard b.getInteger(at: 0, as: UInt32.self) == NBDMagic.simpleReply else { throw TestPeerError("bad reply magic") }
        let error = b.getInteger(at: 4, as: UInt32.self)!
        let cookie = b.getInteger(at: 8, as: UInt64.self)!
        var data: [UInt8] = []
        if error == 0 && dataLength > 0 {
            guard let d = read(dataLength) else { throw TestPeerError("truncated read data") }
            data = d
        }
        return (cookie, error, data)
    }

    /// Reads one structured chunk.
    func readChunk() throws -> NBDStructuredReplyChunk {
        guard let head = read(20) else { throw TestPeerError("no chunk") }
        var b = ByteBuffer(bytes: head)
        let length = Int(b.getInteger(at: 16, as: UInt32.self)!)
        if length > 0 {
            guard let body = read(length) else { throw TestPeerError("truncated chunk") }
            b.writeBytes(body)
        }
        guard case .structured(let chunk)? = try b.readNBDReplyMessage() else { throw TestPeerError("not a structured chunk") }
        return chunk
    }
}

/// Resident set size of this process in bytes.
func residentBytes() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        let kb = line.split(separator: " ").compactMap { Int($0) }.first ?? 0
        return kb * 1024
    }
    return 0
}

/// Runs blocking client code (libnbd, raw sockets, subprocesses) on its own thread, so the cooperative
/// pool is never blocked.
func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.stackSize = 8 << 20
        thread.start()
    }
}
