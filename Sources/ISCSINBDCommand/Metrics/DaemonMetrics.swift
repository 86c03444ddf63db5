import ISCSIBlockBackend
import ISCSIClient
import NIOConcurrencyHelpers
import NIOCore

/// The daemon's metrics, by session id and LUN. They outlive the `ISCSISession` and `KernelAttachment`
/// objects: a session that ended is logged in again with new ones, and its counters go on under the same
/// labels. Always kept (the request statistics give `-m session -P 1` its latencies); served over HTTP
/// only with `--metrics-listen` or `--metrics-socket`.
final class DaemonMetrics: Sendable {
    let hub: MetricsHub

    private struct Entry {
        var session: SessionMetrics
        var luns: [UInt16: LUNMetrics] = [:]
        /// Fed by a device attached before its labels (the /dev/nbdN name) were known.
        var pending: [UInt16: LUNRequestStatistics] = [:]
    }
    private let entries = NIOLockedValueBox<[Int: Entry]>([:])

    init(hub: MetricsHub = MetricsHub()) {
        self.hub = hub
        let entries = self.entries
        hub.add(ProcessMetrics(hub: hub) {
            entries.withLockedValue { all in
                let nbd = all.values.reduce(0) { sum, e in sum + e.luns.values.reduce(0) { $0 + $1.requests.published.snapshot.connections } }
                let iscsi = all.values.filter { $0.session.isLoggedIn }.count
                return (nbd, iscsi)
            }
        })
    }

    /// The session's metrics (made on the first login of `id`); its event handler goes in the configuration.
    func session(_ id: Int, target: String, portal: String) -> SessionMetrics {
        entries.withLockedValue { all in
            if let e = all[id] { return e.session }
            let metrics = SessionMetrics(hub: hub, target: target, portal: portal)
            hub.add(metrics)
            all[id] = Entry(session: metrics)
            return metrics
        }
    }

    /// `session` is the one logged in for `id` now.
    func loggedIn(_ id: Int, _ session: ISCSISession) {
        entries.withLockedValue { $0[id]?.session }?.follow(session)
    }

    /// What the NBD server of LUN `lun` of session `id` reports to: the LUN's statistics when it was attached
    /// before (a re-login gives the same device fresh sockets), else new ones, labelled by `attached`.
    func requests(_ id: Int, lun: UInt16) -> LUNRequestStatistics {
        entries.withLockedValue { all in
            if let existing = all[id]?.luns[lun] { return existing.requests }
            if let pending = all[id]?.pending[lun] { return pending }
            let fresh = LUNRequestStatistics()
            all[id]?.pending[lun] = fresh
            return fresh
        }
    }

    /// LUN `lun` of session `id` is attached as `device`, served from `scsi`.
    func attached(_ id: Int, lun: UInt16, device: String, scsi: SCSIBlockDevice) {
        let configuration = scsi.transport as? ISCSISession
        let made = entries.withLockedValue { all -> LUNMetrics? in
            guard var e = all[id] else { return nil }
            let metrics: LUNMetrics
            if let existing = e.luns[lun] {
                metrics = existing
            } else {
                metrics = LUNMetrics(
                    hub: hub, target: configuration?.configuration.targetName ?? "-",
                    portal: configuration?.configuration.portal.description ?? "-", lun: lun, device: device,
                    requests: e.pending.removeValue(forKey: lun) ?? LUNRequestStatistics())
                e.luns[lun] = metrics
                hub.add(metrics)
            }
            all[id] = e
            return metrics
        }
        made?.follow(scsi.commandStatistics)
    }

    /// Every LUN's published latencies and counts brought up to date (before `-m session` reports).
    func refresh() async {
        let all = entries.withLockedValue { $0.values.flatMap { $0.luns.values.map(\.requests) } }
        for requests in all { await requests.refresh() }
    }

    func lun(_ id: Int, _ lun: UInt16) -> LUNMetrics? {
        entries.withLockedValue { $0[id]?.luns[lun] }
    }

    /// The session `id` is gone (logged out, or not recovered): its metrics leave the registry.
    func forget(_ id: Int) {
        guard let e = entries.withLockedValue({ $0.removeValue(forKey: id) }) else { return }
        e.session.unregister()
        for lun in e.luns.values { lun.unregister() }
        for requests in e.pending.values { requests.stop() }
    }
}
