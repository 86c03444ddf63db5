import Foundation
import ISCSIClient
import ISCSIConfig
import ISCSIProtocol
import Testing
import NIOPosix
import NIOCore
import BlockBackend
import ISCSITestSupport

@testable import ISCSINBDCommand

@Suite struct ControlProtocolTests {
    @Test func requestRoundTrip() throws {
        let request = ControlRequest(op: .login, target: "iqn.2024-01.test:disk", portal: "127.0.0.1:3260", configDir: "/etc/iscsi")
        let bytes = try ControlProtocol.encode(request)
        #expect(bytes.last == UInt8(ascii: "\n"))
        #expect(bytes.filter { $0 == UInt8(ascii: "\n") }.count == 1)
        let decoded = try ControlProtocol.decode(ControlRequest.self, line: bytes.dropLast())
        #expect(decoded == request)
        #expect(String(decoding: bytes, as: UTF8.self).contains("\"op\":\"login\""))
    }

    @Test func responseRoundTrip() throws {
        let lun = ControlLUN(lun: 1, device: "/dev/nbd0", byPath: "/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.x:y-lun-1",
                             size: 1 << 30, blockSize: 512, backend: "iscsi-nbd ip-127.0.0.1:3260-iscsi-iqn.x:y-lun-1 360", state: "running")
        let session = ControlSession(id: 1, target: "iqn.x:y", portal: "127.0.0.1:3260", tpgt: 1, state: "LOGGED_IN",
                                     initiatorName: "iqn.i", tsih: 3, isid: "400001370000", luns: [lun],
                                     negotiated: [["HeaderDigest", "None"]], timeouts: [["Login Timeout", "15"]], lastError: nil)
        let response = ControlResponse.success(sessions: [session], messages: ["ok"])
        let decoded = try ControlProtocol.decode(ControlResponse.self, line: try ControlProtocol.encode(response).dropLast())
        #expect(decoded == response)
        let failure = ControlResponse.failure(.noObjectsFound, "No matching sessions found")
        #expect(try ControlProtocol.decode(ControlResponse.self, line: try ControlProtocol.encode(failure).dropLast()) == failure)
    }

    @Test func malformedRequestsAreErrors() {
        #expect(throws: ControlProtocolError.self) { try ControlProtocol.decode(ControlRequest.self, line: Array("{".utf8)) }
        #expect(throws: ControlProtocolError.self) { try ControlProtocol.decode(ControlRequest.self, line: Array("{\"op\":\"format-disk\"}".utf8)) }
        #expect(throws: ControlProtocolError.self) { try ControlProtocol.decode(ControlRequest.self, line: Array("[]".utf8)) }
        #expect(throws: ControlProtocolError.self) { try ControlProtocol.decode(ControlRequest.self, line: [0xFF, 0xFE]) }
    }

    @Test func lineDecoderIsIncrementalAndBounded() throws {
        var d = ControlLineDecoder(limit: 8)
        d.append(Array("abc".utf8))
        #expect(try d.next() == nil)
        d.append(Array("d\nef\n".utf8))
        #expect(try d.next() == Array("abcd".utf8))
        #expect(try d.next() == Array("ef".utf8))
        #expect(try d.next() == nil)
        #expect(d.pendingCount == 0)
        d.append(Array("123456789".utf8))  // 9 bytes without a newline: over the limit
        #expect(throws: ControlProtocolError.self) { try d.next() }

        var e = ControlLineDecoder(limit: 4)
        e.append(Array("12345\n".utf8))  // complete line, still too long
        #expect(throws: ControlProtocolError.self) { try e.next() }
        var f = ControlLineDecoder(limit: 4)
        f.append(Array("1234\n".utf8))
        #expect(try f.next() == Array("1234".utf8))
    }

    @Test func socketPathOverride() {
        #expect(ControlProtocol.socketPath(environment: [:]) == "/run/iscsi-nbd/control.sock")
        #expect(ControlProtocol.socketPath(environment: ["ISCSI_NBD_CONTROL_SOCKET": "/tmp/x.sock"]) == "/tmp/x.sock")
        #expect(ControlProtocol.socketPath(environment: ["ISCSI_NBD_CONTROL_SOCKET": ""]) == "/run/iscsi-nbd/control.sock")
    }
}

@Suite struct SocketActivationTests {
    @Test func absentOrForAnotherProcess() throws {
        #expect(try SocketActivation.parse(environment: [:], pid: 42) == nil)
        #expect(try SocketActivation.parse(environment: ["LISTEN_FDS": "1"], pid: 42) == nil)
        #expect(try SocketActivation.parse(environment: ["LISTEN_PID": "41", "LISTEN_FDS": "1"], pid: 42) == nil)
    }

    @Test func passedDescriptorsStartAtThree() throws {
        let one = try SocketActivation.parse(environment: ["LISTEN_PID": "42", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "control"], pid: 42)
        #expect(one == SocketActivation.Parsed(descriptors: [3], names: ["control"]))
        let two = try SocketActivation.parse(environment: ["LISTEN_PID": "42", "LISTEN_FDS": "2"], pid: 42)
        #expect(two == SocketActivation.Parsed(descriptors: [3, 4], names: ["unknown", "unknown"]))
        let zero = try SocketActivation.parse(environment: ["LISTEN_PID": "42", "LISTEN_FDS": "0"], pid: 42)
        #expect(zero?.descriptors == [])
    }

    /// The control socket and what the fd store hands back come in one list, told apart by name.
    @Test func storedNBDSocketsComeBackByName() throws {
        let parsed = try #require(try SocketActivation.parse(environment: [
            "LISTEN_PID": "42", "LISTEN_FDS": "5", "LISTEN_FDNAMES": "nbd3.1:control:nbd3.0:nbd0.0:stray",
        ], pid: 42))
        #expect(parsed.control == 4)
        #expect(parsed.storedDevices == [3: [5, 3], 0: [6]])
        #expect(parsed.unexpected == [7])
        #expect(parsed.name(of: 7) == "stray")
        let twice = try #require(try SocketActivation.parse(environment: [
            "LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "control:control",
        ], pid: 42))
        #expect(twice.control == 3 && twice.unexpected == [4])
        #expect(try SocketActivation.parse(environment: ["LISTEN_PID": "42", "LISTEN_FDS": "1"], pid: 42)?.control == 3)
        #expect(try SocketActivation.parse(environment: ["LISTEN_PID": "42", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "nbd1.0"], pid: 42)?.control == nil)
        for bad in ["nbd", "nbd1", "nbd1.", "nbd.1", "nbdx.0", "nbd1.0.0", "nbd-1.0", "nbd1.99999"] {
            #expect(SocketActivation.storeName(bad) == nil, "\(bad)")
        }
        #expect(SocketActivation.storeName(SocketActivation.storeName(index: 12, connection: 3)) ?? (0, 0) == (12, 3))
    }

    @Test func malformedIsAnError() {
        #expect(throws: ControlProtocolError.self) { try SocketActivation.parse(environment: ["LISTEN_PID": "x", "LISTEN_FDS": "1"], pid: 42) }
        #expect(throws: ControlProtocolError.self) { try SocketActivation.parse(environment: ["LISTEN_PID": "42", "LISTEN_FDS": "-1"], pid: 42) }
        #expect(throws: ControlProtocolError.self) { try SocketActivation.parse(environment: ["LISTEN_PID": "42", "LISTEN_FDS": "100000"], pid: 42) }
        #expect(throws: ControlProtocolError.self) { try SocketActivation.parse(environment: ["LISTEN_PID": "0", "LISTEN_FDS": "1"], pid: 42) }
    }
}

@Suite struct SessionTableTests {
    let a = SessionTable.Key(target: "iqn.t:a", portal: Portal(host: "10.0.0.1", port: 3260))
    let b = SessionTable.Key(target: "iqn.t:b", portal: Portal(host: "10.0.0.2", port: 3261))

    @Test func oneSessionPerNode() {
        var t = SessionTable()
        let r1 = t.beginLogin(a), r2 = t.beginLogin(a), r3 = t.beginLogin(b)
        #expect(r1 == .started(id: 1))
        #expect(r2 == .alreadyPresent(id: 1, state: .loggingIn))
        #expect(r3 == .started(id: 2))
        t.loggedIn(1)
        #expect(t.entries[1]?.state == .loggedIn)
        let r4 = t.beginLogin(a)
        #expect(r4 == .alreadyPresent(id: 1, state: .loggedIn))
    }

    @Test func failedLoginRetriesOnlyWhenAsked() {
        var t = SessionTable()
        _ = t.beginLogin(a)
        t.loginFailed(1, error: "refused", then: .forget)
        #expect(t.entries.isEmpty)
        let r = t.beginLogin(a)
        #expect(r == .started(id: 2))
        t.loginFailed(2, error: "refused", then: .retry)
        #expect(t.entries[2]?.state == .retrying)
        #expect(t.entries[2]?.lastError == "refused")
        let first = t.retryStarts(2)
        #expect(first)
        #expect(t.entries[2]?.attempts == 2)
        let again = t.retryStarts(2)
        #expect(!again)  // already logging in
        t.loggedIn(2)
        #expect(t.entries[2]?.lastError == nil)
    }

    /// A target that refused the login for good (RFC 7143 §11.13.5 class 2) keeps its entry, with the
    /// reason, until a new --login (which starts over on the same entry) or a logout; it is never retried.
    @Test func refusedLoginsStayUntilTriedAgain() {
        var t = SessionTable()
        _ = t.beginLogin(a)
        t.loginFailed(1, error: "0x0201 authentication failed", then: .refused)
        #expect(t.entries[1]?.state == .refused && t.entries[1]?.lastError == "0x0201 authentication failed")
        let retried = t.retryStarts(1)
        #expect(!retried, "a refused login is not retried in the background")
        let again = t.beginLogin(a)
        #expect(again == .started(id: 1))
        #expect(t.entries[1]?.state == .loggingIn && t.entries[1]?.attempts == 2)
        t.loginFailed(1, error: "again", then: .refused)
        let out = t.beginLogout(target: nil, host: nil, port: nil)
        #expect(out == [1])
    }

    @Test func logoutStopsRetries() {
        var t = SessionTable()
        _ = t.beginLogin(a)
        t.loginFailed(1, error: "down", then: .retry)
        let first = t.beginLogout(target: nil, host: nil, port: nil)
        #expect(first == [1])
        let retry = t.retryStarts(1)
        #expect(!retry)
        let twice = t.beginLogout(target: nil, host: nil, port: nil)
        #expect(twice == [])  // not twice
        t.remove(1)
        #expect(t.entries.isEmpty)
    }

    @Test func connectionLossOnlyFromLoggedIn() {
        var t = SessionTable()
        _ = t.beginLogin(a)
        let early = t.connectionLost(1, error: "reset")
        #expect(!early)  // still logging in
        t.loggedIn(1)
        let lost = t.connectionLost(1, error: "reset")
        #expect(lost)
        #expect(t.entries[1]?.state == .recovering)
        #expect(t.entries[1]?.lastError == "reset")
        let again = t.connectionLost(1, error: "again")
        #expect(!again)
        t.loggedIn(1)
        #expect(t.entries[1]?.state == .loggedIn)
        _ = t.beginLogout(target: nil, host: nil, port: nil)
        let late = t.connectionLost(1, error: "late")
        #expect(!late)  // a logout closes the connection itself
    }

    @Test func logoutFilters() {
        var t = SessionTable()
        _ = t.beginLogin(a)
        _ = t.beginLogin(b)
        #expect(t.matching(target: "iqn.t:b", host: nil, port: nil) == [2])
        #expect(t.matching(target: nil, host: "10.0.0.1", port: 3260) == [1])
        #expect(t.matching(target: nil, host: "10.0.0.1", port: 3261) == [])
        let none = t.beginLogout(target: "iqn.t:zzz", host: nil, port: nil)
        #expect(none == [])
        let one = t.beginLogout(target: "iqn.t:a", host: nil, port: nil)
        #expect(one == [1])
        #expect(t.entries[2]?.state == .loggingIn)
    }

    @Test func backoffIsBounded() {
        #expect(SessionTable.retryDelay(attempt: 1) == .seconds(2))
        #expect(SessionTable.retryDelay(attempt: 2) == .seconds(4))
        #expect(SessionTable.retryDelay(attempt: 4) == .seconds(16))
        #expect(SessionTable.retryDelay(attempt: 5) == .seconds(20))
        #expect(SessionTable.retryDelay(attempt: 1000) == .seconds(20))
        #expect(SessionTable.retryDelay(attempt: 0) == .seconds(2))
    }
}

@Suite struct SessionPrinterTests {
    let session = ControlSession(
        id: 3, target: "iqn.2024-01.test:disk", portal: "127.0.0.1:3260", tpgt: 1, state: "LOGGED_IN",
        initiatorName: "iqn.2024-01.test:init", tsih: 7, isid: "400001370000",
        luns: [ControlLUN(lun: 1, device: "/dev/nbd0", byPath: "/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.2024-01.test:disk-lun-1",
                          size: 1_073_741_824, blockSize: 512, backend: "iscsi-nbd ip-127.0.0.1:3260-iscsi-iqn.2024-01.test:disk-lun-1 36001", state: "running")],
        negotiated: [["HeaderDigest", "None"], ["MaxBurstLength", "262144"]],
        timeouts: [["Recovery Timeout (replacement_timeout)", "120"]], lastError: nil)

    @Test func levelZeroIsIscsiadmsLine() {
        #expect(SessionPrinter.render([session], level: 0) == "tcp: [3] 127.0.0.1:3260,1 iqn.2024-01.test:disk (non-flash)\n")
        var retrying = session
        retrying.state = "FAILED_RETRYING"
        #expect(SessionPrinter.render([retrying], level: 0).hasSuffix("(non-flash) [FAILED_RETRYING]\n"))
    }

    @Test func levelsAddDetail() {
        let p1 = SessionPrinter.render([session], level: 1)
        #expect(p1.contains("Target: iqn.2024-01.test:disk (non-flash)\n"))
        #expect(p1.contains("\t\tSID: 3\n"))
        #expect(p1.contains("iSCSI Session State: LOGGED_IN"))
        #expect(!p1.contains("Negotiated"))
        let p2 = SessionPrinter.render([session], level: 2)
        #expect(p2.contains("\t\tMaxBurstLength: 262144\n"))
        #expect(p2.contains("\t\tRecovery Timeout (replacement_timeout): 120\n"))
        #expect(!p2.contains("nbd0"))
        let p3 = SessionPrinter.render([session], level: 3)
        #expect(p3.contains("Attached nbd disk nbd0"))
        #expect(p3.contains("By-path: /dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.2024-01.test:disk-lun-1"))
        #expect(SessionPrinter.deviceLines(session) == ["\tLUN 1: /dev/nbd0 (/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.2024-01.test:disk-lun-1)"])
    }

    /// iscsiadm's CHAP section at -P 2, headed by the method really used (open-iscsi's rule can make that
    /// CHAP although the record says authmethod = None); secrets are masked whatever the input.
    @Test func chapSectionShowsTheMethodInUseAndMasksSecrets() {
        var c = ISCSISessionConfiguration(host: "h", targetName: "iqn.2024-01.test:disk", initiatorName: "iqn.2024-01.test:init")
        c.chap = CHAPCredentials(username: "alice", secret: "alice-secret-77",
                                 mutual: .init(username: "tgt", secret: "tgt-secret-88"))
        var s = session
        s.auth = DaemonCore.authRows(c)
        let p1 = SessionPrinter.render([s], level: 1)
        #expect(!p1.contains("CHAP:"))
        let p2 = SessionPrinter.render([s], level: 2)
        #expect(p2.contains("\t\tCHAP:\n\t\t*****\n\t\tauthmethod in use: CHAP (mutual)\n\t\tusername: alice\n\t\tpassword: ********\n\t\tusername_in: tgt\n\t\tpassword_in: ********\n"))
        #expect(!p2.contains("alice-secret-77") && !p2.contains("tgt-secret-88"))
        c.chap = nil
        s.auth = DaemonCore.authRows(c)
        #expect(SessionPrinter.render([s], level: 3).contains("authmethod in use: None\n\t\tusername: <empty>\n"))
    }
}

@Suite struct AttachNamingTests {
    @Test func deviceIndexParsing() throws {
        #expect(try DetachCommand.index(of: "/dev/nbd0") == 0)
        #expect(try DetachCommand.index(of: "nbd12") == 12)
        #expect(try DetachCommand.index(of: "7") == 7)
        for bad in ["/dev/sda", "/dev/nbd", "nbd-1", "nbd1p1", "", "/dev/nbd٣", "nbd99999999999"] {
            #expect(throws: (any Error).self) { try DetachCommand.index(of: bad) }
        }
    }

    @Test func kernelTimeoutOutlastsSessionRecovery() {
        #expect(DaemonCore.kernelRequestTimeout(.seconds(30), replacement: .seconds(120)) == .seconds(135))
        #expect(DaemonCore.kernelRequestTimeout(.seconds(600), replacement: .seconds(120)) == .seconds(600))
        #expect(DaemonCore.kernelRequestTimeout(nil, replacement: .seconds(120)) == nil)
    }
}

/// A stop by hand leaves a device in use attached: who holds it is read from /proc (and O_EXCL, which a
/// real block device needs; here the path is not one, so only the /proc walk decides).
@Suite struct DeviceHolderTests {
    private func fakeProc(_ processes: [(pid: String, comm: String, fds: [String])]) throws -> String {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("proc-\(UUID().uuidString.prefix(8))").path
        for p in processes {
            try FileManager.default.createDirectory(atPath: "\(root)/\(p.pid)/fd", withIntermediateDirectories: true)
            try (p.comm + "\n").write(toFile: "\(root)/\(p.pid)/comm", atomically: true, encoding: .utf8)
            for (i, target) in p.fds.enumerated() {
                try FileManager.default.createSymbolicLink(atPath: "\(root)/\(p.pid)/fd/\(i)", withDestinationPath: target)
            }
        }
        try FileManager.default.createDirectory(atPath: "\(root)/sys", withIntermediateDirectories: true)  // not a pid
        return root
    }

    @Test func aProcessWithTheDeviceOpenHoldsIt() throws {
        let proc = try fakeProc([("17", "bash", ["/dev/pts/0", "/dev/nbd10"]), ("4242", "fio", ["/dev/nbd7", "/tmp/x"])])
        defer { try? FileManager.default.removeItem(atPath: proc) }
        #expect(KernelAttachment.holder(of: "/dev/nbd7", proc: proc) == "open by fio (pid 4242)")
        #expect(KernelAttachment.holder(of: "/dev/nbd1", proc: proc) == nil)
    }

    @Test func ourOwnDescriptorsDoNotCount() throws {
        let proc = try fakeProc([("\(getpid())", "iscsi-nbd", ["/dev/nbd3"])])
        defer { try? FileManager.default.removeItem(atPath: proc) }
        #expect(KernelAttachment.holder(of: "/dev/nbd3", proc: proc) == nil)
    }
}

/// Kernel multi-queue: each socket of a device on its own loop, starting from the device's.
@Suite struct QueueLoopTests {
    @Test func socketsGoRoundRobinFromTheDevicesLoop() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 3)
        defer { try? group.syncShutdownGracefully() }
        var loops: [any EventLoop] = []
        var iterator = group.makeIterator()
        while let loop = iterator.next() { loops.append(loop) }
        let device = MemoryBlockDevice(info: BlockDeviceInfo(size: 1 << 20), eventLoop: loops[1])
        let chosen = KernelAttachment.loops(for: 4, device: device, group: group)
        #expect(chosen.map { c in loops.firstIndex { $0 === c } } == [1, 2, 0, 1])
        // One thread: every socket shares the device's loop.
        let single = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? single.syncShutdownGracefully() }
        let one = MemoryBlockDevice(info: BlockDeviceInfo(size: 1 << 20), eventLoop: single.next())
        #expect(KernelAttachment.loops(for: 3, device: one, group: single).allSatisfy { $0 === single.next() })
    }
}
