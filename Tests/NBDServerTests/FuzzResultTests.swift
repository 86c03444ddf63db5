import BlockBackend
import ISCSITestSupport
import Logging
import NBDProtocol
import NIOCore
import NIOEmbedded
import Testing

@testable import NBDServer

/// Regression tests for inputs found by the fuzzers (scripts/fuzz/run.sh); each names the harness and the
/// failure it found.
@Suite struct FuzzResultTests {
    /// fuzz-server, crash-fc3157e1: a WRITE whose payload was admitted to the budget but refused by validation
    /// (60000 bytes: not a multiple of the 512-byte minimum block size) never gave its share back, so the
    /// budget shrank for good with every such request.
    @Test func refusedWriteReleasesItsPayloadBudget() throws {
        let loop = EmbeddedEventLoop()
        let info = BlockDeviceInfo(size: 16 << 20, maxTransferLength: 1 << 20)
        let device = MemoryBlockDevice(info: info, eventLoop: loop)
        let export = NBDServer.makeExport(info: info, name: "e", description: nil)
        let budget = NBDPayloadBudget(limit: 100_000)
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
        for cookie in 1...3 {
            var write = ByteBuffer()
            write.writeNBDRequestHeader(NBDRequestHeader(command: .write, cookie: UInt64(cookie), offset: 0, length: 60000))
            write.writeRepeatingByte(1, count: 60000)
            try channel.writeInbound(write)
            loop.run()
            #expect(budget.inUse == 0, "after refused write \(cookie)")
        }
        // Refused writes past the end of the device and zero-length writes give their share back too.
        var past = ByteBuffer()
        past.writeNBDRequestHeader(NBDRequestHeader(command: .write, cookie: 9, offset: 16 << 20, length: 4096))
        past.writeRepeatingByte(1, count: 4096)
        try channel.writeInbound(past)
        loop.run()
        #expect(budget.inUse == 0)
        #expect(device.statistics.writes == 0)
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }
}
