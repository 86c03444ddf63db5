import Foundation
import ISCSIClient
import ISCSIProtocol
import ISCSITestSupport
import Logging
import NIOCore
import NIOPosix
import SCSI
import Testing

/// Session recovery through a fault-injecting proxy in front of a real tgtd: cuts, stalls (NOP-Out ping
/// timeout), corruption (digest errors), truncation, a target that stays away past the replacement timeout.
/// Every write is checked in the backing file, every read against what was written.
@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm")), .timeLimit(.minutes(5)))
struct RecoveryFaultProxyTests {
    static let lun = LogicalUnitNumber(1)

    struct Setup {
        let fixture: TGTFixture
        let proxy: FaultProxy
        let session: ISCSISession
        func stop() async {
            _ = try? await session.close().get()
            proxy.stop()
            fixture.stop()
        }
    }

    func setUp(
        digests: DigestSettings = .none, noop: TimeAmount? = nil, replacement: TimeAmount = .seconds(60)
    ) async throws -> Setup {
        let fixture = try TGTFixture()
        let proxy = try FaultProxy(upstreamPort: fixture.tgt.port)
        var configuration = fixture.configuration(digests: digests)
        configuration.port = proxy.port
        configuration.noopOutInterval = noop
        configuration.noopOutTimeout = .seconds(1)
        configuration.replacementTimeout = replacement
        configuration.loginTimeout = .seconds(3)
        var logger = Logger(label: "test.recovery")
        logger.logLevel = .notice
        let session = try await ISCSISession.connect(configuration, on: fixture.group.next(), logger: logger)
        return Setup(fixture: fixture, proxy: proxy, session: session)
    }

    /// Executes, retrying the UNIT ATTENTIONs a new I_T nexus reports (what the block layer does).
    func exec(_ session: ISCSISession, _ command: SCSICommand) async throws -> SCSICommandResult {
        for _ in 0..<5 {
            let result = try await session.execute(command, lun: Self.lun).get()
            if result.status == .checkCondition, let sense = result.senseData, sense.readableBytes > 3 {
                // Fixed format (70h/71h): key in byte 2; descriptor format (72h/73h): byte 1.
                let bytes = Array(sense.readableBytesView.prefix(4))
                let key = (bytes[0] & 0x7F) >= 0x72 ? bytes[1] & 0x0F : bytes[2] & 0x0F
                if key == 0x06 { continue }
            }
            return result
        }
        throw TestPeerError("unit attention did not clear")
    }

    func write(_ session: ISCSISession, lba: UInt64, _ data: ByteBuffer) async throws {
        let r = try await exec(session, SCSICommand(cdb: TestCDB.write16(lba: lba, blocks: UInt32(data.readableBytes / 512)), dataOut: data))
        #expect(r.status == .good)
    }

    func read(_ session: ISCSISession, lba: UInt64, length: Int) async throws -> ByteBuffer? {
        let r = try await exec(session, SCSICommand(cdb: TestCDB.read16(lba: lba, blocks: UInt32(length / 512)), expectedDataInLength: UInt32(length)))
        #expect(r.status == .good)
        return r.dataIn
    }

    @Test func cutDuringManyWritesLosesNothing() async throws {
        let s = try await setUp()
        let chunks = 48
        let size = 65536
        let session = s.session
        // The target's answers are held back until the cut, so every write is still in flight when it
        // comes (with a plain sleep before the cut, a fast run could finish every write first).
        s.proxy.inject(.blackhole, toward: .initiator)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<chunks {
                group.addTask { try await self.write(session, lba: UInt64(i * size / 512), pattern(length: size, seed: UInt8(i))) }
            }
            try await Task.sleep(for: .milliseconds(20))
            s.proxy.cutAll()
            s.proxy.heal()
            try await group.waitForAll()
        }
        #expect(s.session.status.recoveries >= 1)
        #expect(s.proxy.acceptedConnections >= 2)
        let data = try Data(contentsOf: URL(fileURLWithPath: s.fixture.backingFile))
        for i in 0..<chunks {
            #expect(sameBytes(data[(i * size)..<((i + 1) * size)], pattern(length: size, seed: UInt8(i))), "chunk \(i)")
        }
        await s.stop()
    }

    @Test func stalledLinkIsDetectedByPingAndRecovered() async throws {
        let s = try await setUp(noop: .milliseconds(500))
        try await write(s.session, lba: 0, pattern(length: 4096, seed: 9))
        s.proxy.inject(.blackhole, toward: .initiator)
        s.proxy.inject(.blackhole, toward: .target)
        let start = ContinuousClock.now
        let session = s.session
        async let pending = read(session, lba: 0, length: 4096)
        try await Task.sleep(for: .milliseconds(1800))
        s.proxy.heal()
        let data = try await pending
        #expect(data == pattern(length: 4096, seed: 9))
        // The ping finds the stall in about 1 s; without it the read would wait for the 30 s ABORT TASK of the
        // timeout ladder. 25 s leaves room for a loaded 2-core machine (17 s seen) and still tells them apart.
        #expect(ContinuousClock.now - start < .seconds(25))
        #expect(s.session.status.recoveries >= 1)
        await s.stop()
    }

    @Test func busyLinkIsNotPinged() async throws {
        // Idle-only pings (open-iscsi #97): with traffic flowing, no NOP-Out goes out and nothing times out,
        // even with a ping interval shorter than the traffic's duration and a delayed link.
        let s = try await setUp(noop: .milliseconds(300))
        s.proxy.inject(.delay(.milliseconds(150)), toward: .initiator)
        let deadline = ContinuousClock.now + .seconds(2)
        var i: UInt64 = 0
        while ContinuousClock.now < deadline {
            try await write(s.session, lba: i * 8, pattern(length: 4096, seed: UInt8(truncatingIfNeeded: i)))
            i += 1
        }
        #expect(s.session.status.recoveries == 0)
        #expect(s.proxy.acceptedConnections == 1)
        await s.stop()
    }

    @Test func corruptedPDUWithDigestsIsRecovered() async throws {
        let s = try await setUp(digests: DigestSettings(header: true, data: true))
        try await write(s.session, lba: 64, pattern(length: 32768, seed: 3))
        s.proxy.inject(.corrupt(afterBytes: 20), toward: .initiator)
        let data = try await read(s.session, lba: 64, length: 32768)
        #expect(data == pattern(length: 32768, seed: 3))
        #expect(s.session.status.recoveries >= 1)
        // And toward the target: the target drops the connection on a digest error; we recover.
        s.proxy.inject(.corrupt(afterBytes: 100), toward: .target)
        try await write(s.session, lba: 128, pattern(length: 32768, seed: 4))
        let back = try await read(s.session, lba: 128, length: 32768)
        #expect(back == pattern(length: 32768, seed: 4))
        await s.stop()
    }

    @Test func truncatedStreamIsRecovered() async throws {
        let s = try await setUp()
        try await write(s.session, lba: 0, pattern(length: 65536, seed: 5))
        s.proxy.inject(.truncate(afterBytes: 30000), toward: .initiator)
        let data = try await read(s.session, lba: 0, length: 65536)
        #expect(data == pattern(length: 65536, seed: 5))
        #expect(s.session.status.recoveries >= 1)
        await s.stop()
    }

    @Test func replacementTimeoutFailsQueuedAndNewThenResumes() async throws {
        let s = try await setUp(replacement: .seconds(1))
        try await write(s.session, lba: 0, pattern(length: 4096, seed: 6))
        s.proxy.refuseNewConnections()
        s.proxy.cutAll()
        let start = ContinuousClock.now
        await #expect(throws: ISCSISessionError.replacementTimeout(seconds: 1)) {
            _ = try await s.session.execute(SCSICommand(cdb: TestCDB.read16(lba: 0, blocks: 8), expectedDataInLength: 4096), lun: Self.lun).get()
        }
        let waited = ContinuousClock.now - start
        #expect(waited >= .milliseconds(900) && waited < .seconds(5))
        let quick = ContinuousClock.now
        await #expect(throws: ISCSISessionError.replacementTimeout(seconds: 1)) {
            _ = try await s.session.execute(SCSICommand(cdb: TestCDB.read16(lba: 0, blocks: 8), expectedDataInLength: 4096), lun: Self.lun).get()
        }
        #expect(ContinuousClock.now - quick < .milliseconds(500))
        s.proxy.heal()
        var back = false
        for _ in 0..<100 where !back {
            try await Task.sleep(for: .milliseconds(100))
            back = s.session.status.state == .connected
        }
        #expect(back)
        #expect(try await read(s.session, lba: 0, length: 4096) == pattern(length: 4096, seed: 6))
        await s.stop()
    }

    @Test func logoutWhileRecoveringEndsPromptly() async throws {
        let s = try await setUp()
        s.proxy.refuseNewConnections()
        s.proxy.cutAll()
        let pending = s.session.execute(SCSICommand(cdb: TestCDB.read16(lba: 0, blocks: 8), expectedDataInLength: 4096), lun: Self.lun)
        try await Task.sleep(for: .milliseconds(200))
        try await s.session.logout().get()
        await #expect(throws: ISCSISessionError.sessionClosed) { _ = try await pending.get() }
        try await s.session.closeFuture.get()
        await s.stop()
    }
}

/// Initial login retries (open-iscsi initial_login_retry_max) and background retrying for automatic nodes.
@Suite(.serialized, .enabled(if: peersAvailable("tgtd", "tgtadm")), .timeLimit(.minutes(2)))
struct LoginRetryTests {
    @Test func boundedRetriesGiveUpAfterTheLastAttempt() async throws {
        let fixture = try TGTFixture()
        defer { fixture.stop() }
        let proxy = try FaultProxy(upstreamPort: fixture.tgt.port)
        defer { proxy.stop() }
        proxy.refuseNewConnections()
        var configuration = fixture.configuration()
        configuration.port = proxy.port
        let retry = LoginRetryPolicy(retries: 2, backoff: ReconnectBackoff(time2Wait: .milliseconds(50), step: .milliseconds(50)))
        await #expect(throws: (any Error).self) {
            _ = try await ISCSISession.connect(configuration, on: fixture.group.next(), logger: Logger(label: "test.retry"), retry: retry)
        }
        #expect(proxy.acceptedConnections == 3, "one attempt and two retries")
    }

    @Test func backgroundRetriesSucceedWhenTheTargetComesBack() async throws {
        let fixture = try TGTFixture()
        defer { fixture.stop() }
        let proxy = try FaultProxy(upstreamPort: fixture.tgt.port)
        defer { proxy.stop() }
        proxy.refuseNewConnections()
        var configuration = fixture.configuration()
        configuration.port = proxy.port
        let retry = LoginRetryPolicy(retries: nil, backoff: ReconnectBackoff(time2Wait: .milliseconds(100), step: .milliseconds(100), maximum: .milliseconds(200)))
        let pending: EventLoopFuture<ISCSISession> = ISCSISession.connect(
            configuration, on: fixture.group.next(), logger: Logger(label: "test.retry"), retry: retry)
        try await Task.sleep(for: .milliseconds(800))
        #expect(proxy.acceptedConnections >= 3)
        proxy.heal()
        let session = try await pending.get()
        #expect(session.status.state == .connected)
        try await session.logout().get()
    }

    @Test func authenticationFailureIsNotRetriedWhenBounded() async throws {
        let fixture = try TGTFixture()
        defer { fixture.stop() }
        try fixture.tgt.addAccount(tid: 1, user: "alice", password: "alicesecret12")
        let proxy = try FaultProxy(upstreamPort: fixture.tgt.port)
        defer { proxy.stop() }
        var configuration = fixture.configuration()
        configuration.port = proxy.port
        configuration.chap = CHAPCredentials(username: "alice", secret: "wrongsecret123")
        let retry = LoginRetryPolicy(retries: 5, backoff: ReconnectBackoff(time2Wait: .milliseconds(50)))
        await #expect(throws: (any Error).self) {
            _ = try await ISCSISession.connect(configuration, on: fixture.group.next(), logger: Logger(label: "test.retry"), retry: retry)
        }
        #expect(proxy.acceptedConnections == 1)
    }
}

/// Session recovery against the scripted `FakeTarget`: what tgtd cannot be made to do on demand.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct RecoveryFakeTargetTests {
    func connect(_ target: FakeTarget, replacement: TimeAmount = .seconds(30)) async throws -> ISCSISession {
        let group = MultiThreadedEventLoopGroup.singleton
        var configuration = ISCSISessionConfiguration(
            host: "127.0.0.1", port: target.port, targetName: "iqn.2026-11.test:fake", initiatorName: "iqn.2026-11.test:init")
        configuration.replacementTimeout = replacement
        configuration.noopOutInterval = nil
        var logger = Logger(label: "test.fake-target")
        logger.logLevel = .notice
        return try await ISCSISession.connect(configuration, on: group.next(), logger: logger)
    }

    func write(_ session: ISCSISession, lba: UInt64, _ data: ByteBuffer) -> EventLoopFuture<SCSICommandResult> {
        session.execute(SCSICommand(cdb: TestCDB.write16(lba: lba, blocks: UInt32(data.readableBytes / 512)), dataOut: data), lun: LogicalUnitNumber(1))
    }

    func read(_ session: ISCSISession, lba: UInt64, length: Int) -> EventLoopFuture<SCSICommandResult> {
        session.execute(SCSICommand(cdb: TestCDB.read16(lba: lba, blocks: UInt32(length / 512)), expectedDataInLength: UInt32(length)), lun: LogicalUnitNumber(1))
    }

    @Test func reinstatementUsesTheSameISIDAndTSIHZeroAndReissuesUnansweredCommands() async throws {
        let target = try FakeTarget()
        defer { target.stop() }
        let session = try await connect(target)
        let firstTSIH = session.tsih
        #expect(firstTSIH != 0)
        target.holdCommands(true)
        let writes = (0..<8).map { i in write(session, lba: UInt64(i * 16), pattern(length: 8192, seed: UInt8(i + 1))) }
        try await Task.sleep(for: .milliseconds(200))
        #expect(target.commandsSeen == 8)
        target.holdCommands(false)
        target.dropAll()
        for w in writes { #expect(try await w.get().status == .good) }
        let logins = target.logins
        #expect(logins.count == 2)
        #expect(logins[0].isid == logins[1].isid, "RFC 7143 §6.3.5: same ISID")
        #expect(logins[1].tsih == 0, "RFC 7143 §6.3.5: TSIH 0 reinstates the session")
        #expect(session.tsih != firstTSIH)
        #expect(target.commandsSeen == 16, "every unanswered write re-issued once")
        for i in 0..<8 {
            #expect(target.read(offset: i * 8192, length: 8192) == Array(pattern(length: 8192, seed: UInt8(i + 1)).readableBytesView))
        }
        try await session.logout().get()
    }

    @Test func asyncLogoutRequestLogsOutAndReconnects() async throws {
        let target = try FakeTarget()
        defer { target.stop() }
        let session = try await connect(target)
        #expect(try await write(session, lba: 0, pattern(length: 4096, seed: 7)).get().status == .good)
        target.requestLogout()
        // Commands submitted around the logout complete, on the old connection when they reach it before
        // the Async Message reaches the client, or on the new one after the logout and re-login.
        let during = (0..<4).map { _ in read(session, lba: 0, length: 4096) }
        for r in during { #expect(try await r.get().dataIn == pattern(length: 4096, seed: 7)) }
        // The client logs out and logs in again by itself: wait for that instead of racing it.
        #expect(await eventually { target.logins.count == 2 && session.status.recoveries == 1 && session.status.state == .connected })
        #expect(target.logins.count == 2)
        #expect(session.status.recoveries == 1)
        let after = try await read(session, lba: 0, length: 4096).get()
        #expect(after.dataIn == pattern(length: 4096, seed: 7))
        try await session.logout().get()
    }

    @Test func announcedDropWaitsTime2WaitThenReconnects() async throws {
        let target = try FakeTarget()
        defer { target.stop() }
        let session = try await connect(target)
        let start = ContinuousClock.now
        target.announceDropAndDisconnect(time2Wait: 1)
        try await Task.sleep(for: .milliseconds(100))
        let r = try await read(session, lba: 0, length: 512).get()
        #expect(r.status == .good)
        #expect(ContinuousClock.now - start >= .milliseconds(900), "Time2Wait honoured")
        #expect(target.logins.count == 2)
        try await session.logout().get()
    }
}
