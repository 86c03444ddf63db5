import BlockBackend
import ISCSITestSupport
import Logging
import NBDProtocol
import NIOCore
import NIOEmbedded
import Testing

@testable import NBDServer

/// The connection handler on an EmbeddedChannel: exact control over what arrives and when.
@Suite struct NBDConnectionHandlerTests {
    func makeChannel(info: BlockDeviceInfo) throws -> (EmbeddedChannel, NBDConnectionHandler, MemoryBlockDevice) {
        let loop = EmbeddedEventLoop()
        let device = MemoryBlockDevice(info: info, eventLoop: loop)
        let export = NBDServer.makeExport(info: info, name: "e", description: nil)
        let handler = NBDConnectionHandler(device: device, transmissionOnly: export, maxInFlight: 256, logger: Logger(label: "t"))
        let channel = EmbeddedChannel(handler: handler, loop: loop)
        return (channel, handler, device)
    }

    @Test func hugeWriteHeadersDoNotGrowMemory() throws {
        let (channel, handler, device) = try makeChannel(info: BlockDeviceInfo(size: 64 << 20, maxTransferLength: 32 << 20))
        let chunk = ByteBuffer(repeating: 0x5A, count: 64 * 1024)

        // A 4 GiB write header: the payload is discarded as it streams in, never buffered.
        var header = ByteBuffer()
        header.writeNBDRequestHeader(NBDRequestHeader(command: .write, cookie: 1, offset: 0, length: UInt32.max))
        try channel.writeInbound(header)
        for _ in 0..<(64 << 20) / chunk.readableBytes {
            try channel.writeInbound(chunk)
            #expect(handler.bufferedInboundCapacity <= 128 * 1024)
        }
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil, "no reply before the payload is consumed")

        #expect(device.statistics.writes == 0)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test func stalledMaximumWriteHoldsOnlyWhatArrived() throws {
        let (channel, handler, device) = try makeChannel(info: BlockDeviceInfo(size: 64 << 20, maxTransferLength: 32 << 20))
        var header = ByteBuffer()
        header.writeNBDRequestHeader(NBDRequestHeader(command: .write, cookie: 2, offset: 0, length: 32 << 20))
        try channel.writeInbound(header)
        let chunk = ByteBuffer(repeating: 0x5A, count: 64 * 1024)
        for _ in 0..<16 { try channel.writeInbound(chunk) }  // 1 MiB of 32, then stall
        #expect(handler.bufferedInboundBytes == 1 << 20)
        #expect(handler.bufferedInboundCapacity <= 4 << 20, "capacity \(handler.bufferedInboundCapacity)")
        // The rest arrives: the write executes and is answered.
        for _ in 16..<512 { try channel.writeInbound(chunk) }
        channel.embeddedEventLoop.run()
        var reply = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(try reply.readNBDReplyMessage() == .simple(cookie: 2, error: 0))
        #expect(device.statistics.writes == 1)
        #expect(device.contents(offset: (32 << 20) - 4, length: 4) == [0x5A, 0x5A, 0x5A, 0x5A])
        #expect(handler.bufferedInboundBytes == 0)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    /// WRITE requests cut anywhere by the reads (inside the header, at its end, inside the payload) are
    /// completed from the front of the next read and the rest decoded in place: contents must be byte-exact.
    @Test(arguments: [1, 13, 28, 29, 4000, 4124, 65536])
    func writesCutAcrossReadsLandByteExact(chunk: Int) throws {
        let (channel, _, device) = try makeChannel(info: BlockDeviceInfo(size: 1 << 20))
        var stream = ByteBuffer()
        var expected: [(offset: Int, bytes: [UInt8])] = []
        var offset = 0
        for (i, length) in [4096, 512, 12288, 1024, 4096, 8192, 512].enumerated() {
            let data = pattern(length, seed: UInt64(i + 1))
            stream.writeNBDRequestHeader(NBDRequestHeader(command: .write, cookie: UInt64(i), offset: UInt64(offset), length: UInt32(length)))
            stream.writeBytes(data)
            expected.append((offset, data))
            offset += length + 512
        }
        var replies = ByteBuffer()
        while stream.readableBytes > 0 {
            try channel.writeInbound(stream.readSlice(length: min(chunk, stream.readableBytes))!)
            channel.embeddedEventLoop.run()
            while var out = try channel.readOutbound(as: ByteBuffer.self) { replies.writeBuffer(&out) }
        }
        var cookies: [UInt64] = []
        while let m = try replies.readNBDReplyMessage() { if case .simple(let c, 0) = m { cookies.append(c) } }
        #expect(Set(cookies) == Set(0..<UInt64(expected.count)))
        for (i, e) in expected.enumerated() {
            #expect(device.contents(offset: UInt64(e.offset), length: e.bytes.count) == e.bytes, "write \(i) differs")
        }
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test func repliesAreCoalescedPerReadBurst() throws {
        let (channel, _, _) = try makeChannel(info: BlockDeviceInfo(size: 1 << 20))
        var requests = ByteBuffer()
        for i in 0..<10 { requests.writeNBDRequestHeader(NBDRequestHeader(command: .flush, cookie: UInt64(i), offset: 0, length: 0)) }
        try channel.writeInbound(requests)
        channel.embeddedEventLoop.run()
        // All ten payload-less replies leave as one buffer.
        var out = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(out.readableBytes == 160)
        var cookies: [UInt64] = []
        while let m = try out.readNBDReplyMessage() { if case .simple(let c, 0) = m { cookies.append(c) } }
        #expect(Set(cookies) == Set(0..<10))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test func readReplySendsDeviceBufferWithoutCopy() throws {
        let (channel, _, device) = try makeChannel(info: BlockDeviceInfo(size: 1 << 20))
        device.setContents(pattern(4096, seed: 1), at: 0)
        var request = ByteBuffer()
        request.writeNBDRequestHeader(NBDRequestHeader(command: .read, cookie: 9, offset: 0, length: 4096))
        try channel.writeInbound(request)
        channel.embeddedEventLoop.run()
        var head = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(try head.readNBDReplyMessage() == .simple(cookie: 9, error: 0))
        #expect(head.readableBytes == 0, "header alone")
        let data = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(Array(data.readableBytesView) == pattern(4096, seed: 1), "data written as its own buffer")
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    /// Online resize of a kernel device: the connection takes requests in the grown range only after
    /// `exportGrew`, and never shrinks (requests the kernel queued for the old range stay valid).
    @Test func exportGrowsOnALiveConnection() throws {
        let loop = EmbeddedEventLoop()
        let device = MemoryBlockDevice(info: BlockDeviceInfo(size: 2 << 20), eventLoop: loop)
        device.setContents(pattern(4096, seed: 3), at: 1 << 20)
        let export = NBDServer.makeExport(info: BlockDeviceInfo(size: 1 << 20), name: "e", description: nil)
        let handler = NBDConnectionHandler(device: device, transmissionOnly: export, maxInFlight: 8, logger: Logger(label: "t"))
        let channel = EmbeddedChannel(handler: handler, loop: loop)
        func readReply(cookie: UInt64) throws -> (error: UInt32, data: [UInt8]) {
            var request = ByteBuffer()
            request.writeNBDRequestHeader(NBDRequestHeader(command: .read, cookie: cookie, offset: 1 << 20, length: 4096))
            try channel.writeInbound(request)
            loop.run()
            var head = try #require(try channel.readOutbound(as: ByteBuffer.self))
            guard case .simple(let c, let error) = try head.readNBDReplyMessage() else { throw TestPeerError("not a simple reply") }
            #expect(c == cookie)
            if error != 0 { return (error, []) }
            let data = head.readableBytes > 0 ? head : try #require(try channel.readOutbound(as: ByteBuffer.self))
            return (0, Array(data.readableBytesView))
        }
        #expect(try readReply(cookie: 1).error == 22, "EINVAL past the end before the resize")
        handler.exportGrew(to: 2 << 20)
        let grown = try readReply(cookie: 2)
        #expect(grown.error == 0)
        #expect(grown.data == pattern(4096, seed: 3))
        handler.exportGrew(to: 1 << 20)
        #expect(try readReply(cookie: 3).error == 0, "a smaller size is ignored")
        _ = try channel.finish(acceptAlreadyClosed: true)
    }
}
