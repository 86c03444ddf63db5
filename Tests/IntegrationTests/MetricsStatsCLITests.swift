import Foundation
import ISCSIBlockBackend
import ISCSIClient
import ISCSITestSupport
import Logging
import NIOCore
import NIOPosix
import SCSI
import Testing

@testable import ISCSINBDCommand

/// `iscsi-nbd -m session -r SID -s` on the host: the CLI asks the control socket, and the answer carries the
/// counters of a real session to tgtd after a known workload (a 1 MiB write). The daemon itself needs
/// /dev/nbdN to keep a session, which the host has not; the VM scenario (scripts/vm/scenario-daemon.sh)
/// runs the same command against the daemon with a kernel device.
@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm")))
struct MetricsStatsCLITests {
    static let iqn = "iqn.2026-11.org.iscsi-nbd.test:stats"

    @Test(.timeLimit(.minutes(2))) func statsThroughTheControlSocket() async throws {
        let tgt = try TGTD.start()
        defer { tgt.stop() }
        try tgt.addTarget(tid: 1, iqn: Self.iqn)
        try tgt.addLUN(tid: 1, lun: 1, backingFile: try tgt.makeBackingFile(name: "lun1.img", size: 16 << 20))
        let group = MultiThreadedEventLoopGroup.singleton
        let logger = Logger(label: "test.stats")
        var configuration = ISCSISessionConfiguration(
            host: "127.0.0.1", port: tgt.port, targetName: Self.iqn, initiatorName: "iqn.2026-11.test.iscsi-nbd:stats")
        configuration.noopOutInterval = nil  // no ping between the CLI's answer and the comparison below
        let session = try await ISCSISession.connect(configuration, on: group.next(), logger: logger)
        let device = try await SCSIBlockDevice.open(transport: session, lun: LogicalUnitNumber(1), logger: logger).get()
        let before = try await session.statistics().get()
        var payload = ByteBufferAllocator().buffer(capacity: 1 << 20)
        payload.writeRepeatingByte(0x5A, count: 1 << 20)
        try await device.write(offset: 0, data: payload, flags: []).get()

        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stats-\(UUID().uuidString.prefix(8))")
        let path = dir.appendingPathComponent("control.sock").path
        let server = try await ControlServer.start(path: path, activated: nil, group: group, logger: logger) { request in
            guard request.op == .stats, let stats = try? await session.statistics().get(),
                  let scsi = try? await device.commandStatistics.snapshot().get() else {
                return .failure(.failure, "unexpected request")
            }
            var report = ControlSession(
                id: 1, target: Self.iqn, portal: "127.0.0.1:\(tgt.port)", tpgt: 1, state: "LOGGED_IN", initiatorName: nil,
                tsih: session.tsih, isid: nil, luns: [], negotiated: [], timeouts: [], lastError: nil)
            report.stats = DaemonCore.statsRows(stats, scsi: [scsi])
            return .success(sessions: [report].filter { request.sid == nil || $0.id == request.sid })
        }
        let environment = ["ISCSI_NBD_CONTROL_SOCKET": path]
        let cli = try run(try iscsiNBDBinary(), ["-m", "session", "-r", "1", "-s"], environment: environment, allowFailure: true)
        let missing = try run(try iscsiNBDBinary(), ["-m", "session", "-r", "2", "--stats"], environment: environment, allowFailure: true)
        let after = try await session.statistics().get()
        await server.close()
        try await session.logout().get()

        #expect(cli.status == 0, "\(cli.stderr)")
        let lines = cli.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first == "Stats for session [sid: 1, target: \(Self.iqn), portal: 127.0.0.1,\(tgt.port)]")
        #expect(lines.dropFirst().first == "iSCSI SNMP:")
        var values: [String: UInt64] = [:]
        for line in lines where line.hasPrefix("\t") {
            let parts = line.dropFirst().split(separator: ":", maxSplits: 1)
            if parts.count == 2, let v = UInt64(parts[1].trimmingCharacters(in: .whitespaces)) { values[String(parts[0])] = v }
        }
        // What the CLI printed is what the session counted (nothing moved while it asked).
        for (name, value) in after.pdus.iscsiadmRows { #expect(values[name] == value, "\(name)") }
        #expect(values["dataout_pdus"]! - before.pdus.sent(.dataOut) > 0)
        #expect(values["r2t_pdus"]! - before.pdus.received(.readyToTransfer) > 0)
        #expect(values["txdata_octets"]! - before.pdus.txDataOctets == 1 << 20)
        #expect(values["queue_depth"] == UInt64(after.window?.queueDepth ?? -1))
        #expect(values["recoveries"] == 0)
        #expect(missing.status == 21, "\(missing.stdout)\(missing.stderr)")
        #expect(missing.stderr.contains("Could not find session 2"))
    }
}
