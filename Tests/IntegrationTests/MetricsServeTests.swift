import Foundation
import ISCSITestSupport
import Testing

@testable import ISCSINBDCommand

/// `serve --metrics-listen` against a real tgtd, driven by fio: the request counters equal fio's completed
/// I/O counts, the byte counters fio's bytes, the histograms' counts the request counts; a tgtd restart during
/// the run is exactly one recovery; a scrape taken under load passes `promtool check metrics` and Python's
/// prometheus_client parser reads every family; scrapers that misbehave do not disturb the I/O.
@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm", "fio", "promtool")))
struct MetricsServeTests {
    static let iqn = "iqn.2026-11.org.iscsi-nbd.test:metrics"

    /// serve on a unix socket with metrics on 127.0.0.1, port picked by the kernel (read from the log).
    func serve(_ tgt: KillableTGTD) throws -> (ISCSINBDProcess, String, HTTPProbe) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("msock-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let sock = dir.appendingPathComponent("nbd.sock").path
        let p = try ISCSINBDProcess([
            "serve", "iscsi://\(tgt.portal)/\(Self.iqn)/1", "--socket", sock, "--metrics-listen", "127.0.0.1:0",
            "--replacement-timeout", "60", "--log-level", "info",
        ])
        try p.waitForSocket(sock)
        guard let line = p.output.split(separator: "\n").first(where: { $0.contains("metrics at 127.0.0.1:") }),
              let port = line.split(separator: "127.0.0.1:").last?.split(separator: "/").first.flatMap({ Int($0) })
        else { throw TestPeerError("no metrics address in the log: \(p.output)") }
        return (p, sock, HTTPProbe(.tcp(host: "127.0.0.1", port: port)))
    }

    func scrape(_ probe: HTTPProbe) throws -> String {
        let (status, body) = try probe.request()
        guard status == 200 else { throw TestPeerError("scrape: HTTP \(status): \(body)") }
        return body
    }

    /// promtool's lint of a scrape (exit 0: no problem), and the family names prometheus_client reads.
    func checkFormat(_ text: String, in dir: URL) throws -> Set<String> {
        let file = dir.appendingPathComponent("scrape.txt")
        try Data(text.utf8).write(to: file)
        let promtool = try run("/bin/sh", ["-c", "promtool check metrics < '\(file.path)'"], allowFailure: true)
        #expect(promtool.status == 0, "promtool: \(promtool.stdout)\(promtool.stderr)")
        let script = """
            import sys
            from prometheus_client.parser import text_string_to_metric_families
            for f in text_string_to_metric_families(open(sys.argv[1]).read()):
                print(f.name, f.type, len(f.samples))
            """
        let python = try run("/usr/bin/python3", ["-c", script, file.path], allowFailure: true)
        #expect(python.status == 0, "prometheus_client: \(python.stderr)")
        var families = Set<String>()
        for line in python.stdout.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 3 else { continue }
            // prometheus_client names a counter family without its _total.
            families.insert(parts[1] == "counter" ? "\(parts[0])_total" : String(parts[0]))
        }
        return families
    }

    @Test(.timeLimit(.minutes(4))) func fioCountsEqualTheMetricsAcrossATargetRestart() throws {
        let tgt = try KillableTGTD()
        defer { tgt.stop() }
        let backing = try tgt.makeBackingFile(name: "lun1.img", size: 64 << 20)
        try tgt.configure(iqn: Self.iqn, backingFile: backing, serial: "METRICS01")
        let (server, sock, probe) = try serve(tgt)
        defer { _ = try? server.terminate() }

        // Misbehaving scrapers during the run: one connects and never sends, one sends an endless header.
        let idle = try probe.connect()
        defer { close(idle) }
        let huge = Array("GET /metrics HTTP/1.1\r\nX-Pad: ".utf8) + [UInt8](repeating: UInt8(ascii: "a"), count: 64 << 10)

        let size = 16 << 20
        let fio = Process()
        fio.executableURL = URL(fileURLWithPath: findExecutable("fio") ?? "fio")
        fio.arguments = [
            "--name=metrics", "--ioengine=nbd", "--uri=nbd+unix:///?socket=\(sock)", "--rw=randrw", "--rwmixread=50",
            "--bs=4k", "--iodepth=8", "--size=\(size)", "--rate_iops=500", "--output-format=json",
        ]
        let out = Pipe()
        fio.standardOutput = out
        fio.standardError = FileHandle.nullDevice
        try fio.run()
        let collected = LockedBox<Data>(Data())
        let reader = Thread { collected.set(out.fileHandleForReading.readDataToEndOfFile()) }
        reader.start()

        // One target restart in the middle of the run; scrapes every 200 ms meanwhile.
        var underLoad = ""
        var restarted = false
        let started = Date()
        while fio.isRunning {
            underLoad = (try? scrape(probe)) ?? underLoad
            if !restarted, Date().timeIntervalSince(started) > 1 {
                tgt.kill9()
                usleep(300_000)
                try tgt.launch()
                try tgt.configure(iqn: Self.iqn, backingFile: backing, serial: "METRICS01")
                restarted = true
                let (hugeResponse, hugeClosed) = try probe.exchange(huge, timeout: 5)
                #expect(hugeClosed && hugeResponse.hasPrefix("HTTP/1.1 431"), "\(hugeResponse.prefix(200))")
            }
            usleep(200_000)
        }
        fio.waitUntilExit()
        while !collected.isSet { usleep(10_000) }
        #expect(fio.terminationStatus == 0)
        #expect(restarted, "fio finished before the restart")
        let stdout = String(decoding: collected.value, as: UTF8.self)
        let json = stdout.firstIndex(of: "{").map { String(stdout[$0...]) } ?? stdout
        let job = try #require(((try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["jobs"] as? [[String: Any]])?.first)
        let read = try #require(job["read"] as? [String: Any])
        let write = try #require(job["write"] as? [String: Any])
        let readIOs = try #require(read["total_ios"] as? Int)
        let writeIOs = try #require(write["total_ios"] as? Int)
        #expect(readIOs + writeIOs > 1000)
        #expect(job["error"] as? Int == 0)

        for _ in 0..<50 where !server.output.contains("iSCSI session recovered") { usleep(100_000) }
        let final = PrometheusSamples(try scrape(probe))
        func count(_ command: String, _ result: String) -> Double {
            final.sum("iscsi_nbd_requests_total", ["command": command, "result": result])
        }
        #expect(count("read", "ok") == Double(readIOs))
        #expect(count("write", "ok") == Double(writeIOs))
        #expect(count("read", "error") + count("write", "error") == 0)
        #expect(final.sum("iscsi_nbd_read_bytes_total") == Double(read["io_bytes"] as? Int ?? -1))
        #expect(final.sum("iscsi_nbd_written_bytes_total") == Double(write["io_bytes"] as? Int ?? -1))
        #expect(final.sum("iscsi_nbd_request_duration_seconds_count", ["command": "read"]) == Double(readIOs))
        #expect(final.sum("iscsi_nbd_request_duration_seconds_count", ["command": "write"]) == Double(writeIOs))
        #expect(final.sum("iscsi_nbd_request_duration_seconds_bucket", ["command": "read", "le": "+Inf"]) == Double(readIOs))
        #expect(final.sum("iscsi_nbd_requests_in_flight") == 0)
        #expect(final.sum("iscsi_nbd_session_recoveries_total") == 1, "\(server.output)")
        #expect(final.sum("iscsi_nbd_session_recovery_duration_seconds_count") == 1)
        #expect(final.sum("iscsi_nbd_session_state", ["state": "LOGGED_IN"]) == 1)
        #expect(final.sum("iscsi_nbd_scsi_commands_total", ["opcode": "write_10", "status": "good"]) >= Double(writeIOs))
        #expect(final.sum("iscsi_nbd_iscsi_pdus_total", ["direction": "tx", "opcode": "scsi_command"]) >= Double(readIOs + writeIOs))
        #expect(final.sum("iscsi_nbd_process_resident_memory_bytes") > 0)

        // The idle scraper was closed by the server's idle timeout, not by the I/O.
        let (_, idleClosed) = HTTPProbe.readUntilClosed(idle, timeout: 15)
        #expect(idleClosed)

        let families = try checkFormat(underLoad, in: server.directory)
        let expected = Set(MetricCatalog.all.map(\.name))
        #expect(expected.subtracting(families).isEmpty, "families not read: \(expected.subtracting(families).sorted())")
        #expect(families.subtracting(expected).isEmpty, "families not in the catalog: \(families.subtracting(expected).sorted())")
        #expect(try server.terminate() == 0)
    }

    @Test func badMetricsAddressesAreStartUpErrors() throws {
        // A port in use: bound here first.
        let holder = try TCPHolder()
        defer { holder.close() }
        let inUse = try ISCSINBDProcess([
            "serve", "iscsi://127.0.0.1:9/iqn.2026-11.test:none/1", "--socket", "/tmp/unused-\(UUID().uuidString.prefix(8)).sock",
            "--metrics-listen", "127.0.0.1:\(holder.port)",
        ])
        #expect(try inUse.waitForExit(timeout: 30) != 0)
        #expect(inUse.output.contains("cannot serve metrics at 127.0.0.1:\(holder.port)"), "\(inUse.output)")
        #expect(inUse.output.lowercased().contains("in use"), "\(inUse.output)")
        #expect(!inUse.output.contains("logged in"))

        for bad in ["127.0.0.1", "127.0.0.1:99999", "[::1", "host:port"] {
            let p = try ISCSINBDProcess([
                "serve", "iscsi://127.0.0.1:9/iqn.2026-11.test:none/1", "--socket", "/tmp/x.sock", "--metrics-listen", bad,
            ])
            #expect(try p.waitForExit(timeout: 30) == 64, "\(bad): \(p.output)")
            #expect(p.output.contains("--metrics-listen"), "\(bad): \(p.output)")
        }
        let unresolvable = try ISCSINBDProcess([
            "serve", "iscsi://127.0.0.1:9/iqn.2026-11.test:none/1", "--socket", "/tmp/x.sock",
            "--metrics-listen", "no-such-host.invalid:9100",
        ])
        #expect(try unresolvable.waitForExit(timeout: 60) != 0)
        #expect(unresolvable.output.contains("cannot serve metrics at no-such-host.invalid:9100"), "\(unresolvable.output)")
    }
}

/// A TCP port held open on 127.0.0.1 (so that binding it again fails).
final class TCPHolder {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0, listen(fd, 1) == 0 else {
            Glibc.close(fd)
            throw TestPeerError("bind: errno \(errno)")
        }
        var bound = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.port = Int(UInt16(bigEndian: bound.sin_port))
    }

    func close() { Glibc.close(fd) }
}
