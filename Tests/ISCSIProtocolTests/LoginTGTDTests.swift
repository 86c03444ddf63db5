import Foundation
import ISCSIProtocol
import ISCSITestSupport
import NIOCore
import Testing

/// The login state machine against a real tgtd on 127.0.0.1 (skipped outside CI when tgt is missing).
///
/// The PDU codec lives elsewhere (ISCSIProtocol/PDU, another helper's area), so this test frames the
/// few PDUs it needs by hand on a blocking socket: Login Request/Response (RFC 7143 §11.12, §11.13) and,
/// for discovery, Text Request/Response (§11.10, §11.11). Header and data digests stay off.
/// One tgtd serves all scenarios, run in sequence from a single test (tgtd instances are not cheap, and
/// Swift Testing would otherwise start one per test in parallel).
@Suite struct LoginTGTDTests {
    static let targetName = "iqn.2026-11.test.login:disk"
    static let initiatorName = "iqn.2026-11.test.login:initiator"

    @Test(.enabled(if: peersAvailable("tgtd", "tgtadm")), .timeLimit(.minutes(2)))
    func loginsAgainstTGTD() throws {
        let tgt = try TGTD.start()
        defer { tgt.stop() }
        try tgt.addTarget(tid: 1, iqn: Self.targetName)
        try tgt.addLUN(tid: 1, lun: 1, backingFile: nil)
        let scenarios = Scenarios(tgt: tgt)
        // Order matters: CHAP accounts added by later scenarios make the target require authentication.
        try scenarios.loginWithoutAuthentication()
        try scenarios.unknownTargetIsNotFound()
        try scenarios.discoveryAndSendTargets()
        try scenarios.oneWayCHAPMD5()
        try scenarios.strongerAlgorithmsWithTgt()
        try scenarios.mutualCHAP()
    }
}

struct Scenarios {
    static let targetName = LoginTGTDTests.targetName
    static let initiatorName = LoginTGTDTests.initiatorName
    let tgt: TGTD

    /// A blocking TCP connection carrying raw iSCSI PDUs.
    final class Connection {
        let fd: Int32
        var statSN: UInt32 = 0
        let itt: UInt32 = 0x1000

        init(port: Int) throws {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw TestPeerError("socket() failed") }
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = UInt16(port).bigEndian
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard connected == 0 else {
                close(fd)
                throw TestPeerError("connect() failed")
            }
        }

        deinit { close(fd) }

        func write(_ bytes: [UInt8]) throws {
            var offset = 0
            while offset < bytes.count {
                let n = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
                guard n > 0 else { throw TestPeerError("write() failed") }
                offset += n
            }
        }

        func read(_ count: Int) throws -> [UInt8] {
            var out = [UInt8](repeating: 0, count: count)
            var offset = 0
            while offset < count {
                let n = out[offset...].withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                guard n > 0 else { throw TestPeerError("connection closed or timed out") }
                offset += n
            }
            return out
        }

        /// Sends a Login (0x03) or Text (0x04) Request.
        func send(opcode: UInt8, flags: UInt8, data: ByteBuffer, cmdSN: UInt32 = 1) throws {
            var header = [UInt8](repeating: 0, count: 48)
            header[0] = 0x40 | opcode  // immediate
            header[1] = flags
            let length = data.readableBytes
            header[5] = UInt8(truncatingIfNeeded: length >> 16)
            header[6] = UInt8(truncatingIfNeeded: length >> 8)
            header[7] = UInt8(truncatingIfNeeded: length)
            if opcode == 0x03 {
                header[8...13] = [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a][...]  // ISID, random format (§11.12.5)
            } else {
                header[20...23] = [0xff, 0xff, 0xff, 0xff][...]  // Target Transfer Tag
            }
            withUnsafeBytes(of: itt.bigEndian) { header[16..<20] = ArraySlice($0) }
            withUnsafeBytes(of: cmdSN.bigEndian) { header[24..<28] = ArraySlice($0) }
            withUnsafeBytes(of: statSN.bigEndian) { header[28..<32] = ArraySlice($0) }
            var payload = Array(data.readableBytesView)
            while payload.count % 4 != 0 { payload.append(0) }
            try write(header + payload)
        }

        func sendLogin(_ step: LoginRequestStep) throws {
            let flags = (step.transit ? 0x80 : 0) | (step.continue ? 0x40 : 0) | step.csg.rawValue << 2
                | step.wireNSG.rawValue
            try send(opcode: 0x03, flags: flags, data: step.keys.encoded())
        }

        /// Reads one PDU: (opcode, flags, header, data).
        func receive() throws -> (opcode: UInt8, header: [UInt8], data: ByteBuffer) {
            let header = try read(48)
            let length = Int(header[5]) << 16 | Int(header[6]) << 8 | Int(header[7])
            let ahs = Int(header[4]) * 4
            _ = try read(ahs)
            let padded = (length + 3) & ~3
            let data = try read(padded)
            statSN = (UInt32(header[24]) << 24 | UInt32(header[25]) << 16 | UInt32(header[26]) << 8
                | UInt32(header[27])) &+ 1
            return (header[0] & 0x3f, header, ByteBuffer(bytes: data[0..<length]))
        }

        func receiveLogin() throws -> LoginResponseSummary {
            let (opcode, header, data) = try receive()
            guard opcode == 0x23 else { throw TestPeerError("expected a Login Response, got opcode \(opcode)") }
            return LoginResponseSummary(
                statusClass: header[36], statusDetail: header[37], transit: header[1] & 0x80 != 0,
                continue: header[1] & 0x40 != 0, csg: LoginStage(rawValue: (header[1] >> 2) & 3),
                nsg: LoginStage(rawValue: header[1] & 3), tsih: UInt16(header[14]) << 8 | UInt16(header[15]),
                text: data)
        }
    }

    enum Outcome {
        case complete(OperationalParameters, tsih: UInt16, connection: Connection)
        case failed(LoginError)
    }

    /// Runs one login on a fresh connection.
    func login(_ configuration: LoginConfiguration) throws -> Outcome {
        let connection = try Connection(port: tgt.port)
        var machine: LoginStateMachine
        do {
            machine = try LoginStateMachine(configuration: configuration)
        } catch {
            return .failed(error)
        }
        var step = machine.start()
        while true {
            try connection.sendLogin(step)
            let response = try connection.receiveLogin()
            let action: LoginAction
            do {
                action = try machine.receive(response)
            } catch {
                return .failed(error)
            }
            switch action {
            case .send(let next): step = next
            case .complete(let parameters, let tsih): return .complete(parameters, tsih: tsih, connection: connection)
            case .redirect(let address, _): throw TestPeerError("unexpected redirect to \(address)")
            }
        }
    }

    /// Like the client: after `.chapAlgorithmRejected`, log in again with MD5 only.
    func loginWithFallback(_ configuration: LoginConfiguration) throws -> (Outcome, retried: Bool) {
        let first = try login(configuration)
        if case .failed(let error) = first, let algorithms = error.retryCHAPAlgorithms {
            var retry = configuration
            retry.chapAlgorithms = algorithms
            return (try login(retry), true)
        }
        return (first, false)
    }

    func configuration(chap: CHAPCredentials? = nil, algorithms: [CHAPAlgorithm] = [.md5],
                       proposal: SessionParameterProposal = .init()) -> LoginConfiguration {
        LoginConfiguration(initiatorName: Self.initiatorName, initiatorAlias: "login-test", targetName: Self.targetName,
                           chap: chap, chapAlgorithms: algorithms, proposal: proposal)
    }

    func expectComplete(_ outcome: Outcome, sourceLocation: SourceLocation = #_sourceLocation) -> OperationalParameters? {
        switch outcome {
        case .complete(let parameters, let tsih, _):
            #expect(tsih != 0, sourceLocation: sourceLocation)
            return parameters
        case .failed(let error):
            Issue.record("login failed: \(error)", sourceLocation: sourceLocation)
            return nil
        }
    }

    func expectFailure(_ outcome: Outcome) -> LoginError? {
        if case .failed(let error) = outcome { return error }
        Issue.record("login unexpectedly succeeded")
        return nil
    }

    // MARK: -

    func loginWithoutAuthentication() throws {
        // tgt's defaults are InitialR2T=Yes and digests None: with them the OR / list rules give Yes and None.
        let defaults = try #require(expectComplete(try login(configuration(
            proposal: .init(headerDigests: [.crc32c, .none], dataDigests: [.crc32c, .none])))))
        #expect(defaults.initialR2T == true)
        #expect(defaults.headerDigest == .none)
        // Let tgt allow CRC32C and InitialR2T=No, then both sides get what the initiator prefers.
        for (name, value) in [("HeaderDigest", "CRC32C,None"), ("DataDigest", "CRC32C,None"), ("InitialR2T", "No")] {
            try tgt.tgtadm(["--op", "update", "--mode", "target", "--tid", "1", "--name", name, "--value", value])
        }
        let parameters = try #require(expectComplete(try login(configuration(
            proposal: .init(headerDigests: [.crc32c, .none], dataDigests: [.crc32c, .none])))))
        #expect(parameters.targetPortalGroupTag == 1)
        #expect(parameters.headerDigest == .crc32c)
        #expect(parameters.dataDigest == .crc32c)
        #expect(parameters.initialR2T == false)
        #expect(parameters.immediateData == true)
        #expect(parameters.firstBurstLength <= parameters.maxBurstLength)
        #expect(parameters.targetMaxRecvDataSegmentLength >= 512)
    }

    func unknownTargetIsNotFound() throws {
        var config = configuration()
        config.targetName = "iqn.2026-11.test.login:missing"
        let error = try #require(expectFailure(try login(config)))
        #expect(error.status == .notFound, "\(error)")
        #expect(error.isPermanent, "RFC 7143 §11.13.5: class 2 is not tried again")
    }

    func oneWayCHAPMD5() throws {
        try tgt.addAccount(tid: 1, user: "alice", password: "alice-secret-12")
        #expect(expectComplete(try login(configuration(chap: .init(username: "alice", secret: "alice-secret-12")))) != nil)
        // Wrong secret: authentication failure from the target.
        let error = try #require(expectFailure(try login(configuration(chap: .init(username: "alice", secret: "wrong-secret-12")))))
        #expect(error.status == .authenticationFailure, "\(error)")
        #expect(error.isPermanent)
        // No credentials while the target requires CHAP.
        let missing = try #require(expectFailure(try login(configuration())))
        #expect(missing.kind == .authenticationMethodRejected || missing.status?.statusClass == 2, "\(missing)")
        #expect(missing.isPermanent)
    }

    /// tgt answers CHAP_A=7 as SHA-1 (see `CHAPAlgorithm`); the login must still succeed, directly or after
    /// the MD5 retry when tgt's random challenge happened to be 32 bytes long.
    func strongerAlgorithmsWithTgt() throws {
        try tgt.addAccount(tid: 1, user: "bob", password: "bob-secret-1234")
        var retries = 0
        for _ in 0..<3 {
            let (outcome, retried) = try loginWithFallback(configuration(
                chap: .init(username: "bob", secret: "bob-secret-1234"), algorithms: [.sha3_256, .sha256, .sha1, .md5]))
            #expect(expectComplete(outcome) != nil)
            if retried { retries += 1 }
        }
        // tgt picks 7 from "8,7,6,5"; the SHA-1 reading works unless its challenge is 32 bytes (1 in 25).
        #expect(retries < 3)
    }

    func mutualCHAP() throws {
        try tgt.addAccount(tid: 1, user: "carol", password: "carol-secret-12")
        try tgt.addAccount(tid: 1, user: "target-id", password: "target-secret-9", outgoing: true)
        let good = CHAPCredentials(username: "carol", secret: "carol-secret-12",
                                   mutual: .init(username: "target-id", secret: "target-secret-9"))
        #expect(expectComplete(try login(configuration(chap: good))) != nil)
        let (sha, _) = try loginWithFallback(configuration(chap: good, algorithms: [.sha256, .md5]))
        #expect(expectComplete(sha) != nil)
        // The target proves a different secret than we expect: the initiator refuses the target.
        var wrongTarget = good
        wrongTarget.mutual = .init(username: "target-id", secret: "not-the-target-9")
        let error = try #require(expectFailure(try login(configuration(chap: wrongTarget))))
        #expect(error.kind == .targetAuthenticationFailed, "\(error)")
        var wrongName = good
        wrongName.mutual = .init(username: "someone-else", secret: "target-secret-9")
        #expect(try #require(expectFailure(try login(configuration(chap: wrongName)))).kind == .targetAuthenticationFailed)
    }

    func discoveryAndSendTargets() throws {
        let config = LoginConfiguration(initiatorName: Self.initiatorName, targetName: nil)
        guard case .complete(let parameters, _, let connection) = try login(config) else {
            Issue.record("discovery login failed")
            return
        }
        #expect(parameters.sessionType == .discovery)
        try connection.send(opcode: 0x04, flags: 0x80, data: SendTargets.requestKeys().encoded(), cmdSN: 1)
        var text = ByteBuffer()
        while true {
            let (opcode, header, data) = try connection.receive()
            #expect(opcode == 0x24)
            var chunk = data
            text.writeBuffer(&chunk)
            if header[1] & 0x40 == 0 { break }  // C bit clear: the text is complete
            try connection.send(opcode: 0x04, flags: 0x80, data: ByteBuffer(), cmdSN: 1)
        }
        let targets = try SendTargets.parse(text)
        #expect(targets.map(\.name) == [Self.targetName])
        #expect(targets.first?.portals.contains(TargetPortalAddress(host: "127.0.0.1", port: tgt.port, portalGroupTag: 1)) == true,
                "\(targets)")
    }
}
