// libFuzzer harness: the NBD connection handler (handshake, cumulation and compaction, backpressure, the write
// payload budget, stall timeout, error replies) on an EmbeddedChannel, with a device whose completions are
// deferred and failed as the input says. Invariants checked: the channel never crashes, and once the
// connection is closed and every device operation completed, no payload budget is left reserved.
// Built by scripts/fuzz/run.sh with the NBDServer sources (NBDProtocol/BlockBackend from the debug build).
import BlockBackend
import Logging
import NBDProtocol
import NIOCore
import NIOEmbedded

final class FuzzDevice: BlockDevice, @unchecked Sendable {
    // SAFETY: used on one EmbeddedEventLoop from the fuzzer's single thread.
    let info = BlockDeviceInfo(size: 1 << 24, maxTransferLength: 1 << 16)
    let loop: EmbeddedEventLoop
    var deferCompletions = false
    var pending: [(EventLoopPromise<Void>?, EventLoopPromise<ByteBuffer>?, UInt32)] = []

    init(loop: EmbeddedEventLoop) { self.loop = loop }
    var preferredEventLoop: (any EventLoop)? { loop }

    func read(offset: UInt64, length: UInt32) -> EventLoopFuture<ByteBuffer> {
        let p = loop.makePromise(of: ByteBuffer.self)
        if deferCompletions { pending.append((nil, p, length)) } else { p.succeed(ByteBuffer(repeating: 0, count: Int(length))) }
        return p.futureResult
    }
    private func void() -> EventLoopFuture<Void> {
        let p = loop.makePromise(of: Void.self)
        if deferCompletions { pending.append((p, nil, 0)) } else { p.succeed(()) }
        return p.futureResult
    }
    func write(offset: UInt64, data: ByteBuffer, flags: BlockWriteFlags) -> EventLoopFuture<Void> { void() }
    func flush() -> EventLoopFuture<Void> { void() }
    func trim(offset: UInt64, length: UInt32, flags: BlockWriteFlags) -> EventLoopFuture<Void> { void() }
    func writeZeroes(offset: UInt64, length: UInt32, flags: BlockWriteFlags) -> EventLoopFuture<Void> { void() }

    func completeAll(fail: Bool) {
        let now = pending
        pending = []
        for (v, r, length) in now {
            if fail {
                v?.fail(BlockDeviceError(.eio, "fuzz"))
                r?.fail(BlockDeviceError(.eio, "fuzz"))
            } else {
                v?.succeed(())
                r?.succeed(ByteBuffer(repeating: 0, count: Int(length)))
            }
        }
    }
}

private let quiet = Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() })

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 2 else { return 0 }
    let input = UnsafeBufferPointer(start: data, count: size)
    let chunk = Int(input[0]) * 4 + 1
    let mode = input[1]
    let loop = EmbeddedEventLoop()
    let device = FuzzDevice(loop: loop)
    device.deferCompletions = mode & 1 != 0
    let budget = mode & 2 != 0 ? NBDPayloadBudget(limit: 100_000) : nil
    let export = NBDServer.makeExport(info: device.info, name: "fuzz", description: nil)
    let handler = NBDConnectionHandler(
        device: device, export: export, maxInFlight: mode & 4 != 0 ? 2 : 64, maxInFlightBytes: mode & 8 != 0 ? 8192 : 1 << 20,
        maxOptionLength: 4096, stallTimeout: .seconds(5), payloadBudget: budget, logger: quiet)
    let channel = EmbeddedChannel(loop: loop)
    do {
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    } catch {
        return 0
    }
    var offset = 2
    var step = 0
    while offset < size && channel.isActive {
        let end = min(offset + chunk, size)
        var buffer = channel.allocator.buffer(capacity: end - offset)
        buffer.writeBytes(UnsafeBufferPointer(rebasing: input[offset..<end]))
        offset = end
        step += 1
        do { try channel.writeInbound(buffer) } catch { break }
        if step % 3 == 0 { device.completeAll(fail: mode & 16 != 0 && step % 2 == 0) }
        if mode & 32 != 0 { loop.advanceTime(by: .seconds(2)) }
        loop.run()
        while (try? channel.readOutbound(as: ByteBuffer.self)) ?? nil != nil {}
    }
    if mode & 64 != 0 { channel.pipeline.fireUserInboundEventTriggered(NBDDrainEvent()) }
    device.completeAll(fail: false)
    loop.run()
    _ = try? channel.finish(acceptAlreadyClosed: true)
    device.completeAll(fail: false)
    loop.run()
    if let budget, budget.inUse != 0 {
        fatalError("payload budget not released: \(budget.inUse) bytes still reserved")
    }
    try? loop.syncShutdownGracefully()
    return 0
}
