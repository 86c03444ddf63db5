import Foundation
@testable import ISCSIClient
import ISCSITestSupport
import Logging
import NIOCore
import NIOPosix
import Testing

@testable import ISCSINBDCommand

@Suite struct LatencyWindowTests {
    static let second: UInt64 = 1_000_000_000

    @Test func quantilesAreWithinABucketOfTheTruth() {
        var w = LatencyWindow()
        let now = 1000 * Self.second
        // 90 requests of 100 µs, 10 of 5 ms: p50 is 100 µs, p99 5 ms.
        for _ in 0..<90 { w.record(nanoseconds: 100_000, now: now) }
        for _ in 0..<10 { w.record(nanoseconds: 5_000_000, now: now) }
        let p50 = w.quantile(0.5, now: now)!
        let p99 = w.quantile(0.99, now: now)!
        #expect(abs(Double(p50) - 100_000) / 100_000 < 1.0 / 16)
        #expect(abs(Double(p99) - 5_000_000) / 5_000_000 < 1.0 / 16)
        #expect(w.count(now: now) == 100)
    }

    @Test func aMinuteLaterTheOldRequestsAreGone() {
        var w = LatencyWindow()
        let start = 5000 * Self.second
        w.record(nanoseconds: 1_000_000, now: start)
        #expect(w.count(now: start + 30 * Self.second) == 1)
        #expect(w.count(now: start + 61 * Self.second) == 0)
        #expect(w.quantile(0.5, now: start + 61 * Self.second) == nil)
        // A reused slot starts empty.
        w.record(nanoseconds: 20_000, now: start + 60 * Self.second)
        #expect(w.count(now: start + 60 * Self.second) == 1)
    }

    @Test func bucketsCoverTheRangeInOrder() {
        var previous = -1
        for exponent in 0..<45 {
            let value = UInt64(1) << UInt64(exponent)
            let bucket = LatencyWindow.bucket(value)
            #expect(bucket >= previous)
            #expect(bucket < LatencyWindow.bucketCount)
            previous = bucket
            if exponent < 40 {
                let middle = LatencyWindow.value(ofBucket: bucket)
                #expect(middle >= value && Double(middle) <= Double(value) * 1.07)
            }
        }
    }
}

@Suite struct MetricsEndpointTests {
    @Test func listenAddresses() throws {
        #expect(try MetricsEndpoint.parse(listen: ":9100") == .tcp(host: "127.0.0.1", port: 9100))
        #expect(try MetricsEndpoint.parse(listen: "0.0.0.0:9100") == .tcp(host: "0.0.0.0", port: 9100))
        #expect(try MetricsEndpoint.parse(listen: "[::1]:9100") == .tcp(host: "::1", port: 9100))
        #expect(try MetricsEndpoint.parse(listen: "127.0.0.1:0") == .tcp(host: "127.0.0.1", port: 0))
        for bad in ["127.0.0.1", "9100", ":", ":70000", "[::1", "a:b:c"] {
            #expect(throws: MetricsEndpointError.self, "\(bad)") { try MetricsEndpoint.parse(listen: bad) }
        }
    }

    @Test func adminStatsOptions() throws {
        func request(_ args: [String]) throws -> AdminRequest { try Admin.parse(args).request() }
        #expect(try request(["-m", "session", "-s"]) == .sessionStats(sid: nil))
        #expect(try request(["-m", "session", "-r", "2", "--stats"]) == .sessionStats(sid: 2))
        #expect(try request(["-m", "session", "-r", "2", "-P", "1"]) == .sessionList(printLevel: 1, sid: 2))
        #expect(throws: (any Error).self) { try request(["-m", "node", "-s"]) }
        #expect(throws: (any Error).self) { try request(["-m", "session", "-r", "0"]) }
    }
}

/// The HTTP endpoint on its own, with a hub holding one LUN's counters.
@Suite(.serialized) struct MetricsHTTPServerTests {
    func withServer(_ endpoint: MetricsEndpoint, _ body: (HTTPProbe, MetricsHub) async throws -> Void) async throws {
        let hub = MetricsHub()
        let server = try await MetricsHTTPServer.start(endpoint, hub: hub, logger: Logger(label: "test.metrics"))
        let probe: HTTPProbe
        switch endpoint {
        case .tcp: probe = HTTPProbe(.tcp(host: "127.0.0.1", port: server.channel.localAddress?.port ?? 0))
        case .unix(let path): probe = HTTPProbe(.unix(path: path))
        }
        do {
            try await body(probe, hub)
        } catch {
            await server.close()
            throw error
        }
        await server.close()
    }

    @Test func onlyGetMetricsIsAnswered() async throws {
        try await withServer(.tcp(host: "127.0.0.1", port: 0)) { probe, hub in
            let lun = LUNMetrics(hub: hub, target: "iqn.test:t", portal: "127.0.0.1:3260", lun: 1, device: "export",
                                 requests: LUNRequestStatistics())
            hub.add(lun)
            // Two loops, as the kernel's queues of one device: the counts add up.
            var loops = MultiThreadedEventLoopGroup.singleton.makeIterator()
            let (a, b) = (loops.next()!, loops.next()!)
            let first = lun.requests.observer(on: a), second = lun.requests.observer(on: b)
            try await a.submit {
                first.requestStarted()
                first.requestFinished(.read, bytes: 4096, start: 0, end: 150_000, succeeded: true)
                first.requestStarted()
            }.get()
            try await b.submit {
                second.requestStarted()
                second.requestFinished(.write, bytes: 0, start: 0, end: 30_000_000, succeeded: false)
            }.get()
            let (status, body) = try probe.request()
            #expect(status == 200)
            let samples = PrometheusSamples(body)
            #expect(samples.sum("iscsi_nbd_requests_total", ["command": "read", "result": "ok", "device": "export"]) == 1)
            #expect(samples.sum("iscsi_nbd_requests_total", ["command": "write", "result": "error"]) == 1)
            #expect(samples.sum("iscsi_nbd_read_bytes_total") == 4096)
            #expect(samples.sum("iscsi_nbd_written_bytes_total") == 0)
            #expect(samples.sum("iscsi_nbd_requests_in_flight") == 1)
            #expect(samples.sum("iscsi_nbd_request_duration_seconds_bucket", ["command": "read", "le": "0.0002"]) == 1)
            #expect(samples.sum("iscsi_nbd_request_duration_seconds_bucket", ["command": "read", "le": "0.0001"]) == 0)
            #expect(samples.sum("iscsi_nbd_request_duration_seconds_count", ["command": "write"]) == 1)
            #expect(body.contains("# HELP iscsi_nbd_requests_total "))
            #expect(body.contains("# TYPE iscsi_nbd_request_duration_seconds histogram"))

            #expect(try probe.request("GET", "/").status == 404)
            #expect(try probe.request("GET", "/metrics/x").status == 404)
            #expect(try probe.request("POST", "/metrics").status == 405)
            #expect(try probe.request("DELETE", "/metrics").status == 405)
            let head = try probe.request("HEAD", "/metrics")
            #expect(head.status == 200 && head.body.isEmpty)
            #expect(try probe.request("GET", "/metrics?name=x").status == 200)
            // Taken out of the registry, the LUN's series are gone.
            lun.unregister()
            #expect(!PrometheusSamples(try probe.request().body).has("iscsi_nbd_requests_total"))
        }
    }

    @Test func oversizedAndGarbageRequestsAreClosed() async throws {
        try await withServer(.tcp(host: "127.0.0.1", port: 0)) { probe, _ in
            let huge = Array("GET /metrics HTTP/1.1\r\nX: ".utf8) + [UInt8](repeating: UInt8(ascii: "a"), count: 100_000)
            let (response, closed) = try probe.exchange(huge, timeout: 5)
            #expect(closed)
            #expect(response.hasPrefix("HTTP/1.1 431"))
            let (garbage, garbageClosed) = try probe.exchange(Array("\u{1}\u{2}NOT HTTP\r\n\r\n".utf8), timeout: 5)
            #expect(garbageClosed, "\(garbage)")
            #expect(garbage.hasPrefix("HTTP/1.1 400") || garbage.isEmpty)
            // The server still answers after all that.
            #expect(try probe.request().status == 200)
        }
    }

    @Test func unixSocketIsPrivateAndRemovedOnClose() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mhttp-\(UUID().uuidString.prefix(8))")
        let path = dir.appendingPathComponent("metrics.sock").path
        try await withServer(.unix(path: path)) { probe, _ in
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            #expect((attributes[.posixPermissions] as? Int) == 0o600)
            #expect(try probe.request().status == 200)
        }
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test func aPortInUseIsAnErrorAtStart() async throws {
        let hub = MetricsHub()
        let first = try await MetricsHTTPServer.start(.tcp(host: "127.0.0.1", port: 0), hub: hub, logger: Logger(label: "t"))
        let port = try #require(first.channel.localAddress?.port)
        await #expect(throws: CommandFailure.self) {
            _ = try await MetricsHTTPServer.start(.tcp(host: "127.0.0.1", port: port), hub: hub, logger: Logger(label: "t"))
        }
        await first.close()
    }
}

@Suite struct SessionStatsPrintingTests {
    @Test func statsInIscsiadmShape() {
        let pdus = ISCSIPDUCounters()
        let stats = ISCSISessionStatistics(
            pdus: pdus, recoveries: 2, reloginAttempts: 3,
            lastRecovery: .init(lostAt: 0, reason: "iSCSI connection closed", durationSeconds: 2.5), window: nil)
        let rows = DaemonCore.statsRows(stats, scsi: [])
        var session = ControlSession(
            id: 4, target: "iqn.test:t", portal: "127.0.0.1:3260", tpgt: 1, state: "LOGGED_IN", initiatorName: nil,
            tsih: nil, isid: nil, luns: [], negotiated: [], timeouts: [], lastError: nil)
        session.stats = rows
        let text = SessionPrinter.renderStats([session])
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines[0] == "Stats for session [sid: 4, target: iqn.test:t, portal: 127.0.0.1,3260]")
        session.portal = "[::1]:3260"
        #expect(SessionPrinter.renderStats([session]).hasPrefix("Stats for session [sid: 4, target: iqn.test:t, portal: ::1,3260]"))
        #expect(lines[1] == "iSCSI SNMP:")
        let names = ISCSIPDUCounters().iscsiadmRows.map(\.0)
        #expect(names == [
            "txdata_octets", "rxdata_octets", "noptx_pdus", "scsicmd_pdus", "tmfcmd_pdus", "login_pdus", "text_pdus",
            "dataout_pdus", "logout_pdus", "snack_pdus", "noprx_pdus", "scsirsp_pdus", "tmfrsp_pdus", "textrsp_pdus",
            "datain_pdus", "logoutrsp_pdus", "r2t_pdus", "async_pdus", "rjt_pdus", "digest_err", "timeout_err",
        ])
        for (i, name) in names.enumerated() { #expect(lines[2 + i] == "\t\(name): 0") }
        #expect(lines[2 + names.count] == "iSCSI Extended:")
        #expect(text.contains("\trecoveries: 2\n"))
        #expect(text.contains("\trelogin_attempts: 3\n"))
        #expect(text.contains("\tlast_recovery_time: 1970-01-01 00:00:00 UTC\n"))
        #expect(text.contains("\tlast_recovery_seconds: 2.500\n"))
        #expect(text.contains("\tretries_busy: 0\n"))
    }

    @Test func healthLines() {
        let lun = ControlLUN(lun: 1, device: "/dev/nbd0", byPath: nil, size: 0, blockSize: 512, backend: nil, state: "running")
        let ok = ControlHealth(state: "LOGGED_IN", requests: 1200, p50: 85_000, p99: 1_200_000)
        #expect(SessionPrinter.healthLine(lun: lun, ok) == "LUN 1 (/dev/nbd0): LOGGED_IN, last minute: 1200 requests, p50 85 µs, p99 1.20 ms")
        let down = ControlHealth(state: "RECOVERING", since: 60, attempts: 3, lastError: "connection refused", requests: 0)
        #expect(SessionPrinter.healthLine(lun: lun, down)
            == "LUN 1 (/dev/nbd0): RECOVERING since 1970-01-01 00:01:00 UTC, attempt 3, last error: connection refused, last minute: no requests")
        var s = ControlSession(
            id: 1, target: "t", portal: "p:1", tpgt: 1, state: "LOGGED_IN", initiatorName: nil, tsih: nil, isid: nil,
            luns: [lun], negotiated: [], timeouts: [], lastError: nil)
        s.luns[0].health = ok
        #expect(SessionPrinter.render([s], level: 1).contains("\t\tLUN 1 (/dev/nbd0): LOGGED_IN, last minute: 1200 requests"))
        #expect(!SessionPrinter.render([s], level: 0).contains("LUN 1"))
        #expect(DaemonCore.statusLine([s]) == "nbd0 LOGGED_IN p50 85 µs p99 1.20 ms")
    }
}

/// dist/grafana/iscsi-nbd.json: valid JSON, and every metric its queries name is one iscsi-nbd exports.
@Suite struct GrafanaDashboardTests {
    static var path: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("dist/grafana/iscsi-nbd.json").path
    }

    @Test func dashboardNamesOnlyExportedMetrics() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.path))
        let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(json["title"] as? String != nil)
        let panels = try #require(json["panels"] as? [[String: Any]])
        var expressions: [String] = []
        for panel in panels {
            for target in panel["targets"] as? [[String: Any]] ?? [] {
                if let expr = target["expr"] as? String { expressions.append(expr) }
            }
        }
        #expect(expressions.count >= 6)
        let templating = (json["templating"] as? [String: Any])?["list"] as? [[String: Any]] ?? []
        expressions += templating.compactMap { $0["query"] as? String }
        let known = Set(MetricCatalog.all.flatMap { f in
            f.kind == .histogram ? [f.name + "_bucket", f.name + "_sum", f.name + "_count"] : [f.name]
        })
        let regex = try NSRegularExpression(pattern: "iscsi_nbd_[a-z0-9_]+")
        var named = Set<String>()
        for expr in expressions {
            for m in regex.matches(in: expr, range: NSRange(expr.startIndex..., in: expr)) {
                named.insert(String(expr[Range(m.range, in: expr)!]))
            }
        }
        #expect(!named.isEmpty)
        #expect(named.subtracting(known).isEmpty, "unknown metrics: \(named.subtracting(known).sorted())")
        // The dashboard shows what the issue asks for: IOPS, throughput, a latency heatmap, recoveries.
        let types = panels.compactMap { $0["type"] as? String }
        #expect(types.contains("heatmap"))
        #expect(named.contains("iscsi_nbd_requests_total"))
        #expect(named.contains("iscsi_nbd_read_bytes_total") && named.contains("iscsi_nbd_written_bytes_total"))
        #expect(named.contains("iscsi_nbd_request_duration_seconds_bucket"))
        #expect(named.contains("iscsi_nbd_session_recoveries_total"))
    }

    /// Every family in the catalog is documented in docs/metrics.md.
    @Test func everyMetricIsDocumented() throws {
        let docs = URL(fileURLWithPath: Self.path).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/metrics.md")
        let text = try String(contentsOf: docs, encoding: .utf8)
        for family in MetricCatalog.all { #expect(text.contains("`\(family.name)`"), "\(family.name) not in docs/metrics.md") }
        let window = ISCSICommandWindowSnapshot(queueDepth: 1, outstanding: 0, queued: 0, cmdSN: 1, expCmdSN: 1, maxCmdSN: 1, window: 1)
        let stats = ISCSISessionStatistics(pdus: ISCSIPDUCounters(), recoveries: 0, reloginAttempts: 0, lastRecovery: nil, window: window)
        let rows = DaemonCore.statsRows(stats, scsi: [])
        for row in rows.snmp + rows.extended { #expect(text.contains("`\(row[0])`"), "\(row[0]) not in docs/metrics.md") }
    }
}
