import BlockBackend
import ISCSITestSupport
import Logging
import NBDProtocol
import NIOCore
import NIOEmbedded
import Testing

@testable import NBDServer

/// The server-wide WRITE payload budget: a payload that does not fit is dropped as it arrives and failed with
/// NBD_ENOMEM; the connection stays usable and the budget returns to zero.
@Suite struct NBDPayloadBudgetTests {
    func makeChannel(budget: NBDPayloadBudget) throws -> (EmbeddedChannel, EmbeddedEventLoop, NBDConnectionHandler, MemoryBlockDevice) {
        let loop = EmbeddedEventLoop()
        let info = BlockDeviceInfo(size: 16 << 20, maxTransferLength: 1 << 20)
        let device = MemoryBlockDevice(info: info, eventLoop: loop)
        let export = NBDServer.makeExport(info: info, name: "e", description: nil)
        let handler = NBDConnectionHandler(
            device: device, export: export, maxInFlight: 16, maxOptionLength: 4096, payloadBudget: budget,
            logger: Logger(label: "t"))
        let channel = EmbeddedChannel(loop: loop)
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        var b = ByteBuffer()
        b.writeInteger(UInt32(3))
        b.writeNBDOptionRequest(NBDOptionRequest(option: .exportName, data: ByteBuffer()))
        try channel.writeInbound(b)
        while try channel.readOutbound(as: ByteBuffer.self) != nil {}  // greeting, export reply
        return (channel, loop, handler, device)
    }

    /// (error, cookie) of every simple reply written so far.
    func simpleReplies(_ channel: EmbeddedChannel) throws -> [(UInt32, UInt64)] {
        var all = ByteBuffer()
        while var b = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&b) }
        var out: [(UInt32, UInt64)] = []
        while let (magic, error, cookie) = all.readMultipleIntegers(as: (UInt32, UInt32, UInt64).self) {
            #expect(magic == 0x6744_6698)
            out.append((error, cookie))
        }
        return out
    }

    func writeHeader(cookie: UInt64, length: UInt32) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeNBDRequestHeader(NBDRequestHeader(command: .write, cookie: cookie, offset: 0, length: length))
        return b
    }

    @Test func payloadBeyondTheBudgetIsDroppedAndFailedWithENOMEM() throws {
        let budget = NBDPayloadBudget(limit: 256 << 10)
        let (channel, loop, handler, device) = try makeChannel(budget: budget)
        try channel.writeInbound(writeHeader(cookie: 1, length: 512 << 10))
        try channel.writeInbound(ByteBuffer(repeating: 0xAA, count: 200 << 10))
        #expect(budget.inUse == 200 << 10)
        try channel.writeInbound(ByteBuffer(repeating: 0xAA, count: 100 << 10))  // 300 KiB > 256 KiB: dropped
        #expect(budget.inUse == 0)
        #expect(handler.bufferedInboundCapacity < 128 << 10)
        try channel.writeInbound(ByteBuffer(repeating: 0xAA, count: 212 << 10))  // the rest of the payload
        loop.run()
        let replies = try simpleReplies(channel)
        #expect(replies.count == 1 && replies.first?.0 == NBDErrorCode.enomem.rawValue && replies.first?.1 == 1)
        #expect(device.statistics.writes == 0)

        // The connection is still usable: a write within the budget goes through and releases its share.
        try expectWriteGoesThrough(channel, loop, device, budget, length: 64 << 10)
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }

    /// A write of `length` bytes with cookie 2 succeeds and gives its budget back (the first device write).
    func expectWriteGoesThrough(
        _ channel: EmbeddedChannel, _ loop: EmbeddedEventLoop, _ device: MemoryBlockDevice, _ budget: NBDPayloadBudget,
        length: Int
    ) throws {
        var small = writeHeader(cookie: 2, length: UInt32(length))
        small.writeRepeatingByte(0x5B, count: length)
        try channel.writeInbound(small)
        loop.run()
        let next = try simpleReplies(channel)
        #expect(next.count == 1 && next.first?.0 == 0 && next.first?.1 == 2)
        #expect(device.statistics.writes == 1)
        #expect(budget.inUse == 0)
    }

    /// A payload that arrives whole in one read and does not fit is refused as well, after validation.
    @Test func wholePayloadBeyondTheBudgetIsFailedWithENOMEM() throws {
        let budget = NBDPayloadBudget(limit: 64 << 10)
        let (channel, loop, _, device) = try makeChannel(budget: budget)
        var write = writeHeader(cookie: 1, length: 128 << 10)
        write.writeRepeatingByte(0xAA, count: 128 << 10)
        try channel.writeInbound(write)
        loop.run()
        let replies = try simpleReplies(channel)
        #expect(replies.count == 1 && replies.first?.0 == NBDErrorCode.enomem.rawValue && replies.first?.1 == 1)
        #expect(device.statistics.writes == 0)
        #expect(budget.inUse == 0)
        try expectWriteGoesThrough(channel, loop, device, budget, length: 4096)
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }

    @Test func closingMidPayloadReleasesTheReservation() throws {
        let budget = NBDPayloadBudget(limit: 1 << 20)
        let (channel, _, _, _) = try makeChannel(budget: budget)
        try channel.writeInbound(writeHeader(cookie: 1, length: 512 << 10))
        try channel.writeInbound(ByteBuffer(repeating: 0xAA, count: 100 << 10))
        #expect(budget.inUse == 100 << 10)
        _ = try? channel.finish(acceptAlreadyClosed: true)
        #expect(budget.inUse == 0)
    }
}
