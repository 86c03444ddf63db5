import NIOCore

/// How often and how fast failed commands are re-issued. A pure value.
///
/// Defaults: unit attentions are re-issued at once, up to 10 times in a row (several may be queued after
/// a reset: 29/00, then 2A/09, then 3F/0E...); BUSY / TASK SET FULL / becoming-ready wait 10 ms, doubling
/// each time up to 1 s, for at most 8 retries (about 2.3 s in all); ABORTED COMMAND is re-issued after
/// the same delays, at most 5 times.
public struct RetryPolicy: Sendable, Hashable {
    public var maxUnitAttentionRetries: Int
    public var maxBusyRetries: Int
    public var maxAbortedRetries: Int
    public var initialDelay: TimeAmount
    public var maxDelay: TimeAmount

    public init(
        maxUnitAttentionRetries: Int = 10, maxBusyRetries: Int = 8, maxAbortedRetries: Int = 5,
        initialDelay: TimeAmount = .milliseconds(10), maxDelay: TimeAmount = .seconds(1)
    ) {
        self.maxUnitAttentionRetries = maxUnitAttentionRetries
        self.maxBusyRetries = maxBusyRetries
        self.maxAbortedRetries = maxAbortedRetries
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
    }

    public static let `default` = RetryPolicy()
    /// No retries at all.
    public static let none = RetryPolicy(maxUnitAttentionRetries: 0, maxBusyRetries: 0, maxAbortedRetries: 0)

    /// The delay before retry number `n` (0-based) of a delayed kind: initialDelay × 2ⁿ, capped at maxDelay.
    public func backoff(retry n: Int) -> TimeAmount {
        var d = initialDelay.nanoseconds
        for _ in 0..<min(max(n, 0), 62) {
            if d >= maxDelay.nanoseconds / 2 { return maxDelay }
            d *= 2
        }
        return .nanoseconds(min(d, maxDelay.nanoseconds))
    }
}

/// Retries made so far for one command. `next` says whether to retry and after what delay.
public struct RetryState: Sendable, Hashable {
    public private(set) var unitAttentionRetries = 0
    public private(set) var busyRetries = 0
    public private(set) var abortedRetries = 0

    public init() {}

    public var totalRetries: Int { unitAttentionRetries + busyRetries + abortedRetries }

    /// Records a retry for `reason` and returns its delay, or nil when the policy says to give up.
    public mutating func next(_ reason: RetryReason, policy: RetryPolicy) -> TimeAmount? {
        switch reason {
        case .unitAttention:
            guard unitAttentionRetries < policy.maxUnitAttentionRetries else { return nil }
            unitAttentionRetries += 1
            return .zero
        case .busy:
            guard busyRetries < policy.maxBusyRetries else { return nil }
            defer { busyRetries += 1 }
            return policy.backoff(retry: busyRetries)
        case .aborted:
            guard abortedRetries < policy.maxAbortedRetries else { return nil }
            defer { abortedRetries += 1 }
            return policy.backoff(retry: abortedRetries)
        }
    }
}
