@testable import ISCSIClient
import ISCSIProtocol
import NIOCore
import Testing

/// RFC 7143 §4.2.2.1 command numbering, no IO.
struct CommandWindowTests {
    @Test func assignsAndClosesAtMaxCmdSN() {
        var w = CommandWindow(cmdSN: SerialNumber(10), expCmdSN: SerialNumber(10), maxCmdSN: SerialNumber(12), expStatSN: SerialNumber(0))
        #expect(w.available == 3)
        #expect(w.assignCmdSN() == SerialNumber(10))
        #expect(w.assignCmdSN() == SerialNumber(11))
        #expect(w.assignCmdSN() == SerialNumber(12))
        #expect(!w.isOpen)
        #expect(w.available == 0)
        #expect(w.immediateCmdSN == SerialNumber(13))  // immediate PDUs do not advance CmdSN
        let r1 = w.update(expCmdSN: SerialNumber(13), maxCmdSN: SerialNumber(14))
        #expect(r1)
        #expect(w.isOpen)
        #expect(w.available == 2)
    }

    @Test func windowAcrossWraparound() {
        var w = CommandWindow(cmdSN: SerialNumber(0xFFFF_FFFE), expCmdSN: SerialNumber(0xFFFF_FFFE), maxCmdSN: SerialNumber(1), expStatSN: SerialNumber(0xFFFF_FFFF))
        #expect(w.available == 4)
        for expected: UInt32 in [0xFFFF_FFFE, 0xFFFF_FFFF, 0, 1] { #expect(w.assignCmdSN().rawValue == expected) }
        #expect(!w.isOpen)
        w.update(expCmdSN: SerialNumber(2), maxCmdSN: SerialNumber(5))
        #expect(w.available == 4)
        let r2 = w.receiveStatSN(SerialNumber(0xFFFF_FFFF))
        #expect(r2)
        #expect(w.expStatSN == SerialNumber(0))
    }

    @Test func staleOrInvalidUpdatesAreIgnored() {
        var w = CommandWindow(cmdSN: SerialNumber(20), expCmdSN: SerialNumber(20), maxCmdSN: SerialNumber(30), expStatSN: SerialNumber(0))
        // Older values (reordered PDU) never shrink the window.
        let r3 = w.update(expCmdSN: SerialNumber(15), maxCmdSN: SerialNumber(25))
        #expect(!r3)
        #expect(w.maxCmdSN == SerialNumber(30))
        // MaxCmdSN < ExpCmdSN - 1: both ignored (RFC 7143 §4.2.2.1).
        let r4 = w.update(expCmdSN: SerialNumber(40), maxCmdSN: SerialNumber(35))
        #expect(!r4)
        #expect(w.expCmdSN == SerialNumber(20))
        #expect(w.maxCmdSN == SerialNumber(30))
        // MaxCmdSN = ExpCmdSN - 1 is a valid closed window.
        let r5 = w.update(expCmdSN: SerialNumber(31), maxCmdSN: SerialNumber(30))
        #expect(!r5)
        #expect(w.expCmdSN == SerialNumber(31))
    }

    @Test func statSNGapsAndDuplicates() {
        var w = CommandWindow(cmdSN: SerialNumber(1), expCmdSN: SerialNumber(1), maxCmdSN: SerialNumber(1), expStatSN: SerialNumber(5))
        let r6 = w.receiveStatSN(SerialNumber(4))
        #expect(!r6)  // duplicate
        #expect(w.expStatSN == SerialNumber(5))
        let r7 = w.receiveStatSN(SerialNumber(8))
        #expect(!r7)  // gap
        #expect(w.expStatSN == SerialNumber(9))
        let r8 = w.receiveStatSN(SerialNumber(9))
        #expect(r8)
    }
}

/// RFC 7143 §13.10, §13.11, §13.14 and §11.7: how write data is cut, no IO.
struct DataOutPlannerTests {
    func params(immediate: Bool, initialR2T: Bool, first: Int = 65536, mrdsl: Int = 8192) -> SessionParameters {
        SessionParameters(
            targetMaxRecvDataSegmentLength: mrdsl, maxBurstLength: 262_144, firstBurstLength: first,
            initialR2T: initialR2T, immediateData: immediate
        )
    }

    @Test(arguments: [
        // (immediateData, initialR2T, total, expected immediate, expected unsolicited)
        (true, false, 1 << 20, 8192, 65536),
        (true, true, 1 << 20, 8192, 8192),
        (false, false, 1 << 20, 0, 65536),
        (false, true, 1 << 20, 0, 0),
        (true, false, 4096, 4096, 4096),
        (true, false, 20000, 8192, 20000),
        (true, false, 0, 0, 0),
    ])
    func unsolicitedAmounts(row: (Bool, Bool, Int, Int, Int)) {
        let p = params(immediate: row.0, initialR2T: row.1)
        #expect(DataOutPlanner.immediateLength(total: row.2, parameters: p) == row.3)
        #expect(DataOutPlanner.unsolicitedLength(total: row.2, parameters: p) == row.4)
    }

    @Test func immediateBoundedByFirstBurst() {
        let p = params(immediate: true, initialR2T: true, first: 4096, mrdsl: 262_144)
        #expect(DataOutPlanner.immediateLength(total: 1 << 20, parameters: p) == 4096)
    }

    @Test(arguments: [(0, 262_144, 8192), (65536, 100_000, 8192), (512, 512, 8192), (0, 8193, 8192), (0, 1, 1)])
    func segmentsTileTheRange(offset: Int, length: Int, maxSegment: Int) {
        let segments = Array(DataOutPlanner.segments(offset: offset, length: length, maxSegment: maxSegment, targetTransferTag: 7))
        var next = offset
        for (i, s) in segments.enumerated() {
            #expect(s.bufferOffset == next)
            #expect(s.length > 0 && s.length <= maxSegment)
            #expect(s.dataSN == UInt32(i))
            #expect(s.final == (i == segments.count - 1))
            #expect(s.targetTransferTag == 7)
            next += s.length
        }
        #expect(next == offset + length)
        #expect(segments.count == (length + maxSegment - 1) / maxSegment)
    }
}

struct TaskTableTests {
    @Test func tagsAreUniqueAndStaleTagsMiss() {
        var table = TaskTable<Int>(capacity: 4)
        let a = table.insert { _ in 1 }!
        let b = table.insert { _ in 2 }!
        #expect(a != b)
        #expect(table.count == 2)
        let slotA = table.slot(for: a)!
        #expect(table.remove(slot: slotA) == 1)
        #expect(table.slot(for: a) == nil)  // finished task
        let c = table.insert { _ in 3 }!
        #expect(c != a)  // same slot, new generation
        #expect(table.slot(for: a) == nil)
        #expect(table[slot: table.slot(for: c)!] == 3)
        #expect(table.slot(for: 0xFFFF_FFFF) == nil)
    }

    @Test func fullAndNeverReservedTag() {
        var table = TaskTable<Int>(capacity: 2)
        var tags = Set<UInt32>()
        for round in 0..<70_000 {
            let t = table.insert { _ in round }!
            #expect(t != 0xFFFF_FFFF)
            #expect(t & 0xFFFF < 2)
            tags.insert(t)
            if round % 2 == 1 {
                for tag in tags { if let s = table.slot(for: tag) { _ = table.remove(slot: s) } }
                tags.removeAll()
            }
        }
        while !table.isFull { _ = table.insert { _ in 0 } }
        #expect(table.insert { _ in 0 } == nil)
        let removed = table.removeAll()
        #expect(removed.count == 2)
        #expect(table.isEmpty)
    }

    @Test func modifyInPlace() {
        var table = TaskTable<[Int]>(capacity: 1)
        let t = table.insert { _ in [Int]() }!
        let slot = table.slot(for: t)!
        table.modify(slot: slot) { $0.append(5) }
        #expect(table[slot: slot] == [5])
    }
}

@Suite struct BusyPollPolicyTests {
    @Test func startsSmallAndNeverExceedsTheMaximum() {
        #expect(BusyPollPolicy(maximumNanoseconds: 100_000).windowNanoseconds == 4_000)
        #expect(BusyPollPolicy(maximumNanoseconds: 2_000).windowNanoseconds == 2_000)
        var p = BusyPollPolicy(maximumNanoseconds: 100_000)
        var seen: [UInt64] = []
        for _ in 0..<8 {
            p.windowExpired(thenSlept: 30_000)  // the answer came 30 us after the window: a longer one would have caught it
            seen.append(p.windowNanoseconds)
        }
        #expect(seen == [8_000, 16_000, 32_000, 64_000, 100_000, 100_000, 100_000, 100_000])
    }

    @Test func longSleepsShrinkTheWindowToNothing() {
        var p = BusyPollPolicy(maximumNanoseconds: 100_000)
        for _ in 0..<5 { p.windowExpired(thenSlept: 50_000) }
        #expect(p.windowNanoseconds == 100_000)
        p.windowExpired(thenSlept: 5_000_000)  // idle: polling only burns CPU
        #expect(p.windowNanoseconds == 50_000)
        for _ in 0..<4 { p.windowExpired(thenSlept: 5_000_000) }
        #expect(p.windowNanoseconds == 0)  // 3_125 is below the 4 us start: off
        p.windowExpired(thenSlept: 5_000_000)
        #expect(p.windowNanoseconds == 0)
    }

    @Test func aShortGapRestartsPollingFromZero() {
        var p = BusyPollPolicy(maximumNanoseconds: 100_000)
        for _ in 0..<3 { p.windowExpired(thenSlept: 10_000_000) }
        #expect(p.windowNanoseconds == 0)
        p.windowExpired(thenSlept: 80_000)
        #expect(p.windowNanoseconds == BusyPollPolicy.startNanoseconds)
        p.windowExpired(thenSlept: 100_000)  // exactly the maximum still counts as "soon"
        #expect(p.windowNanoseconds == 8_000)
        p.windowExpired(thenSlept: 100_001)
        #expect(p.windowNanoseconds == 4_000)
    }
}

/// The NOP-Out ping on its own (RFC 7143 §11.18), no IO.
@Suite struct KeepAliveTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    @Test func pingsAfterTheIdleIntervalAndTimesOutWithoutAnswer() {
        var k = KeepAlive(interval: .seconds(5), timeout: .seconds(3))
        #expect(k.tickInterval == .milliseconds(1500))
        #expect(k.tick(now: t0 + .seconds(4), lastReceive: t0) == .wait)
        #expect(k.tick(now: t0 + .seconds(5), lastReceive: t0) == .sendPing)
        #expect(k.tick(now: t0 + .seconds(8), lastReceive: t0) == .wait, "3 s is not more than the timeout")
        #expect(k.tick(now: t0 + .seconds(9), lastReceive: t0) == .timedOut)
    }

    @Test func anythingReceivedAfterThePingSettlesIt() {
        var k = KeepAlive(interval: .seconds(5), timeout: .seconds(3))
        #expect(k.tick(now: t0 + .seconds(5), lastReceive: t0) == .sendPing)
        // A late Data-In, not the NOP-In: the link is alive (open-iscsi #97).
        #expect(k.tick(now: t0 + .seconds(9), lastReceive: t0 + .milliseconds(5001)) == .wait)
        #expect(k.pingSentAt == nil)
        #expect(k.tick(now: t0 + .seconds(11), lastReceive: t0 + .milliseconds(5001)) == .sendPing)
        k.pingAnswered()
        #expect(k.tick(now: t0 + .seconds(20), lastReceive: t0 + .milliseconds(5001)) == .sendPing, "answered: a new ping, not a timeout")
    }

    @Test func tickIntervalHasAFloor() {
        #expect(KeepAlive(interval: .milliseconds(4), timeout: .seconds(1)).tickInterval == .milliseconds(10))
    }
}

/// ABORT TASK → LOGICAL UNIT RESET → connection (RFC 7143 §7.11, §11.5, §11.6) on its own, no IO.
@Suite struct CommandTimeoutLadderTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    @Test func climbsOneStepPerTimeout() {
        var ladder = CommandTimeoutLadder(commandTimeout: .seconds(30), taskManagementTimeout: .seconds(4))
        #expect(ladder.tickInterval == .seconds(1))
        #expect(!ladder.commandExpired(sentAt: t0, now: t0 + .seconds(30)))
        #expect(ladder.commandExpired(sentAt: t0, now: t0 + .seconds(31)))
        #expect(ladder.escalate(victim: 7, lun: 1, now: t0) == .abortTask)
        #expect(ladder.inFlight == CommandTimeoutLadder.Function(step: .abortTask, sentAt: t0, victim: 7, lun: 1))
        #expect(ladder.expiredFunction(now: t0 + .seconds(4)) == nil)
        #expect(ladder.expiredFunction(now: t0 + .seconds(5))?.step == .abortTask)
        #expect(ladder.escalate(victim: 7, lun: 1, now: t0 + .seconds(5)) == .logicalUnitReset)
        #expect(ladder.escalate(victim: 7, lun: 1, now: t0 + .seconds(10)) == .connectionRecovery)
        #expect(ladder.inFlight == nil)
    }

    @Test func answersSettleOrEscalateAndOnlyACompletionWithoutAFunctionRestarts() {
        var ladder = CommandTimeoutLadder(commandTimeout: .seconds(30), taskManagementTimeout: .seconds(4))
        #expect(ladder.receiveResponse(0) == .unsolicited)
        _ = ladder.escalate(victim: 7, lun: 1, now: t0)
        ladder.commandCompleted()  // another command: the abort is still in flight, the ladder stays
        #expect(ladder.receiveResponse(5) == .refused(.init(step: .abortTask, sentAt: t0, victim: 7, lun: 1)))
        #expect(ladder.escalate(victim: 7, lun: 1, now: t0) == .logicalUnitReset)
        #expect(ladder.receiveResponse(1).isCompleted, "1: the task does not exist, it is gone")
        ladder.commandCompleted()
        #expect(ladder.escalate(victim: 8, lun: 1, now: t0) == .abortTask)
    }
}

extension CommandTimeoutLadder.OnResponse {
    var isCompleted: Bool { if case .completed = self { true } else { false } }
}
