/// Request latencies of the last minute, for the p50/p99 that `-m session -P 1` and the daemon's status
/// line show. Six slots of ten seconds, each a log-linear histogram (eight buckets per power of two: a
/// quantile is off by at most 1/16 of its value); a slot older than a minute is cleared when it is reused.
/// A value type, fed by its owner under its lock; recording is a few integer operations.
struct LatencyWindow: Sendable {
    static let slotSeconds: UInt64 = 10
    static let slots = 6
    /// Bucket index for values of up to 2^41 ns (about 37 minutes); larger ones land in the last bucket.
    static let bucketCount = (41 - 2) * 8 + 8

    private var epochs = [UInt64](repeating: .max, count: slots)
    private var counts = [UInt32](repeating: 0, count: slots * bucketCount)

    init() {}

    /// Records one latency of `nanoseconds`, ended at `now` (monotonic nanoseconds).
    mutating func record(nanoseconds: UInt64, now: UInt64) {
        let epoch = now / 1_000_000_000 / Self.slotSeconds
        let slot = Int(epoch % UInt64(Self.slots))
        if epochs[slot] != epoch {
            epochs[slot] = epoch
            let base = slot * Self.bucketCount
            for i in base..<(base + Self.bucketCount) { counts[i] = 0 }
        }
        counts[slot * Self.bucketCount + Self.bucket(nanoseconds)] &+= 1
    }

    /// The bucket of a value: values below 8 have their own; above, the power of two and three more bits.
    static func bucket(_ value: UInt64) -> Int {
        guard value >= 8 else { return Int(value) }
        let exponent = 63 - value.leadingZeroBitCount
        let mantissa = Int((value >> UInt64(exponent - 3)) & 7)
        return min((exponent - 2) * 8 + mantissa, bucketCount - 1)
    }

    /// The middle of a bucket's range, in nanoseconds.
    static func value(ofBucket index: Int) -> UInt64 {
        guard index >= 8 else { return UInt64(index) }
        let exponent = index / 8 + 2
        let mantissa = UInt64(index % 8)
        let low = (8 + mantissa) << UInt64(exponent - 3)
        return low + (UInt64(1) << UInt64(exponent - 3)) / 2
    }

    /// Requests recorded over the last minute (the slots of the last six epochs up to `now`).
    func count(now: UInt64) -> UInt64 {
        merged(now: now).reduce(0) { $0 + UInt64($1) }
    }

    /// The latency below which `fraction` (0...1) of the last minute's requests fell; nil when there were none.
    func quantile(_ fraction: Double, now: UInt64) -> UInt64? {
        Self.quantile(fraction, of: merged(now: now))
    }

    /// `quantile` of buckets merged already (several windows' `merged(now:)` added up).
    static func quantile(_ fraction: Double, of buckets: [UInt32]) -> UInt64? {
        let total = buckets.reduce(UInt64(0)) { $0 + UInt64($1) }
        guard total > 0 else { return nil }
        let rank = max(1, UInt64((Double(total) * min(max(fraction, 0), 1)).rounded(.up)))
        var seen: UInt64 = 0
        for (index, n) in buckets.enumerated() {
            seen += UInt64(n)
            if seen >= rank { return value(ofBucket: index) }
        }
        return value(ofBucket: buckets.count - 1)
    }

    /// The last minute's buckets, all slots added up.
    func merged(now: UInt64) -> [UInt32] {
        let current = now / 1_000_000_000 / Self.slotSeconds
        var sum = [UInt32](repeating: 0, count: Self.bucketCount)
        for slot in 0..<Self.slots {
            let epoch = epochs[slot]
            guard epoch != .max, epoch <= current, current - epoch < UInt64(Self.slots) else { continue }
            let base = slot * Self.bucketCount
            for i in 0..<Self.bucketCount { sum[i] &+= counts[base + i] }
        }
        return sum
    }
}
