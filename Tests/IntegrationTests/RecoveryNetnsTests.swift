import Foundation
import ISCSITestSupport
import Testing

/// Two network namespaces made by the test (target and initiator), joined by a veth pair with addresses
/// only inside them; packet loss and delay on both ends (tc netem, or where the kernel has no netem, nft
/// random drop plus a tbf rate limit), and a link flap, during a fio verify run through `iscsi-nbd serve`.
/// Zero I/O errors, zero verify errors.
@Suite(.serialized, .enabled(if: getuid() == 0 && peersAvailable("tgtd", "tgtadm", "ip", "tc", "fio")))
struct RecoveryNetnsTests {
    static let iqn = "iqn.2026-11.org.iscsi-nbd.test:netns"

    final class Namespaces {
        let target: String
        let initiator: String
        let subnet: Int
        var targetAddress: String { "10.231.\(subnet).1" }
        var initiatorAddress: String { "10.231.\(subnet).2" }

        init() throws {
            let tag = String(UUID().uuidString.prefix(6)).lowercased()
            target = "inbdt-\(tag)"
            initiator = "inbdi-\(tag)"
            subnet = Int.random(in: 1..<250)
            try run("ip", ["netns", "add", target])
            do {
                try run("ip", ["netns", "add", initiator])
                try run("ip", ["link", "add", "vt", "netns", target, "type", "veth", "peer", "name", "vi", "netns", initiator])
                try exec(target, ["ip", "addr", "add", "\(targetAddress)/30", "dev", "vt"])
                try exec(initiator, ["ip", "addr", "add", "\(initiatorAddress)/30", "dev", "vi"])
                for (ns, dev) in [(target, "vt"), (initiator, "vi")] {
                    try exec(ns, ["ip", "link", "set", "lo", "up"])
                    try exec(ns, ["ip", "link", "set", dev, "up"])
                }
            } catch {
                remove()
                throw error
            }
        }

        @discardableResult
        func exec(_ ns: String, _ command: [String], allowFailure: Bool = false) throws -> (status: Int32, stdout: String, stderr: String) {
            try run("ip", ["netns", "exec", ns] + command, allowFailure: allowFailure)
        }

        /// Loss and delay on both ends. Returns how ("netem" or "nft+tbf").
        func impair(lossPercent: Int, delayMs: Int) throws -> String {
            let netem = try exec(target, ["tc", "qdisc", "add", "dev", "vt", "root", "netem", "delay", "\(delayMs)ms", "loss", "\(lossPercent)%"], allowFailure: true)
            if netem.status == 0 {
                try exec(initiator, ["tc", "qdisc", "add", "dev", "vi", "root", "netem", "delay", "\(delayMs)ms", "loss", "\(lossPercent)%"])
                return "netem"
            }
            // No netem in this kernel: random drop with nftables, and queueing delay from a tbf rate limit.
            guard findExecutable("nft") != nil else {
                if isCI { fatalError("CI=true: the kernel has no netem and nft (Debian nftables) is missing") }
                throw TestPeerError("no netem and no nft")
            }
            for (ns, dev) in [(target, "vt"), (initiator, "vi")] {
                try exec(ns, ["nft", "add", "table", "inet", "impair"])
                try exec(ns, ["nft", "add", "chain", "inet", "impair", "out", "{ type filter hook output priority 0; }"])
                try exec(ns, ["nft", "add", "rule", "inet", "impair", "out", "oifname", dev, "numgen", "random", "mod", "100", "<", "\(lossPercent)", "drop"])
                try exec(ns, ["tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "200mbit", "burst", "64kb", "latency", "\(max(delayMs, 1))ms"])
            }
            return "nft+tbf"
        }

        func setLink(up: Bool) throws {
            try exec(initiator, ["ip", "link", "set", "vi", up ? "up" : "down"])
        }

        func remove() {
            _ = try? run("ip", ["netns", "del", initiator], allowFailure: true)
            _ = try? run("ip", ["netns", "del", target], allowFailure: true)
        }
    }

    @Test(.timeLimit(.minutes(4))) func lossDelayAndLinkFlapDuringFioVerify() throws {
        let ns = try Namespaces()
        defer { ns.remove() }
        let tgt = try KillableTGTD(host: ns.targetAddress, port: 3260, prefix: ["ip", "netns", "exec", ns.target])
        defer { tgt.stop() }
        let backing = try tgt.makeBackingFile(name: "lun1.img", size: 64 << 20)
        try tgt.configure(iqn: Self.iqn, backingFile: backing, serial: "NETNS0001")
        // The initiator's iSCSI traffic stays inside its namespace; the NBD unix socket is in the file system.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nsock-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let sock = dir.appendingPathComponent("nbd.sock").path
        let server = try ISCSINBDProcess([
            "netns", "exec", ns.initiator, try iscsiNBDBinary(),
            "serve", "iscsi://\(tgt.portal)/\(Self.iqn)/1", "--socket", sock, "--replacement-timeout", "60",
        ], executable: findExecutable("ip") ?? "/usr/sbin/ip")
        try server.waitForSocket(sock)
        let how = try ns.impair(lossPercent: 2, delayMs: 20)

        let fio = Process()
        fio.executableURL = URL(fileURLWithPath: findExecutable("fio") ?? "fio")
        fio.arguments = [
            "--name=verify", "--ioengine=nbd", "--uri=nbd+unix:///?socket=\(sock)", "--rw=randwrite", "--bs=16k",
            "--iodepth=16", "--size=16m", "--verify=crc32c", "--verify_state_save=0", "--do_verify=1", "--verify_fatal=1", "--output-format=json",
        ]
        let outPath = dir.appendingPathComponent("fio.json").path
        FileManager.default.createFile(atPath: outPath, contents: nil)
        fio.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        fio.standardError = fio.standardOutput
        let started = Date()
        try fio.run()
        // A 3 s link flap while fio runs.
        usleep(1_500_000)
        if fio.isRunning {
            try ns.setLink(up: false)
            usleep(3_000_000)
            try ns.setLink(up: true)
        }
        fio.waitUntilExit()
        let output = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        print("netns \(how) loss 2% delay 20ms + 3 s link flap: fio exit \(fio.terminationStatus) in \(Date().timeIntervalSince(started)) s")
        #expect(fio.terminationStatus == 0, "fio: \(output)\n\(server.output)")
        let json = output.firstIndex(of: "{").map { String(output[$0...]) } ?? output
        let obj = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let job = (obj?["jobs"] as? [[String: Any]])?.first
        #expect(job?["error"] as? Int == 0)
        #expect((job?["write"] as? [String: Any])?["io_bytes"] as? Int == 16 << 20)
        #expect((job?["read"] as? [String: Any])?["io_bytes"] as? Int == 16 << 20)
        #expect(server.process.isRunning, "\(server.output)")
        #expect(try server.terminate() == 0)
    }
}
