import BlockBackend
import Foundation
import ISCSITestSupport
import Testing

/// Opt-in throughput check (`NBD_PERF=1`): fio's nbd engine (libnbd) against the server on a MemoryBlockDevice,
/// and against `qemu-nbd` serving a tmpfs-backed file, for a rough comparison of protocol overhead.
@Suite(.serialized, .enabled(if: ProcessInfo.processInfo.environment["NBD_PERF"] != nil))
struct NBDServerPerformanceTests {
    static func fioIOPS(uri: String, rw: String) throws -> Double {
        let out = try run("fio", [
            "--name=perf", "--ioengine=nbd", "--uri=\(uri)", "--rw=\(rw)", "--bs=4k", "--iodepth=64",
            "--size=64M", "--time_based", "--runtime=5", "--output-format=json",
        ]).stdout
        let start = out.firstIndex(of: "{") ?? out.startIndex
        let json = try JSONSerialization.jsonObject(with: Data(out[start...].utf8)) as? [String: Any]
        let job = (json?["jobs"] as? [[String: Any]])?.first
        let key = rw.contains("read") ? "read" : "write"
        return ((job?[key] as? [String: Any])?["iops"] as? Double) ?? 0
    }

    @Test func randomReadWriteIOPS() async throws {
        guard peersAvailable("fio", "qemu-nbd") else { return }
        let f = try await ServerFixture(info: BlockDeviceInfo(size: 64 << 20, maxTransferLength: 1 << 20))
        let ours = try await blocking { (try Self.fioIOPS(uri: f.uri, rw: "randread"), try Self.fioIOPS(uri: f.uri, rw: "randwrite")) }
        await f.stop()
        let dir = "/dev/shm/nbdperf-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = dir + "/disk.img"
        FileManager.default.createFile(atPath: image, contents: nil)
        truncate(image, 64 << 20)
        let socket = dir + "/q.sock"
        let qemu = Process()
        qemu.executableURL = URL(fileURLWithPath: findExecutable("qemu-nbd") ?? "qemu-nbd")
        qemu.arguments = ["-f", "raw", "-k", socket, "-t", "--cache=writeback", image]
        qemu.standardInput = FileHandle.nullDevice
        qemu.standardOutput = FileHandle.nullDevice
        qemu.standardError = FileHandle.nullDevice
        try qemu.run()
        defer { kill(qemu.processIdentifier, SIGKILL); qemu.waitUntilExit() }
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: socket) { usleep(20_000) }
        let quri = "nbd+unix:///?socket=\(socket)"
        let theirs = try await blocking { (try Self.fioIOPS(uri: quri, rw: "randread"), try Self.fioIOPS(uri: quri, rw: "randwrite")) }
        print("PERF 4k QD64 randread: ours \(Int(ours.0)) IOPS, qemu-nbd \(Int(theirs.0)) IOPS")
        print("PERF 4k QD64 randwrite: ours \(Int(ours.1)) IOPS, qemu-nbd \(Int(theirs.1)) IOPS")
        #expect(ours.0 > 0 && ours.1 > 0)
    }
}
