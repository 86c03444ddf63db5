import ArgumentParser
import ISCSIClient
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// `--metrics-listen [HOST]:PORT` and `--metrics-socket PATH` (serve, attach, daemon).
struct MetricsOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Serve Prometheus metrics at http://HOST:PORT/metrics (HOST defaults to 127.0.0.1; see docs/metrics.md).",
        valueName: "[HOST]:PORT"))
    var metricsListen: String?

    @Option(name: .long, help: ArgumentHelp(
        "Serve Prometheus metrics over HTTP on this unix socket (mode 0600), at /metrics.", valueName: "PATH"))
    var metricsSocket: String?

    func validate() throws { _ = try endpoints() }

    func endpoints() throws -> [MetricsEndpoint] {
        var out: [MetricsEndpoint] = []
        if let metricsListen {
            do { out.append(try MetricsEndpoint.parse(listen: metricsListen)) } catch { throw ValidationError(error.description) }
        }
        if let metricsSocket {
            guard !metricsSocket.isEmpty, metricsSocket.utf8.count < 108 else {
                throw ValidationError("--metrics-socket: a path of 1 to 107 bytes")
            }
            out.append(.unix(path: metricsSocket))
        }
        return out
    }
}

/// The metrics of a command that serves one LUN (`serve`, `attach`): the endpoints, bound before anything
/// logs in; the session's metrics; and the LUN's once it is open. Nil without `--metrics-*`: then no clock is
/// read and nothing is counted on the I/O path.
final class CommandMetrics: Sendable {
    let hub: MetricsHub
    let session: SessionMetrics
    /// Fed by the NBD server from the first request; labelled once the LUN is served (`serving`).
    let requests: LUNRequestStatistics
    private let servers: [MetricsHTTPServer]

    private init(hub: MetricsHub, session: SessionMetrics, servers: [MetricsHTTPServer]) {
        self.requests = LUNRequestStatistics()
        self.hub = hub
        self.session = session
        self.servers = servers
        hub.add(session)
        let requests = self.requests
        hub.add(ProcessMetrics(hub: hub) {
            (requests.published.snapshot.connections, session.isLoggedIn ? 1 : 0)
        })
    }

    /// Binds every endpoint (a port in use is an error now, before the login) and starts counting.
    static func start(
        _ endpoints: [MetricsEndpoint], configuration: ISCSISessionConfiguration, logger: Logger
    ) async throws -> CommandMetrics? {
        guard !endpoints.isEmpty else { return nil }
        let hub = MetricsHub()
        let servers = try await MetricsHTTPServer.startAll(endpoints, hub: hub, logger: logger)
        return CommandMetrics(
            hub: hub, session: SessionMetrics(hub: hub, target: configuration.targetName ?? "-", portal: configuration.portal.description),
            servers: servers)
    }

    /// The session reports login failures, recoveries and identity mismatches as they happen.
    func instrument(_ configuration: inout ISCSISessionConfiguration) {
        configuration.eventHandler = session.eventHandler
    }

    /// The LUN is open on its session and served as `device` (the export name, or /dev/nbdN).
    func serving(_ opened: OpenedLUN, device: String) {
        session.follow(opened.session)
        let configuration = opened.session.configuration
        let lun = LUNMetrics(
            hub: hub, target: configuration.targetName ?? "-", portal: configuration.portal.description,
            lun: opened.scsi.lun.number ?? 0, device: device, requests: requests)
        lun.follow(opened.scsi.commandStatistics)
        hub.add(lun)
    }

    /// The endpoints as services: listed first, so the group closes them last.
    var services: [(service: any Service, name: String)] {
        servers.map { (MetricsService(server: $0), "metrics") }
    }
}
