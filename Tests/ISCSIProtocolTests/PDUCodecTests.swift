import ISCSIProtocol
import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing

func bytes(_ s: String) -> ByteBuffer {
    var b = ByteBuffer()
    b.writeString(s)
    return b
}

/// One sample of every PDU kind (RFC 7143 §11), with distinctive field values.
enum Samples {
    static let lun: UInt64 = 0x0001_0000_0000_0000

    static var all: [ISCSIMessage] {
        var cmd = ISCSIPDU.SCSICommand()
        cmd.immediate = false
        cmd.final = false
        cmd.write = true
        cmd.read = false
        cmd.attribute = .ordered
        cmd.lun = lun
        cmd.initiatorTaskTag = 0x0102_0304
        cmd.expectedDataTransferLength = 1 << 20
        cmd.cmdSN = SerialNumber(0xFFFF_FFFF)
        cmd.expStatSN = SerialNumber(7)
        cmd.cdb = ISCSIPDU.CDBField(bytes: [0x8A, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0x08, 0, 0, 0])
        cmd.data = bytes("immediate data!")

        var bidi = ISCSIPDU.SCSICommand()
        bidi.read = true
        bidi.write = true
        bidi.cdb = ISCSIPDU.CDBField(bytes: (0..<16).map { UInt8($0) })
        bidi.additionalHeaderSegments = [
            .extendedCDB([16, 17, 18, 19, 20]), .bidirectionalReadExpectedDataTransferLength(4096),
        ]

        var rsp = ISCSIPDU.SCSIResponse()
        rsp.residualUnderflow = true
        rsp.status = 0x02
        rsp.initiatorTaskTag = 9
        rsp.statSN = SerialNumber(100)
        rsp.expCmdSN = SerialNumber(101)
        rsp.maxCmdSN = SerialNumber(228)
        rsp.expDataSN = SerialNumber(3)
        rsp.residualCount = 512
        var sense = ByteBuffer()
        sense.writeInteger(UInt16(18))
        sense.writeBytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0])
        rsp.data = sense

        var tmf = ISCSIPDU.TaskManagementRequest()
        tmf.function = .logicalUnitReset
        tmf.lun = lun
        tmf.initiatorTaskTag = 44
        tmf.cmdSN = SerialNumber(5)
        tmf.expStatSN = SerialNumber(6)
        tmf.refCmdSN = SerialNumber(4)
        tmf.expDataSN = SerialNumber(2)
        var tmfRsp = ISCSIPDU.TaskManagementResponse()
        tmfRsp.response = 1
        tmfRsp.initiatorTaskTag = 44
        tmfRsp.statSN = SerialNumber(8)

        var dataOut = ISCSIPDU.DataOut()
        dataOut.final = true
        dataOut.lun = lun
        dataOut.initiatorTaskTag = 3
        dataOut.targetTransferTag = 0x55
        dataOut.dataSN = SerialNumber(2)
        dataOut.bufferOffset = 16384
        dataOut.data = bytes("abc")  // 3 bytes: exercises padding
        var dataIn = ISCSIPDU.DataIn()
        dataIn.final = true
        dataIn.statusPresent = true
        dataIn.residualOverflow = true
        dataIn.status = 0
        dataIn.initiatorTaskTag = 3
        dataIn.statSN = SerialNumber(0xFFFF_FFFF)
        dataIn.dataSN = SerialNumber(1)
        dataIn.bufferOffset = 8192
        dataIn.residualCount = 7
        dataIn.data = bytes("0123456789")
        var r2t = ISCSIPDU.ReadyToTransfer()
        r2t.lun = lun
        r2t.initiatorTaskTag = 3
        r2t.targetTransferTag = 0x99
        r2t.r2tSN = SerialNumber(1)
        r2t.bufferOffset = 65536
        r2t.desiredDataTransferLength = 262_144
        var async = ISCSIPDU.AsyncMessage()
        async.event = .logoutRequested
        async.parameter3 = 10
        async.statSN = SerialNumber(12)
        var text = ISCSIPDU.TextRequest()
        text.initiatorTaskTag = 11
        text.data = bytes("SendTargets=All\0")
        var textRsp = ISCSIPDU.TextResponse()
        textRsp.final = false
        textRsp.continue = true
        textRsp.targetTransferTag = 0x1234
        textRsp.data = bytes("TargetName=iqn.x\0")
        var login = ISCSIPDU.LoginRequest()
        login.transit = true
        login.currentStage = 1
        login.nextStage = 3
        login.isid = 0x80_1234_5678_9A
        login.tsih = 0
        login.initiatorTaskTag = 0xFFF1
        login.connectionID = 2
        login.data = bytes("InitiatorName=iqn.a\0")
        var loginRsp = ISCSIPDU.LoginResponse()
        loginRsp.transit = true
        loginRsp.currentStage = 1
        loginRsp.nextStage = 3
        loginRsp.isid = 0x80_1234_5678_9A
        loginRsp.tsih = 0x0A0B
        loginRsp.statusClass = 2
        loginRsp.statusDetail = 1
        var logout = ISCSIPDU.LogoutRequest()
        logout.immediate = true
        logout.reason = .closeConnection
        logout.connectionID = 1
        var logoutRsp = ISCSIPDU.LogoutResponse()
        logoutRsp.time2Wait = 2
        logoutRsp.time2Retain = 20
        var snack = ISCSIPDU.SNACKRequest()
        snack.type = 1
        snack.begRun = 5
        snack.runLength = 2
        var reject = ISCSIPDU.Reject()
        reject.reason = .invalidPDUField
        var rejected = ByteBuffer()
        rejected.writeBasicHeaderSegment(cmd.pdu.header)
        reject.data = rejected
        var nopOut = ISCSIPDU.NOPOut()
        nopOut.initiatorTaskTag = 0xFFF2
        nopOut.data = bytes("ping")
        var nopIn = ISCSIPDU.NOPIn()
        nopIn.targetTransferTag = 0x77
        return [
            .scsiCommand(cmd), .scsiCommand(bidi), .scsiResponse(rsp), .taskManagementRequest(tmf),
            .taskManagementResponse(tmfRsp), .dataOut(dataOut), .dataIn(dataIn), .readyToTransfer(r2t),
            .asyncMessage(async), .textRequest(text), .textResponse(textRsp), .loginRequest(login),
            .loginResponse(loginRsp), .logoutRequest(logout), .logoutResponse(logoutRsp), .snackRequest(snack),
            .reject(reject), .nopOut(nopOut), .nopIn(nopIn),
        ]
    }
}

struct PDUCodecTests {
    static let digestModes = [DigestSettings.none, DigestSettings(header: true, data: false), DigestSettings(header: true, data: true)]

    @Test(arguments: digestModes)
    func everyPDURoundTrips(digests: DigestSettings) throws {
        for message in Samples.all {
            let pdu = message.pdu
            var wire = ByteBuffer()
            PDUEncoder(digests: digests).encode(pdu, into: &wire)
            #expect(wire.readableBytes % 4 == 0, "\(pdu.opcode) is padded")
            let parser = PDUParser(digests: digests, maxDataSegmentLength: 65536)
            let decoded = try #require(try parser.parse(&wire))
            #expect(wire.readableBytes == 0)
            #expect(decoded == pdu, "\(pdu.opcode)")
            // Typed view round trip: decoding the typed value and re-encoding gives the same PDU.
            let typed = try ISCSIMessage(decoded)
            #expect(typed.pdu == pdu, "\(pdu.opcode) typed")
        }
    }

    @Test func typedFieldsSurvive() throws {
        for message in Samples.all {
            var wire = ByteBuffer()
            PDUEncoder().encode(message.pdu, into: &wire)
            let decoded = try ISCSIMessage(try #require(try PDUParser(maxDataSegmentLength: 65536).parse(&wire)))
            switch (message, decoded) {
            case (.scsiCommand(let a), .scsiCommand(let b)):
                #expect(a.cdb == b.cdb && a.cmdSN == b.cmdSN && a.write == b.write && a.final == b.final)
                #expect(a.attribute == b.attribute && a.additionalHeaderSegments == b.additionalHeaderSegments)
                #expect(a.expectedDataTransferLength == b.expectedDataTransferLength && a.data == b.data)
            case (.scsiResponse(let a), .scsiResponse(let b)):
                #expect(a.status == b.status && a.residualUnderflow == b.residualUnderflow && a.residualCount == b.residualCount)
                #expect(b.senseData?.readableBytes == 18)
                #expect(b.signedResidual == 512)
            case (.dataIn(let a), .dataIn(let b)):
                #expect(a.statusPresent == b.statusPresent && a.dataSN == b.dataSN && a.bufferOffset == b.bufferOffset)
                #expect(b.signedResidual == -7 && a.data == b.data && a.statSN == b.statSN)
            case (.readyToTransfer(let a), .readyToTransfer(let b)):
                #expect(a.r2tSN == b.r2tSN && a.desiredDataTransferLength == b.desiredDataTransferLength && a.targetTransferTag == b.targetTransferTag)
            case (.loginRequest(let a), .loginRequest(let b)):
                #expect(a.isid == b.isid && a.tsih == b.tsih && a.currentStage == b.currentStage && a.nextStage == b.nextStage)
                #expect(a.connectionID == b.connectionID && a.transit == b.transit)
            case (.loginResponse(let a), .loginResponse(let b)):
                #expect(a.statusClass == b.statusClass && a.statusDetail == b.statusDetail && a.tsih == b.tsih)
            case (.logoutResponse(let a), .logoutResponse(let b)):
                #expect(a.time2Wait == b.time2Wait && a.time2Retain == b.time2Retain)
            case (.asyncMessage(let a), .asyncMessage(let b)):
                #expect(a.event == b.event && a.parameter3 == b.parameter3)
            case (.reject(let a), .reject(let b)):
                #expect(a.reason == b.reason)
                #expect(b.rejectedHeader?.opcode == .scsiCommand)
            case (.textResponse(let a), .textResponse(let b)):
                #expect(a.continue == b.continue && a.final == b.final && a.targetTransferTag == b.targetTransferTag)
            default:
                break
            }
        }
    }

    @Test func loginRequestWireLayout() {
        var login = ISCSIPDU.LoginRequest()
        login.transit = true
        login.currentStage = 1
        login.nextStage = 3
        login.isid = 0x80_1234_5678_9A
        login.tsih = 0x0BCD
        var wire = ByteBuffer()
        PDUEncoder().encode(login.pdu, into: &wire)
        let b = Array(wire.readableBytesView)
        #expect(b[0] == 0x43)  // I bit + opcode 0x03
        #expect(b[1] == 0x87)  // T, CSG=1, NSG=3
        #expect(Array(b[8..<14]) == [0x80, 0x12, 0x34, 0x56, 0x78, 0x9A])
        #expect(Array(b[14..<16]) == [0x0B, 0xCD])
    }

    @Test func rfcReadCommandHeaderDigest() throws {
        // RFC 7143 Appendix A.4: the header of a READ(10) command and its CRC.
        var cmd = ISCSIPDU.SCSICommand()
        cmd.immediate = false
        cmd.final = true
        cmd.read = true
        cmd.attribute = .untagged
        cmd.initiatorTaskTag = 0x1400_0000
        cmd.expectedDataTransferLength = 0x400
        cmd.cmdSN = SerialNumber(0x14)
        cmd.expStatSN = SerialNumber(0x18)
        cmd.cdb = ISCSIPDU.CDBField(bytes: [0x28, 0, 0, 0, 0, 0, 0, 0, 0x02, 0])
        var wire = ByteBuffer()
        PDUEncoder(digests: DigestSettings(header: true)).encode(cmd.pdu, into: &wire)
        #expect(wire.readableBytes == 52)
        let rfcHeader: [UInt8] = [
            0x01, 0xC0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x14, 0, 0, 0, 0, 0, 0x04, 0, 0, 0, 0, 0x14,
            0, 0, 0, 0x18, 0x28, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0,
        ]
        #expect(Array(wire.getBytes(at: 0, length: 48) ?? []) == rfcHeader)
        #expect(Array(wire.getBytes(at: 48, length: 4) ?? []) == [0x56, 0x3A, 0x96, 0xD9])
    }

    @Test(arguments: digestModes)
    func byteByByteDecoding(digests: DigestSettings) throws {
        var inputs: [(ByteBuffer, [ISCSIPDU])] = []
        var all = ByteBuffer()
        var expected: [ISCSIPDU] = []
        for message in Samples.all {
            var wire = ByteBuffer()
            PDUEncoder(digests: digests).encode(message.pdu, into: &wire)
            inputs.append((wire, [message.pdu]))
            all.writeImmutableBuffer(wire)
            expected.append(message.pdu)
        }
        inputs.append((all, expected))
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: inputs) {
            ISCSIPDUDecoder(parser: PDUParser(digests: digests, maxDataSegmentLength: 65536))
        }
    }

    @Test func partialInputLeavesBufferUntouched() throws {
        var wire = ByteBuffer()
        PDUEncoder(digests: DigestSettings(header: true, data: true)).encode(Samples.all[0].pdu, into: &wire)
        let parser = PDUParser(digests: DigestSettings(header: true, data: true), maxDataSegmentLength: 65536)
        for cut in [0, 1, 47, 48, 51, 52, 60, wire.readableBytes - 1] {
            var partial = wire.getSlice(at: 0, length: cut)!
            #expect(try parser.parse(&partial) == nil)
            #expect(partial.readableBytes == cut)
        }
    }

    @Test func dataSegmentIsAZeroCopySlice() throws {
        var dataIn = ISCSIPDU.DataIn()
        dataIn.initiatorTaskTag = 1
        dataIn.data = ByteBuffer(repeating: 0xAB, count: 4096)
        var wire = ByteBuffer()
        PDUEncoder().encode(dataIn.pdu, into: &wire)
        let pdu = try #require(try PDUParser(maxDataSegmentLength: 8192).parse(&wire))
        // The slice shares storage with the receive buffer.
        let sameStorage = wire.withUnsafeReadableBytes { whole in
            pdu.data.withUnsafeReadableBytes { part in part.baseAddress! == whole.baseAddress! - 4096 }
        }
        #expect(sameStorage)
    }
}

/// `PDUParser.frame` + `DataSegmentCollector`: the receive path for PDUs spread over several reads must
/// give exactly what `parse` gives for the same bytes, whatever the cuts, and check the same digests.
struct DataSegmentCollectorTests {
    static let digestModes = PDUCodecTests.digestModes

    /// Frames the header group from a contiguous copy, then feeds the rest in `chunk`-byte reads.
    func collect(_ wire: ByteBuffer, digests: DigestSettings, chunk: Int) throws -> ISCSIPDU {
        let parser = PDUParser(digests: digests, maxDataSegmentLength: 65536)
        var rest = wire
        let frame = try #require(try parser.frame(rest))
        rest.moveReaderIndex(forwardBy: frame.headerGroupLength)
        var collector = DataSegmentCollector(frame: frame)
        var done = collector.isComplete
        while !done {
            var read = rest.readSlice(length: min(chunk, rest.readableBytes))!
            done = collector.take(from: &read)
            #expect(done || read.readableBytes == 0, "a read is used up before the PDU is whole")
            if done { #expect(read.readableBytes == 0) }
        }
        #expect(rest.readableBytes == 0)
        var data = ByteBuffer()
        for piece in try collector.finish() { data.writeImmutableBuffer(piece) }
        return ISCSIPDU(header: frame.header, additionalHeaderSegments: frame.additionalHeaderSegments, data: data)
    }

    @Test(arguments: digestModes)
    func samePDUsAsParseWhateverTheCuts(digests: DigestSettings) throws {
        var big = ISCSIPDU.DataIn()
        big.initiatorTaskTag = 9
        big.data = ByteBuffer(bytes: (0..<40_001).map { UInt8(truncatingIfNeeded: $0 &* 13) })
        for message in Samples.all + [.dataIn(big)] {
            var wire = ByteBuffer()
            PDUEncoder(digests: digests).encode(message.pdu, into: &wire)
            var copy = wire
            let parsed = try #require(try PDUParser(digests: digests, maxDataSegmentLength: 65536).parse(&copy))
            for chunk in [1, 2, 3, 5, 4096, 65536] {
                #expect(try collect(wire, digests: digests, chunk: chunk) == parsed, "\(message.pdu.opcode) in \(chunk)-byte reads")
            }
        }
    }

    @Test func piecesAreSlicesOfTheReads() throws {
        var dataIn = ISCSIPDU.DataIn()
        dataIn.data = ByteBuffer(repeating: 1, count: 10_000)
        var wire = ByteBuffer()
        PDUEncoder().encode(dataIn.pdu, into: &wire)
        let frame = try #require(try PDUParser(maxDataSegmentLength: 65536).frame(wire))
        wire.moveReaderIndex(forwardBy: frame.headerGroupLength)
        var collector = DataSegmentCollector(frame: frame)
        var first = wire.readSlice(length: 6000)!
        let base = first.withUnsafeReadableBytes { $0.baseAddress! }
        let afterFirst = collector.take(from: &first)
        let afterSecond = collector.take(from: &wire)
        #expect(!afterFirst && afterSecond)
        let pieces = try collector.finish()
        #expect(pieces.map(\.readableBytes) == [6000, 4000])
        #expect(pieces[0].withUnsafeReadableBytes { $0.baseAddress! } == base)
    }

    /// A flipped byte anywhere in the data, the padding or the digest is caught, wherever the reads cut.
    @Test func dataDigestMismatchIsCaught() throws {
        let digests = DigestSettings(header: true, data: true)
        var dataIn = ISCSIPDU.DataIn()
        dataIn.data = ByteBuffer(bytes: (0..<1001).map { UInt8(truncatingIfNeeded: $0) })
        var wire = ByteBuffer()
        PDUEncoder(digests: digests).encode(dataIn.pdu, into: &wire)
        for position in [52, 52 + 500, 52 + 1001, 52 + 1003, wire.readableBytes - 1] {
            var bad = wire
            bad.setInteger(bad.getInteger(at: position, as: UInt8.self)! ^ 0x10, at: position)
            for chunk in [1, 7, 4096] {
                #expect(throws: ISCSIPDUError.self) { _ = try collect(bad, digests: digests, chunk: chunk) }
            }
        }
    }

    @Test func frameWaitsForTheWholeHeaderGroupAndChecksItsDigest() throws {
        let digests = DigestSettings(header: true, data: false)
        var wire = ByteBuffer()
        PDUEncoder(digests: digests).encode(Samples.all[0].pdu, into: &wire)
        let parser = PDUParser(digests: digests, maxDataSegmentLength: 65536)
        for cut in [0, 47, 48, 51] { #expect(try parser.frame(wire.getSlice(at: 0, length: cut)!) == nil) }
        #expect(try parser.frame(wire.getSlice(at: 0, length: 52)!)?.headerGroupLength == 52)
        wire.setInteger(UInt8(0xFF), at: 50)
        #expect(throws: ISCSIPDUError.self) { _ = try parser.frame(wire) }
    }
}

struct PDUMalformedTests {
    func wire(_ message: ISCSIMessage, digests: DigestSettings = .none) -> ByteBuffer {
        var w = ByteBuffer()
        PDUEncoder(digests: digests).encode(message.pdu, into: &w)
        return w
    }

    @Test func unknownAndVendorOpcodes() {
        for code: UInt8 in [0x07, 0x1C, 0x30, 0x3C] {
            var w = ByteBuffer(repeating: 0, count: 48)
            w.setInteger(code, at: 0)
            #expect(throws: ISCSIPDUError.unknownOpcode(code)) { _ = try PDUParser().parse(&w) }
        }
    }

    @Test func wrongDirectionOpcode() {
        var w = wire(.nopOut(ISCSIPDU.NOPOut()))
        #expect(throws: ISCSIPDUError.unknownOpcode(0)) {
            _ = try PDUParser(direction: .targetToInitiator).parse(&w)
        }
    }

    @Test func oversizedDataSegmentRejectedFromTheHeaderAlone() {
        var header = BasicHeaderSegment(opcode: .dataIn)
        header.dataSegmentLength = 0x00FF_FFFF
        var w = ByteBuffer()
        w.writeBasicHeaderSegment(header)  // only 48 bytes: the check must not wait for 16 MiB
        #expect(throws: ISCSIPDUError.dataSegmentTooLong(length: 0x00FF_FFFF, limit: 262_144)) {
            _ = try PDUParser(maxDataSegmentLength: 262_144).parse(&w)
        }
    }

    @Test func headerDigestMismatch() {
        let digests = DigestSettings(header: true, data: true)
        var w = wire(Samples.all[6], digests: digests)
        w.setInteger(UInt8(0xFF), at: 30)  // corrupt a header byte
        #expect(throws: ISCSIPDUError.self) { _ = try PDUParser(digests: digests, maxDataSegmentLength: 65536).parse(&w) }
        var w2 = wire(Samples.all[6], digests: digests)
        let v = w2.getInteger(at: 48, as: UInt8.self)!
        w2.setInteger(v ^ 1, at: 48)  // corrupt the digest itself
        do {
            _ = try PDUParser(digests: digests, maxDataSegmentLength: 65536).parse(&w2)
            Issue.record("no error")
        } catch {
            guard case .headerDigestMismatch = error else { Issue.record("wrong error \(error)"); return }
        }
    }

    @Test func dataDigestMismatch() {
        let digests = DigestSettings(header: true, data: true)
        var w = wire(Samples.all[6], digests: digests)
        w.setInteger(UInt8(0x00), at: 52 + 3)  // a data byte
        do {
            _ = try PDUParser(digests: digests, maxDataSegmentLength: 65536).parse(&w)
            Issue.record("no error")
        } catch {
            guard case .dataDigestMismatch = error else { Issue.record("wrong error \(error)"); return }
        }
    }

    @Test func fieldRules() throws {
        // Data-In with S but not F (RFC 7143 §11.7.3).
        var header = BasicHeaderSegment(opcode: .dataIn, flags: 0x01)
        #expect(throws: ISCSIPDUError.self) { _ = try ISCSIPDU.DataIn(ISCSIPDU(header: header)) }
        // R2T with length 0 or the reserved TTT (RFC 7143 §11.8).
        header = BasicHeaderSegment(opcode: .readyToTransfer, flags: 0x80)
        header.field20 = 5
        #expect(throws: ISCSIPDUError.self) { _ = try ISCSIPDU.ReadyToTransfer(ISCSIPDU(header: header)) }
        header.field44 = 512
        header.field20 = 0xFFFF_FFFF
        #expect(throws: ISCSIPDUError.self) { _ = try ISCSIPDU.ReadyToTransfer(ISCSIPDU(header: header)) }
        header.field20 = 5
        #expect(throws: Never.self) { _ = try ISCSIPDU.ReadyToTransfer(ISCSIPDU(header: header)) }
        // SCSI Response whose SenseLength exceeds the data segment (RFC 7143 §11.4.7).
        var sense = ByteBuffer()
        sense.writeInteger(UInt16(100))
        sense.writeBytes([0x70, 0, 5])
        let rsp = ISCSIPDU(header: BasicHeaderSegment(opcode: .scsiResponse, flags: 0x80), data: sense)
        #expect(throws: ISCSIPDUError.self) { _ = try ISCSIPDU.SCSIResponse(rsp) }
        // Both O and U.
        let ou = ISCSIPDU(header: BasicHeaderSegment(opcode: .scsiResponse, flags: 0x86))
        #expect(throws: ISCSIPDUError.self) { _ = try ISCSIPDU.SCSIResponse(ou) }
        // Login Response with T and C (RFC 7143 §11.13.7).
        let tc = ISCSIPDU(header: BasicHeaderSegment(opcode: .loginResponse, flags: 0xC0))
        #expect(throws: ISCSIPDUError.self) { _ = try ISCSIPDU.LoginResponse(tc) }
        // Typed view of the wrong opcode.
        #expect(throws: ISCSIPDUError.unexpectedOpcode(expected: .dataIn, received: .nopIn)) {
            _ = try ISCSIPDU.DataIn(ISCSIPDU(header: BasicHeaderSegment(opcode: .nopIn)))
        }
    }

    @Test func truncatedAHS() {
        var area = ByteBuffer()
        area.writeInteger(UInt16(40))  // claims 40 bytes, area has 4
        area.writeInteger(UInt8(1))
        area.writeInteger(UInt8(0))
        #expect(throws: ISCSIPDUError.self) { _ = try AdditionalHeaderSegment.parse(area) }
    }

    @Test func randomGarbageNeverCrashes() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let n = Int.random(in: 0..<200, using: &generator)
            var w = ByteBuffer(bytes: (0..<n).map { _ in UInt8.random(in: 0...255, using: &generator) })
            let parser = PDUParser(digests: DigestSettings(header: Bool.random(), data: Bool.random()), maxDataSegmentLength: 8192)
            while let pdu = try? parser.parse(&w) {
                _ = try? ISCSIMessage(pdu)
            }
        }
    }
}
