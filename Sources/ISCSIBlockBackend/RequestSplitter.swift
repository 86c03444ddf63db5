/// Splits a byte range into block-aligned commands of at most `maxBlocks` logical blocks each.
/// A pure value and a lazy `Sequence`: the common one-chunk case allocates nothing.
public struct RequestSplitter: Sequence, Sendable, Hashable {
    /// One command's share of a request.
    public struct Chunk: Sendable, Hashable {
        public var lba: UInt64
        public var blocks: UInt32
        /// Offset of this chunk within the request, in bytes (where its data goes in the request buffer).
        public var byteOffset: Int
        public var byteLength: Int
    }

    public let startLBA: UInt64
    public let totalBlocks: UInt64
    public let blockSize: UInt32
    public let maxBlocks: UInt32

    /// `offset` and `length` must be multiples of `blockSize` (the NBD server checks this); `maxBlocks` ≥ 1.
    public init(offset: UInt64, length: UInt64, blockSize: UInt32, maxBlocks: UInt32) {
        precondition(blockSize > 0 && maxBlocks > 0)
        precondition(offset % UInt64(blockSize) == 0 && length % UInt64(blockSize) == 0, "unaligned request")
        self.startLBA = offset / UInt64(blockSize)
        self.totalBlocks = length / UInt64(blockSize)
        self.blockSize = blockSize
        self.maxBlocks = maxBlocks
    }

    /// Number of chunks.
    public var count: Int { Int((totalBlocks + UInt64(maxBlocks) - 1) / UInt64(maxBlocks)) }

    public struct Iterator: IteratorProtocol, Sendable {
        var splitter: RequestSplitter
        var index = 0
        public mutating func next() -> Chunk? {
            guard index < splitter.count else { return nil }
            defer { index += 1 }
            return splitter[index]
        }
    }

    public func makeIterator() -> Iterator { Iterator(splitter: self) }

    /// The chunk at `index` (0 ..< count), computed directly.
    public subscript(index: Int) -> Chunk {
        precondition(index >= 0 && index < count)
        let done = UInt64(index) * UInt64(maxBlocks)
        let n = Swift.min(UInt64(maxBlocks), totalBlocks - done)
        return Chunk(
            lba: startLBA + done, blocks: UInt32(n), byteOffset: Int(done * UInt64(blockSize)),
            byteLength: Int(n * UInt64(blockSize)))
    }
}
