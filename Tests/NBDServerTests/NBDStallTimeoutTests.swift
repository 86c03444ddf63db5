import BlockBackend
import ISCSITestSupport
import Logging
import NBDProtocol
import NIOCore
import NIOEmbedded
import Testing

@testable import NBDServer

/// Stalled clients are dropped: in the handshake, or in the middle of a request, after `stallTimeout` without
/// input; idle connections between requests are kept.
@Suite struct NBDStallTimeoutTests {
    func makeChannel() throws -> (EmbeddedChannel, EmbeddedEventLoop) {
        let loop = EmbeddedEventLoop()
        let info = BlockDeviceInfo(size: 16 << 20, maxTransferLength: 1 << 20)
        let device = MemoryBlockDevice(info: info, eventLoop: loop)
        let export = NBDServer.makeExport(info: info, name: "e", description: nil)
        let handler = NBDConnectionHandler(
            device: device, export: export, maxInFlight: 16, maxOptionLength: 4096, stallTimeout: .seconds(2),
            logger: Logger(label: "t"))
        let channel = EmbeddedChannel(loop: loop)
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return (channel, loop)
    }

    func enterTransmission(_ channel: EmbeddedChannel) throws {
        var b = ByteBuffer()
        b.writeInteger(UInt32(3))
        b.writeNBDOptionRequest(NBDOptionRequest(option: .exportName, data: ByteBuffer()))
        try channel.writeInbound(b)
        #expect(channel.isActive)
    }

    @Test func silentHandshakeIsClosed() throws {
        let (channel, loop) = try makeChannel()
        loop.advanceTime(by: .seconds(1))
        #expect(channel.isActive)
        loop.advanceTime(by: .seconds(2))
        #expect(!channel.isActive)
    }

    @Test func idleBetweenRequestsIsKept() throws {
        let (channel, loop) = try makeChannel()
        try enterTransmission(channel)
        loop.advanceTime(by: .seconds(60))
        #expect(channel.isActive)
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }

    @Test func stalledWritePayloadIsClosedButProgressKeepsItOpen() throws {
        let (channel, loop) = try makeChannel()
        try enterTransmission(channel)
        var header = ByteBuffer()
        header.writeNBDRequestHeader(NBDRequestHeader(command: .write, cookie: 1, offset: 0, length: 1 << 20))
        try channel.writeInbound(header)
        // Trickling keeps it alive...
        for _ in 0..<5 {
            loop.advanceTime(by: .seconds(1))
            try channel.writeInbound(ByteBuffer(repeating: 1, count: 4096))
        }
        #expect(channel.isActive)
        // ...silence does not.
        loop.advanceTime(by: .seconds(3))
        #expect(!channel.isActive)
    }

    @Test func partialHeaderIsClosed() throws {
        let (channel, loop) = try makeChannel()
        try enterTransmission(channel)
        try channel.writeInbound(ByteBuffer(bytes: [0x25, 0x60]))
        loop.advanceTime(by: .seconds(3))
        #expect(!channel.isActive)
    }
}
