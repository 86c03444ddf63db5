import BlockBackend
import Foundation
import ISCSITestSupport
import NBDProtocol
import NBDServer
import NIOCore
import Testing

/// Malformed and hostile input over raw sockets: the server answers errors where the spec says so, closes only
/// the offending connection on protocol violations, and keeps serving others.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct NBDServerRawSocketTests {
    /// A second connection completes a read: the server still serves.
    func assertServerStillServes(_ f: ServerFixture) throws {
        let other = try RawConnection(unixPath: f.socketPath)
        try other.handshake()
        try other.request(NBDRequestHeader(command: .read, cookie: 99, offset: 0, length: 512))
        let reply = try other.readSimpleReply(dataLength: 512)
        #expect(reply.cookie == 99 && reply.error == 0 && reply.data.count == 512)
    }

    @Test func badRequestMagicClosesOnlyThatConnection() async throws {
        let f = try await ServerFixture()
        try await blocking {
            let bad = try RawConnection(unixPath: f.socketPath)
            try bad.handshake()
            let keep = try RawConnection(unixPath: f.socketPath)
            try keep.handshake()
            var b = ByteBuffer()
            b.writeNBDRequestHeader(NBDRequestHeader(command: .read, cookie: 1, offset: 0, length: 512))
            b.setInteger(UInt32(0xdead_beef), at: 0)
            try bad.send(b)
            #expect(bad.isClosedByPeer())
            try keep.request(NBDRequestHeader(command: .read, cookie: 2, offset: 0, length: 512))
            #expect(try keep.readSimpleReply(dataLength: 512).error == 0)
            try assertServerStillServes(f)
        }
        await f.stop()
    }

    @Test func badOptionMagicAndBadClientFlagsClose() async throws {
        let f = try await ServerFixture()
        try await blocking {
            let a = try RawConnection(unixPath: f.socketPath)
            _ = a.read(18)
            try a.send([0, 0, 0, 0x10])  // unknown client flag
            #expect(a.isClosedByPeer())
            let b = try RawConnection(unixPath: f.socketPath)
            _ = b.read(18)
            try b.send([0, 0, 0, 3] + [UInt8](repeating: 0x41, count: 16))
            #expect(b.isClosedByPeer())
            try assertServerStillServes(f)
        }
        await f.stop()
    }

    @Test func truncatedRequestThenCloseLeavesServerServing() async throws {
        let f = try await ServerFixture()
        try await blocking {
            let t = try RawConnection(unixPath: f.socketPath)
            try t.handshake()
            var b = ByteBuffer()
            b.writeNBDRequestHeader(NBDRequestHeader(command: .write, cookie: 1, offset: 0, length: 4096))
            b.writeBytes([1, 2, 3])  // header then 3 of 4096 payload bytes
            try t.send(b)
            shutdown(t.fd, Int32(SHUT_WR))
            #expect(t.isClosedByPeer())
            let h = try RawConnection(unixPath: f.socketPath)
            try h.handshake()
            try h.send(Array(b.readableBytesView.prefix(10)))  // half a header
            shutdown(h.fd, Int32(SHUT_WR))
            #expect(h.isClosedByPeer())
            try assertServerStillServes(f)
            #expect(f.device.statistics.writes == 0)
        }
        await f.stop()
    }

    struct ErrorCase: Sendable, CustomTestStringConvertible {
        var name: String
        var header: NBDRequestHeader
        var payload: Int = 0
        var expected: NBDErrorCode
        var testDescription: String { name }
    }

    static let size: UInt64 = 16 << 20
    static let errorCases: [ErrorCase] = [
        .init(name: "unknown command", header: .init(command: NBDCommand(rawValue: 42), cookie: 1, offset: 0, length: 0), expected: .einval),
        .init(name: "unknown flag", header: .init(flags: NBDCommandFlags(rawValue: 0x100), command: .read, cookie: 1, offset: 0, length: 512), expected: .einval),
        .init(name: "offset past end", header: .init(command: .read, cookie: 1, offset: size, length: 512), expected: .einval),
        .init(name: "length overflow", header: .init(command: .read, cookie: 1, offset: UInt64.max - 511, length: 1024), expected: .einval),
        .init(name: "oversize read", header: .init(command: .read, cookie: 1, offset: 0, length: 2 << 20), expected: .einval),
        .init(name: "unaligned read", header: .init(command: .read, cookie: 1, offset: 3, length: 512), expected: .einval),
        .init(name: "write past end (payload consumed)", header: .init(command: .write, cookie: 1, offset: size, length: 4096), payload: 4096, expected: .enospc),
        .init(name: "oversize write (payload discarded)", header: .init(command: .write, cookie: 1, offset: 0, length: 3 << 20), payload: 3 << 20, expected: .einval),
        .init(name: "fast zero not advertised", header: .init(flags: .fastZero, command: .writeZeroes, cookie: 1, offset: 0, length: 512), expected: .einval),
        .init(name: "DF without structured replies", header: .init(flags: .dontFragment, command: .read, cookie: 1, offset: 0, length: 512), expected: .einval),
    ]

    @Test(arguments: errorCases)
    func errorReplyKeepsConnection(_ c: ErrorCase) async throws {
        let f = try await ServerFixture()
        try await blocking {
            let r = try RawConnection(unixPath: f.socketPath)
            try r.handshake()
            var header = c.header
            header.cookie = 0x1234_5678_9abc_def0
            try r.request(header, payload: [UInt8](repeating: 0xEE, count: c.payload))
            let reply = try r.readSimpleReply()
            #expect(reply.cookie == header.cookie)
            #expect(reply.error == c.expected.rawValue, "\(c.name): got \(reply.error)")
            // Same connection keeps working (the payload, if any, was consumed and not taken as requests).
            try r.request(NBDRequestHeader(command: .read, cookie: 7, offset: 0, length: 512))
            let next = try r.readSimpleReply(dataLength: 512)
            #expect(next.cookie == 7 && next.error == 0)
            #expect(f.device.statistics.writes == 0)
        }
        await f.stop()
    }

    @Test func writeToReadOnlyConsumesPayloadAndReturnsEPERM() async throws {
        let f = try await ServerFixture(info: BlockDeviceInfo(size: 1 << 20, readOnly: true))
        try await blocking {
            let r = try RawConnection(unixPath: f.socketPath)
            try r.handshake()
            try r.request(NBDRequestHeader(command: .write, cookie: 5, offset: 0, length: 8192), payload: [UInt8](repeating: 0x25, count: 8192))
            let reply = try r.readSimpleReply()
            #expect(reply.cookie == 5 && reply.error == NBDErrorCode.eperm.rawValue)
            try r.request(NBDRequestHeader(command: .read, cookie: 6, offset: 0, length: 512))
            #expect(try r.readSimpleReply(dataLength: 512).data == [UInt8](repeating: 0, count: 512))
        }
        await f.stop()
    }

    @Test func structuredRepliesForReadsAndErrors() async throws {
        let f = try await ServerFixture()
        f.device.setContents(pattern(4096, seed: 5), at: 8192)
        try await blocking {
            let r = try RawConnection(unixPath: f.socketPath)
            try r.handshake(structured: true)
            try r.request(NBDRequestHeader(flags: .dontFragment, command: .read, cookie: 1, offset: 8192, length: 4096))
            var chunk = try r.readChunk()
            #expect(chunk.type == .offsetData && chunk.flags == .done && chunk.cookie == 1)
            #expect(chunk.payload.readInteger(as: UInt64.self) == 8192)
            #expect(Array(chunk.payload.readableBytesView) == pattern(4096, seed: 5))
            // Error on READ: a structured error chunk with a message, never a simple reply.
            try r.request(NBDRequestHeader(command: .read, cookie: 2, offset: 1 << 40, length: 512))
            chunk = try r.readChunk()
            #expect(chunk.type == .error && chunk.flags == .done && chunk.cookie == 2)
            #expect(chunk.payload.readInteger(as: UInt32.self) == NBDErrorCode.einval.rawValue)
            // Oversized READ with structured replies: EOVERFLOW.
            try r.request(NBDRequestHeader(command: .read, cookie: 3, offset: 0, length: 4 << 20))
            chunk = try r.readChunk()
            #expect(chunk.type == .error && chunk.payload.getInteger(at: chunk.payload.readerIndex, as: UInt32.self) == 75)
            // Zero-length read: a lone NONE chunk.
            try r.request(NBDRequestHeader(command: .read, cookie: 4, offset: 0, length: 0))
            chunk = try r.readChunk()
            #expect(chunk.type == .none && chunk.flags == .done && chunk.cookie == 4)
            // Non-read success: a simple reply is allowed.
            try r.request(NBDRequestHeader(command: .flush, cookie: 5, offset: 0, length: 0))
            #expect(try r.readSimpleReply().error == 0)
        }
        await f.stop()
    }

    @Test func disconnectWaitsForInFlightThenCloses() async throws {
        let f = try await ServerFixture(latency: .milliseconds(50))
        try await blocking {
            let r = try RawConnection(unixPath: f.socketPath)
            try r.handshake()
            var b = ByteBuffer()
            for i in 0..<8 { b.writeNBDRequestHeader(NBDRequestHeader(command: .read, cookie: UInt64(i), offset: UInt64(i) * 512, length: 512)) }
            b.writeNBDRequestHeader(NBDRequestHeader(command: .disconnect, cookie: 100, offset: 0, length: 0))
            try r.send(b)
            var cookies: Set<UInt64> = []
            for _ in 0..<8 { cookies.insert(try r.readSimpleReply(dataLength: 512).cookie) }
            #expect(cookies == Set(0..<8))
            #expect(r.isClosedByPeer())
        }
        await f.stop()
    }

    @Test func backpressureBoundsInFlightAndResumes() async throws {
        let f = try await ServerFixture(maxInFlight: 8)
        f.device.pause()
        try await blocking {
            let r = try RawConnection(unixPath: f.socketPath)
            try r.handshake()
            var b = ByteBuffer()
            for i in 0..<64 { b.writeNBDRequestHeader(NBDRequestHeader(command: .read, cookie: UInt64(i), offset: 0, length: 512)) }
            try r.send(b)
            for _ in 0..<50 where f.device.statistics.inFlight < 8 { usleep(10_000) }
            usleep(100_000)
            #expect(f.device.statistics.inFlight == 8, "window must cap dispatch at 8")
            f.device.resume()
            var cookies: Set<UInt64> = []
            // Later requests are held by the device's pause until resumed again: keep resuming.
            for _ in 0..<64 {
                f.device.resume()
                cookies.insert(try r.readSimpleReply(dataLength: 512).cookie)
            }
            #expect(cookies == Set(0..<64))
            #expect(f.device.statistics.maxInFlight == 8)
        }
        await f.stop()
    }

    @Test func peerNotReadingRepliesStopsTheServerTakingRequests() async throws {
        let f = try await ServerFixture()
        try await blocking {
            let r = try RawConnection(unixPath: f.socketPath)
            try r.handshake()
            var b = ByteBuffer()
            for i in 0..<200 {
                b.writeNBDRequestHeader(NBDRequestHeader(command: .read, cookie: UInt64(i), offset: UInt64(i % 16) << 20, length: 1 << 20))
            }
            try r.send(b)
            usleep(500_000)
            // 64 MiB of reads in flight at most, plus the few taken before the socket filled up.
            let taken = f.device.statistics.reads
            #expect(taken <= 72, "server kept taking requests while the peer did not read: \(taken)")
            var cookies: Set<UInt64> = []
            for _ in 0..<200 { cookies.insert(try r.readSimpleReply(dataLength: 1 << 20).cookie) }
            #expect(cookies == Set(0..<200), "all requests answered once the peer reads")
        }
        await f.stop()
    }

    @Test func handshakeAbortExportNameAndUnknownName() async throws {
        let f = try await ServerFixture()
        try await blocking {
            // NBD_OPT_ABORT: ACK, then the server closes.
            let a = try RawConnection(unixPath: f.socketPath)
            #expect(a.read(18).map { Array($0[16...]) } == [0, 3], "FIXED_NEWSTYLE | NO_ZEROES")
            var b = ByteBuffer()
            b.writeInteger(UInt32(1))
            b.writeNBDOptionRequest(NBDOptionRequest(option: .abort, data: ByteBuffer()))
            try a.send(b)
            #expect(try a.readOptionReply() == .ack(.abort))
            #expect(a.isClosedByPeer())
            // NBD_OPT_EXPORT_NAME without NO_ZEROES: size, flags, 124 zeroes, then transmission.
            let e = try RawConnection(unixPath: f.socketPath)
            _ = e.read(18)
            b.clear()
            b.writeInteger(UInt32(1))
            b.writeNBDOptionRequest(NBDOptionRequest(option: .exportName, data: ByteBuffer(string: ServerFixture.exportName)))
            try e.send(b)
            let reply = try #require(e.read(8 + 2 + 124))
            let rb = ByteBuffer(bytes: reply)
            #expect(rb.getInteger(at: 0, as: UInt64.self) == 16 << 20)
            #expect(NBDTransmissionFlags(rawValue: rb.getInteger(at: 8, as: UInt16.self)!).contains([.hasFlags, .sendFlush, .sendTrim]))
            #expect(reply[10...].allSatisfy { $0 == 0 })
            try e.request(NBDRequestHeader(command: .read, cookie: 1, offset: 0, length: 512))
            #expect(try e.readSimpleReply(dataLength: 512).error == 0)
            // Unknown name with EXPORT_NAME: hard disconnect (no way to report an error).
            let u = try RawConnection(unixPath: f.socketPath)
            _ = u.read(18)
            b.clear()
            b.writeInteger(UInt32(3))
            b.writeNBDOptionRequest(NBDOptionRequest(option: .exportName, data: ByteBuffer(string: "nope")))
            try u.send(b)
            #expect(u.isClosedByPeer())
            try assertServerStillServes(f)
        }
        await f.stop()
    }

    @Test func shutdownDrainsInFlightRequests() async throws {
        let f = try await ServerFixture()
        f.device.pause()
        let r = try await blocking { () -> RawConnectionBox in
            let r = try RawConnection(unixPath: f.socketPath)
            try r.handshake()
            var b = ByteBuffer()
            for i in 0..<4 { b.writeNBDRequestHeader(NBDRequestHeader(command: .read, cookie: UInt64(i), offset: 0, length: 512)) }
            try r.send(b)
            for _ in 0..<100 where f.device.statistics.inFlight < 4 { usleep(10_000) }
            return RawConnectionBox(r)
        }
        #expect(f.device.statistics.inFlight == 4)
        let shutdown = Task { await f.server.shutdown() }
        try await Task.sleep(for: .milliseconds(100))
        #expect(!FileManager.default.fileExists(atPath: f.socketPath), "listener closed, socket file removed")
        f.device.resume()
        await shutdown.value
        try await blocking {
            var cookies: Set<UInt64> = []
            for _ in 0..<4 { cookies.insert(try r.connection.readSimpleReply(dataLength: 512).cookie) }
            #expect(cookies == Set(0..<4), "in-flight requests answered before close")
            #expect(r.connection.isClosedByPeer())
        }
        await f.stop()
    }

    @Test func unixSocketModeStaleFileAndInUse() async throws {
        let f = try await ServerFixture()
        var st = stat()
        #expect(lstat(f.socketPath, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        #expect(st.st_mode & S_IFMT == S_IFSOCK)
        // A second server on the same path is refused while the first listens.
        let second = NBDServer(
            device: f.device, configuration: NBDServerConfiguration(exportName: "x", listen: [.unix(path: f.socketPath)]),
            group: f.group, logger: .init(label: "x"))
        await #expect(throws: NBDServerError.self) { try await second.start() }
        try await blocking { try assertServerStillServes(f) }
        // A stale socket file (nobody listening) is replaced.
        let stalePath = f.directory.appendingPathComponent("stale.sock").path
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            let bytes = Array(stalePath.utf8)
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        close(fd)
        #expect(FileManager.default.fileExists(atPath: stalePath))
        let third = NBDServer(
            device: f.device, configuration: NBDServerConfiguration(exportName: "x", listen: [.unix(path: stalePath)]),
            group: f.group, logger: .init(label: "x"))
        try await third.start()
        try await blocking {
            let c = try RawConnection(unixPath: stalePath)
            try c.handshake()
        }
        await third.shutdown()
        #expect(!FileManager.default.fileExists(atPath: stalePath))
        // A regular file is never replaced.
        let regular = f.directory.appendingPathComponent("file").path
        FileManager.default.createFile(atPath: regular, contents: Data([1]))
        let fourth = NBDServer(
            device: f.device, configuration: NBDServerConfiguration(exportName: "x", listen: [.unix(path: regular)]),
            group: f.group, logger: .init(label: "x"))
        await #expect(throws: NBDServerError.self) { try await fourth.start() }
        #expect(FileManager.default.contents(atPath: regular) == Data([1]))
        await f.stop()
    }

    @Test func transmissionOnlyOverSocketpair() async throws {
        let f = try await ServerFixture()
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let connection = try await f.server.serveConnectedSocket(fd: fds[0], transmissionOnly: true)
        let peer = fds[1]
        // The server's end has the large send buffer (Linux reports twice the value set, capped at wmem_max).
        let wmemMax = Int((try? String(contentsOfFile: "/proc/sys/net/core/wmem_max", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 212992
        var sndbuf: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        #expect(getsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, &size) == 0)
        #expect(Int(sndbuf) == 2 * min(4 << 20, wmemMax))
        try await blocking {
            let r = RawConnection(fd: peer)
            let data = pattern(4096, seed: 11)
            try r.request(NBDRequestHeader(flags: .fua, command: .write, cookie: 1, offset: 4096, length: 4096), payload: data)
            #expect(try r.readSimpleReply().error == 0)
            try r.request(NBDRequestHeader(command: .read, cookie: 2, offset: 4096, length: 4096))
            let reply = try r.readSimpleReply(dataLength: 4096)
            #expect(reply.cookie == 2 && reply.data == data)
            try r.request(NBDRequestHeader(flags: .dontFragment, command: .read, cookie: 3, offset: 0, length: 512))
            #expect(try r.readSimpleReply().error == NBDErrorCode.einval.rawValue, "no structured replies: DF refused")
            try r.request(NBDRequestHeader(command: .disconnect, cookie: 4, offset: 0, length: 0))
            #expect(r.isClosedByPeer())
        }
        try await connection.closeFuture.get()
        #expect(f.device.contents(offset: 4096, length: 4096) == pattern(4096, seed: 11))
        await f.stop()
    }
    /// A kernel socket handed to another process (a restarting daemon) continues exactly where the first
    /// server stopped: requests it read are answered, the one a read cut short is completed from the socket,
    /// and the next request is left in the socket for the second server.
    @Test func pauseStopsAtARequestBoundaryAndAnotherServerContinues() async throws {
        let f = try await ServerFixture(latency: .milliseconds(30))
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let kept = dup(fds[0])
        let first = try await f.server.serveConnectedSocket(fd: fds[0], transmissionOnly: true)
        let peer = RawConnectionBox(RawConnection(fd: fds[1]))
        let one = pattern(4096, seed: 1), two = pattern(8192, seed: 2)
        var cut = ByteBuffer()
        cut.writeNBDRequestHeader(NBDRequestHeader(command: .write, cookie: 2, offset: 8192, length: 8192))
        cut.writeBytes(two)
        let head = cut.readSlice(length: 28 + 1000)!
        let rest = cut
        try await blocking {
            try peer.connection.request(NBDRequestHeader(command: .write, cookie: 1, offset: 0, length: 4096), payload: one)
            try peer.connection.send(head)
        }
        try await Task.sleep(for: .milliseconds(100))  // both taken by the server; the first is in flight
        let paused = first.pauseAtRequestBoundary { SocketReading.readExactly(fd: kept, count: $0, timeout: .seconds(3)) }
        try await blocking {
            usleep(200_000)
            try peer.connection.send(rest)  // the rest of the cut request...
            try peer.connection.request(NBDRequestHeader(command: .read, cookie: 3, offset: 0, length: 16384))  // ...and one more
        }
        try #require(try await paused.get())
        try await first.closeFuture.get()
        #expect(f.device.contents(offset: 0, length: 4096) == one && f.device.contents(offset: 8192, length: 8192) == two)
        // The READ went to whichever server read it first (a read the channel had already asked for may take
        // it before the pause closes); the next request is the second server's for sure.
        let second = try await f.server.serveConnectedSocket(fd: kept, transmissionOnly: true)
        let replies = try await blocking { () -> [UInt64: (error: UInt32, data: [UInt8])] in
            var seen: [UInt64: (error: UInt32, data: [UInt8])] = [:]
            try peer.connection.request(NBDRequestHeader(command: .read, cookie: 4, offset: 8192, length: 8192))
            while seen.count < 4 {
                guard let head = peer.connection.read(16) else { throw TestPeerError("reply missing") }
                let b = ByteBuffer(bytes: head)
                #expect(b.getInteger(at: 0, as: UInt32.self) == NBDMagic.simpleReply)
                let cookie = b.getInteger(at: 8, as: UInt64.self)!
                let length = [3: 16384, 4: 8192][cookie] ?? 0
                seen[cookie] = (b.getInteger(at: 4, as: UInt32.self)!, length > 0 ? peer.connection.read(length) ?? [] : [])
            }
            return seen
        }
        #expect(Set(replies.keys) == [1, 2, 3, 4] && replies.values.allSatisfy { $0.error == 0 })
        #expect(replies[3].map { Array($0.data[0..<4096]) == one && Array($0.data[8192...]) == two } == true)
        #expect(replies[4]?.data == two)
        second.close()
        await f.stop()
    }

    /// A pause that cannot complete the cut request (the peer never sends the rest) reports failure: the
    /// socket must not be reused.
    @Test func pauseFailsWhenTheRestOfARequestNeverArrives() async throws {
        let f = try await ServerFixture()
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let kept = dup(fds[0])
        defer { close(kept) }
        let first = try await f.server.serveConnectedSocket(fd: fds[0], transmissionOnly: true)
        let peer = RawConnectionBox(RawConnection(fd: fds[1]))
        var b = ByteBuffer()
        b.writeNBDRequestHeader(NBDRequestHeader(command: .write, cookie: 9, offset: 0, length: 4096))
        let header = b
        try await blocking { try peer.connection.send(header) }
        try await Task.sleep(for: .milliseconds(100))
        let paused = first.pauseAtRequestBoundary { SocketReading.readExactly(fd: kept, count: $0, timeout: .milliseconds(300)) }
        #expect(try await paused.get() == false)
        await f.stop()
    }
}

/// Carries a RawConnection across tasks in a test.
final class RawConnectionBox: @unchecked Sendable {
    // SAFETY: used by one thread at a time (the test hands it from one blocking section to the next).
    let connection: RawConnection
    init(_ connection: RawConnection) { self.connection = connection }
}
