@testable import ISCSIClient
import ISCSIProtocol
import NIOCore
import SCSI
import Testing

/// Pure recovery pieces: reconnect schedule, reinstatement decision, login retry classification, timeout ladder.
struct RecoveryPolicyTests {
    @Test func backoffStartsWithTime2WaitThenDoublesUpToTheCap() {
        let b = ReconnectBackoff(time2Wait: .seconds(2), step: .milliseconds(250), maximum: .seconds(4))
        #expect(b.delay(beforeAttempt: 0) == .seconds(2))
        #expect(b.delay(beforeAttempt: 1) == .milliseconds(250))
        #expect(b.delay(beforeAttempt: 2) == .milliseconds(500))
        #expect(b.delay(beforeAttempt: 3) == .seconds(1))
        #expect(b.delay(beforeAttempt: 4) == .seconds(2))
        #expect(b.delay(beforeAttempt: 5) == .seconds(4))
        #expect(b.delay(beforeAttempt: 6) == .seconds(4))
        #expect(b.delay(beforeAttempt: 1_000_000) == .seconds(4))
        #expect(b.delay(beforeAttempt: -3) == .seconds(2))
    }

    @Test func backoffClampsNonsense() {
        let b = ReconnectBackoff(time2Wait: .seconds(-5), step: .zero, maximum: .zero)
        #expect(b.delay(beforeAttempt: 0) == .zero)
        #expect(b.delay(beforeAttempt: 1) == .milliseconds(1))
        #expect(b.delay(beforeAttempt: 64) == .milliseconds(1))
    }

    @Test func recoveryIsSessionReinstatementWithTSIHZeroAtEveryLevel() {
        for erl in 0...2 {
            let plan = SessionRecoveryLogin.decide(errorRecoveryLevel: erl, isid: 0x80_1234_5678, tsih: 0x22)
            #expect(plan == .sessionReinstatement(isid: 0x80_1234_5678))
            #expect(plan.loginTSIH == 0)
        }
        #expect(SessionRecoveryLogin.connectionReinstatement(isid: 1, tsih: 9, cid: 0).loginTSIH == 9)
    }

    @Test func loginFailuresClassified() {
        let auth = ISCSISessionError.login(LoginError(.rejectedByTarget(LoginStatus(statusClass: 2, statusDetail: 1)), "auth"))
        let busy = ISCSISessionError.login(LoginError(.rejectedByTarget(LoginStatus(statusClass: 3, statusDetail: 1)), "busy"))
        #expect(!LoginRetryPolicy.isTransient(auth))
        #expect(LoginRetryPolicy.isTransient(busy))
        #expect(LoginRetryPolicy.isTransient(ISCSISessionError.connectionClosed))
        #expect(LoginRetryPolicy.isTransient(ISCSISessionError.timeout("login")))
        #expect(!LoginRetryPolicy.isTransient(ISCSISessionError.identityMismatch("x")))
        #expect(!LoginRetryPolicy.isTransient(ISCSISessionError.login(LoginError(.targetAuthenticationFailed, "m"))))
        #expect(LoginRetryPolicy(retries: -2).retries == 0)
        #expect(LoginRetryPolicy(retries: nil).retries == nil)
    }

    @Test func timeoutLadderEscalatesAbortThenResetThenRecovery() {
        var ladder = TimeoutEscalation()
        #expect(ladder.escalate() == .abortTask)
        #expect(ladder.escalate() == .logicalUnitReset)
        #expect(ladder.escalate() == .connectionRecovery)
        #expect(ladder.escalate() == .connectionRecovery)
        ladder.reset()
        #expect(ladder.escalate() == .abortTask)
    }

    @Test func errorsDescribeThemselves() {
        #expect("\(ISCSISessionError.replacementTimeout(seconds: 120))".contains("120 s"))
        #expect("\(ISCSISessionError.identityMismatch("serial A → B"))".contains("serial A → B"))
        #expect(TimeAmount.milliseconds(1500).seconds == 2)
    }
}

struct AdaptiveQueueDepthTests {
    func step(_ d: inout AdaptiveQueueDepth, _ status: SCSIStatus) -> Bool { d.record(status) }

    @Test func taskSetFullHalvesAndGoodGrowsBackSlowly() {
        var d = AdaptiveQueueDepth(maximum: 32, growAfter: 4)
        #expect(d.current == 32)
        #expect(step(&d, .taskSetFull))
        #expect(d.current == 16)
        #expect(step(&d, .busy))
        #expect(d.current == 8)
        for _ in 0..<3 { let changed = step(&d, .good); #expect(!changed) }
        #expect(step(&d, .good))
        #expect(d.current == 9)
        // A CHECK CONDITION neither lowers nor counts as GOOD.
        for _ in 0..<3 { _ = d.record(.good) }
        _ = d.record(.checkCondition)
        #expect(d.current == 9)
        for _ in 0..<10 { _ = d.record(.taskSetFull) }
        #expect(d.current == 1)
        #expect(!step(&d, .taskSetFull))
        for _ in 0..<1000 { _ = d.record(.good) }
        #expect(d.current == 32)
    }
}
