import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Prometheus

/// Something whose counters are read when `/metrics` is scraped rather than updated on every I/O: it
/// gathers its numbers (on whatever loop they live) and returns what to write into its Prometheus metrics.
protocol MetricsSource: AnyObject, Sendable {
    func gather(on loop: any EventLoop) -> EventLoopFuture<MetricsUpdate>
}

/// Writes gathered numbers into Prometheus metrics; runs under the hub's lock, right before the emission.
typealias MetricsUpdate = @Sendable () -> Void

/// The process's metrics: one swift-prometheus registry, and the sources read at each scrape. Counters kept
/// elsewhere (the connection's PDU counts, a LUN's request counts) are mirrored into Prometheus counters
/// under one lock at scrape time, so the I/O path pays for no Prometheus call but the latency histograms.
final class MetricsHub: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let sources = NIOLockedValueBox<[ObjectIdentifier: any MetricsSource]>([:])
    /// Held while the mirrors are written and the text is emitted: two scrapes never interleave.
    private let emitLock = NIOLock()
    /// Scrapers connected to the HTTP endpoint now (`iscsi_nbd_open_connections{kind="metrics"}`).
    let scrapers = NIOLockedValueBox(0)

    init() {}

    func add(_ source: any MetricsSource) {
        sources.withLockedValue { $0[ObjectIdentifier(source)] = source }
    }

    func remove(_ source: any MetricsSource) {
        sources.withLockedValue { _ = $0.removeValue(forKey: ObjectIdentifier(source)) }
    }

    /// Gathers every source, mirrors, and returns the text exposition format.
    func scrape(on loop: any EventLoop) -> EventLoopFuture<[UInt8]> {
        let list = sources.withLockedValue { Array($0.values) }
        let gathered = list.map { $0.gather(on: loop) }
        return EventLoopFuture.whenAllComplete(gathered, on: loop).map { results in
            self.emitLock.withLock {
                for case .success(let update) in results { update() }
                return self.registry.emitToBuffer()
            }
        }
    }

    // MARK: - Making metrics from the catalog

    func counter(_ family: MetricCatalog.Family, _ labels: [(String, String)]) -> Counter {
        precondition(family.kind == .counter && family.labels == labels.map(\.0), "\(family.name): labels or kind")
        return registry.makeCounter(descriptor: family.descriptor, labels: labels)
    }

    func gauge(_ family: MetricCatalog.Family, _ labels: [(String, String)]) -> Gauge {
        precondition(family.kind == .gauge && family.labels == labels.map(\.0), "\(family.name): labels or kind")
        return registry.makeGauge(descriptor: family.descriptor, labels: labels)
    }

    func histogram(_ family: MetricCatalog.Family, _ labels: [(String, String)], buckets: [Double]) -> ValueHistogram {
        precondition(family.kind == .histogram && family.labels == labels.map(\.0), "\(family.name): labels or kind")
        return registry.makeValueHistogram(descriptor: family.descriptor, labels: labels, buckets: buckets)
    }
}

extension Counter {
    /// Sets a mirrored counter to `value` (only under the hub's emit lock: nobody sees the reset).
    func mirror(_ value: UInt64) {
        reset()
        increment(by: Int64(clamping: value))
    }
}

/// The metrics a source made, to be taken out of the registry when it goes (a LUN detached, a session gone).
struct RegisteredMetrics: Sendable {
    private(set) var counters: [Counter] = []
    private(set) var gauges: [Gauge] = []
    private(set) var histograms: [ValueHistogram] = []

    mutating func keep(_ c: Counter) -> Counter { counters.append(c); return c }
    mutating func keep(_ g: Gauge) -> Gauge { gauges.append(g); return g }
    mutating func keep(_ h: ValueHistogram) -> ValueHistogram { histograms.append(h); return h }

    func unregister(from registry: PrometheusCollectorRegistry) {
        for c in counters { registry.unregisterCounter(c) }
        for g in gauges { registry.unregisterGauge(g) }
        for h in histograms { registry.unregisterValueHistogram(h) }
    }
}

/// Process-wide numbers: resident memory, open descriptors, and open connections of each kind.
final class ProcessMetrics: MetricsSource {
    private let rss: Gauge
    private let fds: Gauge
    private let connections: [String: Gauge]
    private let hub: MetricsHub
    /// Open NBD connections and logged-in sessions, counted by whoever holds them.
    let countConnections: @Sendable () -> (nbd: Int, iscsi: Int)

    init(hub: MetricsHub, countConnections: @escaping @Sendable () -> (nbd: Int, iscsi: Int)) {
        self.hub = hub
        self.countConnections = countConnections
        rss = hub.gauge(MetricCatalog.residentMemory, [])
        fds = hub.gauge(MetricCatalog.openFDs, [])
        var byKind: [String: Gauge] = [:]
        for kind in ["nbd", "iscsi", "metrics"] { byKind[kind] = hub.gauge(MetricCatalog.openConnections, [("kind", kind)]) }
        connections = byKind
    }

    func gather(on loop: any EventLoop) -> EventLoopFuture<MetricsUpdate> {
        let resident = Self.residentBytes()
        let descriptors = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
        let (nbd, iscsi) = countConnections()
        let scrapers = hub.scrapers.withLockedValue { $0 }
        let (rss, fds, connections) = (self.rss, self.fds, self.connections)
        return loop.makeSucceededFuture({
            rss.set(Int64(resident))
            fds.set(Int64(descriptors))
            connections["nbd"]?.set(Int64(nbd))
            connections["iscsi"]?.set(Int64(iscsi))
            connections["metrics"]?.set(Int64(scrapers))
        })
    }

    /// /proc/self/statm's second field (resident pages) times the page size.
    static func residentBytes() -> UInt64 {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = UInt64(fields[1]) else { return 0 }
        return pages * UInt64(sysconf(Int32(_SC_PAGESIZE)))
    }
}
