import BlockBackend
import Foundation
import NIOCore

/// An in-memory `BlockDevice` for tests: configurable `BlockDeviceInfo`, optional artificial latency
/// (fixed or random per request, which completes requests out of order), a pause switch that holds every
/// completion until `resume()`, error injection, and counters. Thread-safe.
public final class MemoryBlockDevice: BlockDevice, @unchecked Sendable {
    // SAFETY: all mutable state (`storage`, `state`) is only touched while holding `lock`.
    private let lock = NSLock()
    private var storage: [UInt8]
    private var state = State()
    private let loop: any EventLoop
    private let _info: BlockDeviceInfo
    private let latency: TimeAmount?
    private let randomLatency: Bool
    private let advertiseLoop: Bool

    public enum Operation: Hashable, Sendable {
        case read(offset: UInt64, length: UInt32)
        case write(offset: UInt64, length: UInt32, flags: BlockWriteFlags)
        case flush
        case trim(offset: UInt64, length: UInt32)
        case writeZeroes(offset: UInt64, length: UInt32, flags: BlockWriteFlags)
    }

    public struct Statistics: Hashable, Sendable {
        public var reads = 0
        public var writes = 0
        public var flushes = 0
        public var trims = 0
        public var writeZeroes = 0
        public var fuaWrites = 0
        public var inFlight = 0
        public var maxInFlight = 0
    }

    private struct State {
        var stats = Statistics()
        var paused = false
        var held: [() -> Void] = []
        var injector: (@Sendable (Operation) -> BlockDeviceError?)?
    }

    /// - Parameters:
    ///   - latency: each request completes after this delay (`randomLatency`: a random delay up to it, so
    ///     requests complete out of order).
    ///   - advertiseEventLoop: report `eventLoop` as `preferredEventLoop`.
    public init(
        info: BlockDeviceInfo, eventLoop: any EventLoop, latency: TimeAmount? = nil, randomLatency: Bool = false,
        advertiseEventLoop: Bool = true
    ) {
        self._info = info
        self.storage = [UInt8](repeating: 0, count: Int(info.size))
        self.loop = eventLoop
        self.latency = latency
        self.randomLatency = randomLatency
        self.advertiseLoop = advertiseEventLoop
    }

    public var info: BlockDeviceInfo { _info }
    public var preferredEventLoop: (any EventLoop)? { advertiseLoop ? loop : nil }

    // MARK: - Test controls

    public var statistics: Statistics { lock.withLock { state.stats } }

    /// Copies bytes out of the device.
    public func contents(offset: UInt64 = 0, length: Int? = nil) -> [UInt8] {
        lock.withLock {
            let start = Int(offset)
            let end = length.map { start + $0 } ?? storage.count
            return Array(storage[start..<end])
        }
    }

    /// Overwrites bytes of the device directly.
    public func setContents(_ bytes: [UInt8], at offset: UInt64 = 0) {
        lock.withLock { storage.replaceSubrange(Int(offset)..<Int(offset) + bytes.count, with: bytes) }
    }

    /// Makes matching operations fail with the returned error (nil: succeed).
    public func injectErrors(_ injector: (@Sendable (Operation) -> BlockDeviceError?)?) {
        lock.withLock { state.injector = injector }
    }

    /// Holds every completion until `resume()`.
    public func pause() { lock.withLock { state.paused = true } }

    public func resume() {
        let held: [() -> Void] = lock.withLock {
            state.paused = false
            defer { state.held = [] }
            return state.held
        }
        for run in held { run() }
    }

    // MARK: - BlockDevice

    public func read(offset: UInt64, length: UInt32) -> EventLoopFuture<ByteBuffer> {
        submit(.read(offset: offset, length: length)) { [self] in
            var buffer = ByteBufferAllocator().buffer(capacity: Int(length))
            _ = storage.withUnsafeBytes { buffer.writeBytes(UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<Int(offset) + Int(length)])) }
            state.stats.reads += 1
            return buffer
        }
    }

    public func write(offset: UInt64, data: ByteBuffer, flags: BlockWriteFlags) -> EventLoopFuture<Void> {
        submit(.write(offset: offset, length: UInt32(data.readableBytes), flags: flags)) { [self] in
            data.withUnsafeReadableBytes { bytes in
                storage.withUnsafeMutableBytes { dst in
                    UnsafeMutableRawBufferPointer(rebasing: dst[Int(offset)..<Int(offset) + bytes.count]).copyMemory(from: bytes)
                }
            }
            state.stats.writes += 1
            if flags.contains(.fua) { state.stats.fuaWrites += 1 }
        }
    }

    public func flush() -> EventLoopFuture<Void> {
        submit(.flush) { [self] in state.stats.flushes += 1 }
    }

    public func trim(offset: UInt64, length: UInt32, flags: BlockWriteFlags) -> EventLoopFuture<Void> {
        submit(.trim(offset: offset, length: length)) { [self] in
            zero(offset: offset, length: length)
            state.stats.trims += 1
        }
    }

    public func writeZeroes(offset: UInt64, length: UInt32, flags: BlockWriteFlags) -> EventLoopFuture<Void> {
        submit(.writeZeroes(offset: offset, length: length, flags: flags)) { [self] in
            zero(offset: offset, length: length)
            state.stats.writeZeroes += 1
        }
    }

    // MARK: - Internals

    /// Caller holds the lock.
    private func zero(offset: UInt64, length: UInt32) {
        _ = storage.withUnsafeMutableBytes { dst in
            UnsafeMutableRawBufferPointer(rebasing: dst[Int(offset)..<Int(offset) + Int(length)]).initializeMemory(as: UInt8.self, repeating: 0)
        }
    }

    /// Runs `body` under the lock when the request completes (after latency / pause), checking that the
    /// request is in range first (the contract says callers validate; a violation here is a test failure).
    private func submit<T: Sendable>(_ operation: Operation, _ body: @escaping @Sendable () -> T) -> EventLoopFuture<T> {
        let promise = loop.makePromise(of: T.self)
        lock.withLock {
            state.stats.inFlight += 1
            state.stats.maxInFlight = max(state.stats.maxInFlight, state.stats.inFlight)
        }
        let complete: @Sendable () -> Void = { [self] in
            let result: Result<T, Error> = lock.withLock {
                state.stats.inFlight -= 1
                if let error = state.injector?(operation) { return .failure(error) }
                if let problem = checkRange(operation) { return .failure(problem) }
                return .success(body())
            }
            promise.completeWith(result)
        }
        let run: @Sendable () -> Void = { [self] in
            let hold: Bool = lock.withLock {
                if state.paused { state.held.append(complete); return true }
                return false
            }
            if !hold { complete() }
        }
        if let latency {
            let delay = randomLatency ? TimeAmount.nanoseconds(Int64.random(in: 0...max(0, latency.nanoseconds))) : latency
            loop.scheduleTask(in: delay) { run() }
        } else {
            loop.execute { run() }
        }
        return promise.futureResult
    }

    private func checkRange(_ operation: Operation) -> BlockDeviceError? {
        let (offset, length): (UInt64, UInt64)
        switch operation {
        case .read(let o, let l), .trim(let o, let l): (offset, length) = (o, UInt64(l))
        case .write(let o, let l, _), .writeZeroes(let o, let l, _): (offset, length) = (o, UInt64(l))
        case .flush: return nil
        }
        if offset + length > UInt64(storage.count) || offset % UInt64(_info.logicalBlockSize) != 0
            || length % UInt64(_info.logicalBlockSize) != 0 || length > UInt64(_info.maxTransferLength) && {
                if case .read = operation { return true }
                if case .write = operation { return true }
                return false
            }()
        {
            return BlockDeviceError(.einval, "MemoryBlockDevice: invalid request \(operation)")
        }
        return nil
    }
}
