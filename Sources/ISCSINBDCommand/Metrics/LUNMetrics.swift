import ISCSIBlockBackend
import NBDProtocol
import NBDServer
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import SCSI

/// The commands a LUN's request counters and histograms are kept for; anything else counts as "other".
enum RequestKind: Int, CaseIterable, Sendable {
    case read, write, flush, trim, writeZeroes, other

    init(_ command: NBDCommand) {
        switch command {
        case .read: self = .read
        case .write: self = .write
        case .flush: self = .flush
        case .trim: self = .trim
        case .writeZeroes: self = .writeZeroes
        default: self = .other
        }
    }

    var label: String {
        switch self {
        case .read: "read"
        case .write: "write"
        case .flush: "flush"
        case .trim: "trim"
        case .writeZeroes: "write_zeroes"
        case .other: "other"
        }
    }
}

/// A LUN's metrics: the labels, the request statistics the NBD server feeds, and the SCSI command statistics
/// of the device (replaced when the daemon opens the LUN again on a new session).
final class LUNMetrics: MetricsSource {
    let labels: [(String, String)]
    let requests: LUNRequestStatistics
    private let scsi: NIOLockedValueBox<SCSICommandStatistics?>
    private let hub: MetricsHub
    private let mirrors: NIOLockedValueBox<Mirrors>

    private struct Mirrors: @unchecked Sendable {
        var registered = RegisteredMetrics()
        var answered: [Counter] = []
        var refused: Counter
        var bytesRead: Counter
        var bytesWritten: Counter
        var inFlight: Gauge
        var connections: Gauge
        var transportFailures: Counter
        /// Made as values first appear (an opcode and status pair, a sense key, a retry cause).
        var dynamic: [String: Counter] = [:]
    }

    /// `requests`: the statistics the NBD server already feeds (kernel devices are named only once attached).
    init(hub: MetricsHub, target: String, portal: String, lun: UInt16, device: String, requests: LUNRequestStatistics) {
        let labels = [("target", target), ("portal", portal), ("lun", "\(lun)"), ("device", device)]
        self.labels = labels
        self.hub = hub
        self.scsi = NIOLockedValueBox(nil)
        var registered = RegisteredMetrics()
        let histograms = RequestKind.allCases.filter { $0 != .other }.map { kind in
            registered.keep(hub.histogram(MetricCatalog.requestDuration, labels + [("command", kind.label)],
                                          buckets: MetricCatalog.latencyBuckets))
        }
        requests.record(into: histograms)
        self.requests = requests
        var answered: [Counter] = []
        for kind in RequestKind.allCases {
            for result in ["ok", "error"] {
                answered.append(registered.keep(hub.counter(MetricCatalog.requests, labels + [("command", kind.label), ("result", result)])))
            }
        }
        mirrors = NIOLockedValueBox(Mirrors(
            registered: registered, answered: answered,
            refused: registered.keep(hub.counter(MetricCatalog.requestsRefused, labels)),
            bytesRead: registered.keep(hub.counter(MetricCatalog.readBytes, labels)),
            bytesWritten: registered.keep(hub.counter(MetricCatalog.writtenBytes, labels)),
            inFlight: registered.keep(hub.gauge(MetricCatalog.requestsInFlight, labels)),
            connections: registered.keep(hub.gauge(MetricCatalog.nbdConnections, labels)),
            transportFailures: registered.keep(hub.counter(MetricCatalog.scsiTransportFailures, labels))))
    }

    /// The device's command statistics (a new device after the daemon opened the LUN again).
    func follow(_ statistics: SCSICommandStatistics) {
        scsi.withLockedValue { $0 = statistics }
    }

    /// The device's SCSI counts (read on its session's loop); nil before the LUN was opened.
    func scsiStatistics(on loop: any EventLoop) -> EventLoopFuture<SCSICommandStatistics.Snapshot?> {
        guard let statistics = scsi.withLockedValue({ $0 }) else { return loop.makeSucceededFuture(nil) }
        return statistics.snapshot().hop(to: loop).map { $0 }
    }

    func gather(on loop: any EventLoop) -> EventLoopFuture<MetricsUpdate> {
        requests.snapshot(on: loop).and(scsiStatistics(on: loop)).map { io, scsi in { self.apply(io, scsi) } }
    }

    private func apply(_ io: LUNRequestStatistics.Snapshot, _ scsi: SCSICommandStatistics.Snapshot?) {
        let labels = self.labels
        let hub = self.hub
        mirrors.withLockedValue { m in
            for (i, counter) in m.answered.enumerated() { counter.mirror(io.answered[i]) }
            m.refused.mirror(io.refused)
            m.bytesRead.mirror(io.bytesRead)
            m.bytesWritten.mirror(io.bytesWritten)
            m.inFlight.set(Int64(io.inFlight))
            m.connections.set(Int64(io.connections))
            guard let scsi else { return }
            m.transportFailures.mirror(scsi.transportFailures)
            func dynamic(_ key: String, _ make: () -> Counter) -> Counter {
                if let c = m.dynamic[key] { return c }
                let c = m.registered.keep(make())
                m.dynamic[key] = c
                return c
            }
            for (opcode, status, count) in scsi.commandCounts {
                let o = MetricCatalog.labelValue(opcode.description)
                let s = MetricCatalog.labelValue(status?.description ?? "other")
                dynamic("c/\(o)/\(s)") { hub.counter(MetricCatalog.scsiCommands, labels + [("opcode", o), ("status", s)]) }.mirror(count)
            }
            for (key, count) in scsi.senseKeys.enumerated() where count > 0 {
                let k = MetricCatalog.labelValue(SenseKey(rawValue: UInt8(key)).description)
                dynamic("k/\(k)") { hub.counter(MetricCatalog.senseKeys, labels + [("sense_key", k)]) }.mirror(count)
            }
            for (cause, count) in scsi.retries {
                dynamic("r/\(cause.rawValue)") { hub.counter(MetricCatalog.scsiRetries, labels + [("cause", cause.rawValue)]) }.mirror(count)
            }
        }
    }

    /// Takes the LUN's metrics out of the registry.
    func unregister() {
        hub.remove(self)
        requests.record(into: nil)
        requests.stop()
        mirrors.withLockedValue { $0.registered.unregister(from: hub.registry) }
    }
}
