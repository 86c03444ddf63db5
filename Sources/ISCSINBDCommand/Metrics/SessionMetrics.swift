import ISCSIClient
import ISCSIProtocol
import NIOConcurrencyHelpers
import NIOCore
import Prometheus

/// An iSCSI session's metrics: PDU and error counters, recoveries and the command window, read from the
/// session at scrape time; login failures, recovery durations and identity mismatches as they happen (the
/// session's `eventHandler`). Outlives the `ISCSISession` object it reads: the daemon logs in again with a
/// new one after a session ended, and `follow` points this at it.
final class SessionMetrics: MetricsSource {
    /// The opcodes exported as `iscsi_nbd_iscsi_pdus_total{opcode}` (every one RFC 7143 §11 defines).
    static let opcodes: [Opcode] = [
        .nopOut, .scsiCommand, .taskManagementRequest, .loginRequest, .textRequest, .dataOut, .logoutRequest,
        .snackRequest, .nopIn, .scsiResponse, .taskManagementResponse, .loginResponse, .textResponse, .dataIn,
        .logoutResponse, .readyToTransfer, .asyncMessage, .reject,
    ]
    /// The opcodes the initiator sends (`Mirrors.sent`, in this order) and those it receives (`received`).
    static let sentOpcodes = opcodes.filter(\.isInitiatorOpcode)
    static let receivedOpcodes = opcodes.filter { !$0.isInitiatorOpcode }
    static let states = ["LOGGED_IN", "RECOVERING", "FAILED"]

    private let hub: MetricsHub
    private let session = NIOLockedValueBox<ISCSISession?>(nil)
    private let live: Live
    private let mirrors: NIOLockedValueBox<Mirrors>

    /// Counted as events arrive (Prometheus counters are atomic): never mirrored.
    private struct Live: Sendable {
        var loginFailures: [LoginFailureReason: Counter]
        var identityMismatches: Counter
        var recoveryDuration: ValueHistogram
    }

    private struct Mirrors: @unchecked Sendable {
        var sent: [Counter]
        var received: [Counter]
        var txBytes: Counter
        var rxBytes: Counter
        var digestErrors: Counter
        var timeouts: Counter
        var recoveries: Counter
        var relogins: Counter
        var state: [Gauge]
        var queueDepth: Gauge
        var window: Gauge
        var outstanding: Gauge
    }

    private let registered: RegisteredMetrics

    init(hub: MetricsHub, target: String, portal: String) {
        let labels = [("target", target), ("portal", portal)]
        self.hub = hub
        var r = RegisteredMetrics()
        func pdu(_ direction: String, _ opcode: Opcode) -> Counter {
            r.keep(hub.counter(MetricCatalog.pdus, labels + [("direction", direction), ("opcode", MetricCatalog.labelValue(opcode.description))]))
        }
        var failures: [LoginFailureReason: Counter] = [:]
        for reason in LoginFailureReason.allCases {
            failures[reason] = r.keep(hub.counter(MetricCatalog.loginFailures, labels + [("reason", reason.rawValue)]))
        }
        live = Live(
            loginFailures: failures, identityMismatches: r.keep(hub.counter(MetricCatalog.identityMismatches, labels)),
            recoveryDuration: r.keep(hub.histogram(MetricCatalog.recoveryDuration, labels, buckets: MetricCatalog.recoveryBuckets)))
        let mirrors = Mirrors(
            sent: Self.sentOpcodes.map { pdu("tx", $0) }, received: Self.receivedOpcodes.map { pdu("rx", $0) },
            txBytes: r.keep(hub.counter(MetricCatalog.dataBytes, labels + [("direction", "tx")])),
            rxBytes: r.keep(hub.counter(MetricCatalog.dataBytes, labels + [("direction", "rx")])),
            digestErrors: r.keep(hub.counter(MetricCatalog.digestErrors, labels)),
            timeouts: r.keep(hub.counter(MetricCatalog.timeouts, labels)),
            recoveries: r.keep(hub.counter(MetricCatalog.recoveries, labels)),
            relogins: r.keep(hub.counter(MetricCatalog.reloginAttempts, labels)),
            state: Self.states.map { r.keep(hub.gauge(MetricCatalog.sessionState, labels + [("state", $0)])) },
            queueDepth: r.keep(hub.gauge(MetricCatalog.queueDepth, labels)),
            window: r.keep(hub.gauge(MetricCatalog.cmdSNWindow, labels)),
            outstanding: r.keep(hub.gauge(MetricCatalog.commandsOutstanding, labels)))
        self.mirrors = NIOLockedValueBox(mirrors)
        self.registered = r
    }

    /// For `ISCSISessionConfiguration.eventHandler`.
    var eventHandler: @Sendable (ISCSISessionEvent) -> Void {
        let live = self.live
        return { event in
            switch event {
            case .loginFailed(let reason): live.loginFailures[reason]?.increment()
            case .recovered(let seconds): live.recoveryDuration.record(seconds)
            case .identityMismatch: live.identityMismatches.increment()
            case .recoveryStarted: break
            }
        }
    }

    func follow(_ session: ISCSISession?) {
        self.session.withLockedValue { $0 = session }
    }

    /// Whether the session followed now is logged in (the process's open iSCSI sessions).
    var isLoggedIn: Bool {
        session.withLockedValue { $0?.status.state == .connected }
    }

    func gather(on loop: any EventLoop) -> EventLoopFuture<MetricsUpdate> {
        guard let session = session.withLockedValue({ $0 }) else {
            return loop.makeSucceededFuture({ self.applyState("FAILED") })
        }
        let state = Self.stateName(session.status.state)
        return session.statistics().hop(to: loop).map { stats in { self.apply(stats, state: state) } }
    }

    /// LOGGED_IN, RECOVERING (I/O waits), or FAILED (closed, or past the replacement timeout: I/O fails).
    static func stateName(_ state: SessionStatus.State) -> String {
        switch state {
        case .connected: "LOGGED_IN"
        case .recovering(expired: false): "RECOVERING"
        case .recovering(expired: true), .closed: "FAILED"
        }
    }

    private func applyState(_ name: String) {
        mirrors.withLockedValue { m in
            for (i, gauge) in m.state.enumerated() { gauge.set(Int64(Self.states[i] == name ? 1 : 0)) }
        }
    }

    private func apply(_ s: ISCSISessionStatistics, state: String) {
        applyState(state)
        mirrors.withLockedValue { m in
            for (i, opcode) in Self.sentOpcodes.enumerated() { m.sent[i].mirror(s.pdus.sent(opcode)) }
            for (i, opcode) in Self.receivedOpcodes.enumerated() { m.received[i].mirror(s.pdus.received(opcode)) }
            m.txBytes.mirror(s.pdus.txDataOctets)
            m.rxBytes.mirror(s.pdus.rxDataOctets)
            m.digestErrors.mirror(s.pdus.digestErrors)
            m.timeouts.mirror(s.pdus.timeoutErrors)
            m.recoveries.mirror(UInt64(s.recoveries))
            m.relogins.mirror(UInt64(s.reloginAttempts))
            m.queueDepth.set(Int64(s.window?.queueDepth ?? 0))
            m.window.set(Int64(s.window?.window ?? 0))
            m.outstanding.set(Int64(s.window?.outstanding ?? 0))
        }
    }

    func unregister() {
        hub.remove(self)
        registered.unregister(from: hub.registry)
    }
}
