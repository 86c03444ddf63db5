import Foundation
import Logging
import NIOPosix
import Testing

@testable import ISCSINBDCommand

#if canImport(Glibc)
import Glibc
#endif

/// The control socket end to end on the host: a real daemon core behind a real unix socket, the CLI's
/// blocking client in front. (Kernel attach needs the VM: scripts/vm/scenario-daemon.sh.)
@Suite struct ControlSocketTests {
    private func withDaemon(_ body: (String, String) async throws -> Void) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ctl-\(UUID().uuidString)").path
        let configDir = dir + "/etc"
        try FileManager.default.createDirectory(atPath: configDir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/run/control.sock"
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let core = DaemonCore(settings: DaemonSettings(configDir: configDir, byPathDirectory: nil), group: group,
                              logger: Logger(label: "test"))
        let server = try await ControlServer.start(path: path, activated: nil, group: group, logger: Logger(label: "test")) {
            await core.handle($0)
        }
        do {
            try await body(path, configDir)
        } catch {
            await server.close()
            try? await group.shutdownGracefully()
            throw error
        }
        await server.close()
        #expect(!FileManager.default.fileExists(atPath: path))
        try await group.shutdownGracefully()
    }

    /// The blocking client runs off the cooperative pool. The daemon core answers on the cooperative pool,
    /// which other suites running in parallel may keep busy with blocking work (fio runs of several seconds
    /// on 2 cores): the generous timeout is for that, not for the daemon.
    private func send(_ request: ControlRequest, _ path: String) async throws -> ControlResponse? {
        try await NIOThreadPool.singleton.runIfActive { try ControlClient.send(request, path: path, timeoutSeconds: 120) }
    }

    @Test func requestsAndAnswers() async throws {
        try await withDaemon { path, configDir in
            var st = stat()
            #expect(stat(path, &st) == 0)
            #expect(st.st_mode & 0o777 == 0o600)
            #expect(stat((path as NSString).deletingLastPathComponent, &st) == 0)
            #expect(st.st_mode & 0o077 == 0)

            let ping = try #require(try await send(ControlRequest(op: .ping), path))
            #expect(ping.ok)
            #expect(ping.messages.first?.contains("pid \(getpid())") == true)

            let sessions = try #require(try await send(ControlRequest(op: .sessions), path))
            #expect(sessions.ok && sessions.sessions.isEmpty)

            let login = try #require(try await send(ControlRequest(op: .login, target: "iqn.2024-01.test:none", configDir: configDir), path))
            #expect(!login.ok)
            #expect(login.code == 21)
            #expect(login.error == "No records found")

            let logout = try #require(try await send(ControlRequest(op: .logout, target: "iqn.2024-01.test:none"), path))
            #expect(logout.code == 21)

            let badPortal = try #require(try await send(ControlRequest(op: .logout, portal: "[::1"), path))
            #expect(!badPortal.ok)
        }
    }

    @Test func malformedAndOversizedRequestsGetAnError() async throws {
        try await withDaemon { path, _ in
            for payload in [Array("not json\n".utf8), Array("{\"op\":\"rm -rf\"}\n".utf8),
                            [UInt8](repeating: UInt8(ascii: "x"), count: ControlProtocol.maximumRequestLength + 10)] {
                let answer = try await NIOThreadPool.singleton.runIfActive { try Self.rawExchange(path: path, payload) }
                let response = try ControlProtocol.decode(ControlResponse.self, line: answer.split(separator: UInt8(ascii: "\n")).first ?? [])
                #expect(!response.ok)
                #expect(response.code == 7)
            }
            // Still serving afterwards.
            let after = try await send(ControlRequest(op: .ping), path)
            #expect(after?.ok == true)
        }
    }

    @Test func noDaemonMeansNil() throws {
        #expect(try ControlClient.send(ControlRequest(op: .ping), path: "/nonexistent-dir/control.sock") == nil)
    }

    @Test func secondDaemonIsRefused() async throws {
        try await withDaemon { path, _ in
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            defer { _ = group.shutdownGracefully { _ in } }
            await #expect(throws: (any Error).self) {
                _ = try await ControlServer.start(path: path, activated: nil, group: group, logger: Logger(label: "t")) { _ in .success() }
            }
            let first = try await send(ControlRequest(op: .ping), path)
            #expect(first?.ok == true)
        }
    }

    /// Writes bytes, reads until EOF (at most 64 KiB).
    static func rawExchange(path: String, _ payload: [UInt8]) throws -> [UInt8] {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw CommandFailure("connect failed") }
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = payload.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while out.count < 65536 {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n <= 0 { break }
            out += chunk[..<n]
        }
        return out
    }
}
