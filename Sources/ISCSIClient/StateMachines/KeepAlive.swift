import NIOCore

/// The NOP-Out ping (RFC 7143 §11.18: a NOP-Out with a valid ITT asks for a NOP-In; open-iscsi
/// noop_out_interval / noop_out_timeout). Pure: the caller says when it ticks and when anything arrived.
///
/// A ping goes out after `interval` without a received byte. Anything received after it proves the
/// connection alive, not only its NOP-In: a busy target may answer the ping late (open-iscsi #97).
/// Nothing received within `timeout` of the ping: the connection is dead.
struct KeepAlive {
    let interval: TimeAmount
    let timeout: TimeAmount
    /// When the ping now outstanding went out.
    private(set) var pingSentAt: NIODeadline?

    init(interval: TimeAmount, timeout: TimeAmount) {
        self.interval = interval
        self.timeout = timeout
    }

    /// How often to look: half the shorter of the two times.
    var tickInterval: TimeAmount { .tickInterval(interval, timeout, parts: 2) }

    enum OnTick: Equatable {
        case wait
        /// Send a NOP-Out ping now.
        case sendPing
        /// The ping went unanswered: drop the connection.
        case timedOut
    }

    /// `lastReceive`: when bytes last arrived on the connection.
    mutating func tick(now: NIODeadline, lastReceive: NIODeadline) -> OnTick {
        if let sent = pingSentAt {
            if lastReceive > sent {
                pingSentAt = nil
            } else if now - sent > timeout {
                return .timedOut
            }
            return .wait
        }
        guard now - lastReceive >= interval else { return .wait }
        pingSentAt = now
        return .sendPing
    }

    /// The NOP-In answering our ping (its ITT) arrived.
    mutating func pingAnswered() { pingSentAt = nil }
}
