@testable import ISCSIClient
import ISCSIProtocol
import NIOCore
import SCSI
import Testing

/// A target sending nonsense (random target PDUs, most of them nearly right: live tags, nearby sequence
/// numbers, plausible offsets) interleaved with submissions, logouts, text requests and timer ticks. The
/// machine must never trap, never send after closing, close at most once, and account for every command:
/// completed, failed or handed back to the session.
struct ConnectionStateMachineHostileTests {
    /// xorshift64* (Vigna): deterministic runs, so a failure names its seed.
    struct Xorshift: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state ^= state >> 12
            state ^= state << 25
            state ^= state >> 27
            return state &* 0x2545_F491_4F6C_DD1D
        }
    }

    static let opcodes: [Opcode] = [
        .dataIn, .dataIn, .dataIn, .scsiResponse, .scsiResponse, .readyToTransfer, .readyToTransfer, .nopIn, .asyncMessage,
        .reject, .logoutResponse, .taskManagementResponse, .textResponse, .loginResponse, .nopOut, Opcode(rawValue: 0x3C),
    ]

    func randomPDU(_ rng: inout Xorshift, _ d: MachineDriver, tags: [UInt32]) -> ISCSIPDU {
        func near(_ value: SerialNumber) -> UInt32 { value.rawValue &+ UInt32.random(in: 0...4, using: &rng) &- 2 }
        var h = BasicHeaderSegment(opcode: Self.opcodes.randomElement(using: &rng)!)
        h.flags = [0x80, 0x81, 0x83, 0x00, 0xC0, UInt8.random(in: 0...255, using: &rng)].randomElement(using: &rng)!
        h.byte2 = UInt8.random(in: 0...6, using: &rng)
        h.byte3 = [0, 0, 2, 8, 0x28, UInt8.random(in: 0...255, using: &rng)].randomElement(using: &rng)!
        h.lun = Bool.random(using: &rng) ? LogicalUnitNumber(1).encoded : UInt64.random(in: 0...UInt64.max, using: &rng)
        let fixed = [reservedTaskTag, ConnectionStateMachine.pingITT, ConnectionStateMachine.textITT,
                     ConnectionStateMachine.logoutITT, ConnectionStateMachine.taskManagementITT, UInt32.random(in: 0...UInt32.max, using: &rng)]
        h.initiatorTaskTag = (tags.isEmpty || Bool.random(using: &rng) ? fixed : tags).randomElement(using: &rng)!
        h.field20 = [reservedTaskTag, 0, 1, 0x500].randomElement(using: &rng)!
        h.field24 = near(d.statSN)
        h.field28 = near(d.expCmdSN)
        h.field32 = Bool.random(using: &rng) ? near(d.maxCmdSN) : UInt32.random(in: 0...UInt32.max, using: &rng)
        h.field36 = [0, 1, 2, UInt32.random(in: 0...UInt32.max, using: &rng)].randomElement(using: &rng)!
        h.field40 = UInt32.random(in: 0...140, using: &rng) * 512
        h.field44 = UInt32.random(in: 0...70000, using: &rng)
        let length = [0, 0, 2, 18, 512, 4096, 8192, Int.random(in: 0...9000, using: &rng)].randomElement(using: &rng)!
        var data = ByteBuffer(repeating: UInt8.random(in: 0...255, using: &rng), count: length)
        if length >= 2, Bool.random(using: &rng) { data.setInteger(UInt16.random(in: 0...20, using: &rng), at: 0) }
        return ISCSIPDU(header: h, data: data)
    }

    /// What the initiator sent that a well-behaved target would answer next.
    struct Script {
        struct Read { var length: Int; var received = 0; var dataSN: UInt32 = 0 }
        var reads: [UInt32: Read] = [:]
        var writes: [UInt32: UInt32] = [:]  // ITT -> next R2TSN
        var requests: [ISCSIPDU] = []  // Logout, Text and TMF requests not answered yet

        mutating func record(_ pdus: [ISCSIPDU]) {
            for pdu in pdus {
                switch pdu.opcode {
                case .scsiCommand:
                    let command = try? ISCSIPDU.SCSICommand(pdu)
                    if command?.write == true { writes[pdu.header.initiatorTaskTag] = 0 } else {
                        reads[pdu.header.initiatorTaskTag] = Read(length: Int(command?.expectedDataTransferLength ?? 0))
                    }
                case .logoutRequest, .textRequest, .taskManagementRequest:
                    requests.append(pdu)
                default:
                    break
                }
            }
        }

        /// The answer a correct target could send now, if any.
        mutating func answer(_ rng: inout Xorshift, _ d: MachineDriver) -> ISCSIMessage? {
            if let request = requests.first, Bool.random(using: &rng) {
                requests.removeFirst()
                switch request.opcode {
                case .logoutRequest: return d.logoutResponse(itt: request.header.initiatorTaskTag)
                case .taskManagementRequest: return d.taskManagementResponse([0, 1, 5].randomElement(using: &rng)!)
                default:
                    var response = ISCSIPDU.TextResponse()
                    response.initiatorTaskTag = request.header.initiatorTaskTag
                    response.final = Bool.random(using: &rng)
                    response.continue = !response.final
                    response.targetTransferTag = response.final ? reservedTaskTag : 3
                    response.data = ByteBuffer(string: "TargetName=iqn.2026-11.test:t\0")
                    d.stamp(&response) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
                    d.statSN += 1
                    return .textResponse(response)
                }
            }
            if let (itt, read) = reads.first {
                let length = min(4096, read.length - read.received)
                let last = read.received + length == read.length
                let statusHere = last && Bool.random(using: &rng)
                if length == 0 {
                    reads[itt] = nil
                    return d.response(itt: itt)
                }
                let message = d.dataIn(itt: itt, dataSN: read.dataSN, offset: UInt32(read.received),
                                       data: ByteBuffer(repeating: 1, count: length), status: statusHere ? 0 : nil)
                reads[itt]?.received += length
                reads[itt]?.dataSN += 1
                if statusHere { reads[itt] = nil }
                return message
            }
            if let (itt, r2tSN) = writes.first {
                if r2tSN == 0, Bool.random(using: &rng) {
                    writes[itt] = 1
                    return d.r2t(itt: itt, ttt: 0x40, r2tSN: 0, offset: 16384, length: 16384)
                }
                writes[itt] = nil
                return d.response(itt: itt, status: [0, 0, 0x28, 0x08].randomElement(using: &rng)!)
            }
            return nil
        }
    }

    @Test(arguments: 0..<8)
    func randomTargetTrafficNeverTrapsAndLosesNoCommand(seed: UInt64) throws {
        var rng = Xorshift(state: (seed + 1) &* 0x1234_5678_9ABC_DEF1)
        for _ in 0..<30 {
            let d = try MachineDriver(window: 2, noopOutInterval: .seconds(2), commandTimeout: .seconds(3))
            try d.login()
            if Bool.random(using: &rng) { d.recordHandBacks() }
            var futures: [EventLoopFuture<SCSICommandResult>] = []
            var tags: [UInt32] = []
            var closes = 0
            var script = Script()
            func observe(_ actions: [ConnectionAction]) {
                let pdus = MachineDriver.pdus(actions)
                #expect(closes == 0 || pdus.isEmpty, "sent after closing: \(pdus.map(\.opcode))")
                tags += pdus.filter { $0.opcode == .scsiCommand }.map(\.header.initiatorTaskTag)
                script.record(pdus)
                closes += actions.filter { if case .close = $0 { true } else { false } }.count
            }
            for _ in 0..<60 {
                switch UInt8.random(in: 0..<12, using: &rng) {
                case 0, 1:
                    for _ in 0..<Int.random(in: 1...3, using: &rng) {
                        let command = Bool.random(using: &rng)
                            ? SCSICommand(cdb: writeCDB(blocks: 64), dataOut: ByteBuffer(repeating: 7, count: 32768))
                            : SCSICommand(cdb: readCDB(blocks: 16), expectedDataInLength: 8192, segmentedDataIn: Bool.random(using: &rng))
                        let (future, actions) = d.submit(command)
                        futures.append(future)
                        observe(actions)
                    }
                case 2:
                    d.machine.beginLogout(promise: d.loop.makePromise(of: Void.self))
                    observe(d.take())
                case 3:
                    d.machine.sendText(SendTargets.requestKeys("All"), promise: d.loop.makePromise(of: ByteBuffer.self))
                    observe(d.take())
                case 4:
                    // The login and logout timers fire only when armed in real life; now and then anyway.
                    let timer = [ConnectionTimer.keepAlive, .commandTimeout, .keepAlive, .commandTimeout, .keepAlive,
                                 .commandTimeout, .logout, .login].randomElement(using: &rng)!
                    observe(d.tick(timer, after: .milliseconds(Int64.random(in: 0...4000, using: &rng))))
                case 5:
                    d.machine.sendQueuedCommands(now: d.now)
                    observe(d.take())
                case 6..<11:
                    guard let answer = script.answer(&rng, d) else { continue }
                    if Bool.random(using: &rng) {  // the window slides now and then
                        d.expCmdSN += 1
                        d.maxCmdSN += 1
                    }
                    d.machine.receivedBytes(at: d.now)
                    d.machine.receive(answer.pdu, now: d.now)
                    d.machine.sendQueuedCommands(now: d.now)
                    observe(d.take())
                default:
                    d.machine.receivedBytes(at: d.now)
                    d.machine.receive(randomPDU(&rng, d, tags: tags), now: d.now)
                    observe(d.take())
                }
            }
            #expect(closes <= 1)
            d.machine.connectionClosed()
            observe(d.take())
            #expect(d.machine.isClosed)
            let handedBack = d.handedBack.flatMap(\.commands).map(\.promise.futureResult)
            for future in futures {
                #expect(outcome(future) != nil || handedBack.contains { $0 === future }, "a command was lost")
            }
        }
    }
}
