import NIOCore
import Testing

@testable import ISNS

private func bytes(_ buffer: ByteBuffer) -> [UInt8] { buffer.getBytes(at: buffer.readerIndex, length: buffer.readableBytes) ?? [] }

private func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }

@Suite struct ISNSCodecTests {
    @Test func headerLayoutMatchesRFC4171Section5_1() {
        let request = ISNSInitiatorMessages.deregister(source: "iqn.a", entityIdentifier: "E")
        var out = ByteBuffer()
        request.message(transactionID: 0x1234).write(to: &out)
        let b = bytes(out)
        // version 1, function 0x0004, length, flags client|first|last = 0x8C00, xid, seq 0
        #expect(Array(b[0..<4]) == [0x00, 0x01, 0x00, 0x04])
        #expect(Int(b[4]) << 8 | Int(b[5]) == b.count - 12)
        #expect(Array(b[6..<12]) == [0x8C, 0x00, 0x12, 0x34, 0x00, 0x00])
        // Payload: source "iqn.a" (5 bytes + NUL -> 8), delimiter, EID "E" (-> 4).
        #expect(Array(b[12..<28]) == [0, 0, 0, 32, 0, 0, 0, 8] + Array("iqn.a".utf8) + [0, 0, 0])
        #expect(Array(b[28..<36]) == [0, 0, 0, 0, 0, 0, 0, 0])
        #expect(Array(b[36...]) == [0, 0, 0, 1, 0, 0, 0, 4, UInt8(ascii: "E"), 0, 0, 0])
    }

    @Test(arguments: ["", "a", "ab", "abc", "abcd", "iqn.2026-11.test:initiator"])
    func stringAttributesAreNULTerminatedAndPadded(s: String) throws {
        let a = ISNSAttribute.string(.iscsiName, s)
        #expect(a.value.readableBytes % 4 == 0)
        #expect(a.value.readableBytes >= s.utf8.count + 1)
        #expect(a.value.readableBytes < s.utf8.count + 5)
        #expect(try a.stringValue() == s)
    }

    @Test func requestRoundTrip() throws {
        let request = ISNSInitiatorMessages.registerInitiator(name: "iqn.2026-11.test:i", entityIdentifier: "ent", alias: "host")
        var wire = ByteBuffer()
        request.message(transactionID: 7).write(to: &wire)
        let (header, payload) = try #require(try wire.readISNSPDU())
        #expect(header.functionID == .devAttrReg && header.transactionID == 7 && header.sequenceID == 0)
        #expect(header.flags == [.client, .firstPDU, .lastPDU])
        var assembler = ISNSMessageAssembler()
        let message = try #require(try assembler.receive(header: header, payload: payload))
        let parsed = try ISNSRequest(parsing: message)
        #expect(parsed == request)
        #expect(parsed.operating.map(\.tag) == [.entityIdentifier, .entityProtocol, .iscsiName, .iscsiNodeType, .iscsiAlias])
        #expect(try parsed.operating[3].uint32Value() == 2)  // Initiator
        #expect(try parsed.operating[1].uint32Value() == 2)  // iSCSI
    }

    @Test func queryRequestsZeroLengthOperatingAttributes() throws {
        let q = ISNSInitiatorMessages.queryTargets(source: "iqn.2026-11.test:i")
        #expect(q.messageKey.count == 1 && q.messageKey[0].tag == .iscsiNodeType)
        #expect(try q.messageKey[0].uint32Value() == 1)  // Target
        #expect(q.operating.allSatisfy { $0.value.readableBytes == 0 })
        #expect(q.operating.map(\.tag.rawValue) == [32, 33, 16, 17, 48, 49, 50, 51])
    }

    @Test func incrementalDecodingNeedsWholePDU() throws {
        var wire = ByteBuffer()
        ISNSInitiatorMessages.queryTargets(source: "iqn.x").message(transactionID: 1).write(to: &wire)
        let all = bytes(wire)
        for cut in 0..<all.count {
            var partial = buffer(Array(all[0..<cut]))
            #expect(try partial.readISNSPDU() == nil)
            #expect(partial.readerIndex == 0)
        }
        var whole = buffer(all)
        #expect(try whole.readISNSPDU() != nil)
    }

    static func sampleResponse() -> ISNSResponse {
        ISNSResponse(functionID: .devAttrQryRsp, transactionID: 9, status: .successful,
                     messageKey: [.uint32(.iscsiNodeType, 1)],
                     operating: [
                        .string(.iscsiName, "iqn.2026-11.test:b"), .uint32(.iscsiNodeType, 1),
                        .ipAddress(.portalIPAddress, ISNSIPAddress("127.0.0.1")!), .uint32(.portalPort, 3260),
                        .string(.pgISCSIName, "iqn.2026-11.test:b"), .ipAddress(.pgPortalIPAddress, ISNSIPAddress("127.0.0.1")!),
                        .uint32(.pgPortalPort, 3260), .uint32(.pgTag, 1),
                        .string(.pgISCSIName, "iqn.2026-11.test:b"), .ipAddress(.pgPortalIPAddress, ISNSIPAddress("fd00::5")!),
                        .uint32(.pgPortalPort, 3261), .uint32(.pgTag, 2),
                        .string(.iscsiName, "iqn.2026-11.test:a"), .uint32(.iscsiNodeType, 1),
                        .string(.pgISCSIName, "iqn.2026-11.test:a"), .ipAddress(.pgPortalIPAddress, ISNSIPAddress("192.0.2.7")!),
                        .uint32(.pgPortalPort, 3260), .uint32(.pgTag, 5),
                        // NULL PGT: portal not usable for this node.
                        .string(.pgISCSIName, "iqn.2026-11.test:a"), .ipAddress(.pgPortalIPAddress, ISNSIPAddress("192.0.2.8")!),
                        .uint32(.pgPortalPort, 3260), .empty(.pgTag),
                        // An initiator node's PG is not a target.
                        .string(.iscsiName, "iqn.2026-11.test:init"), .uint32(.iscsiNodeType, 2),
                        .string(.pgISCSIName, "iqn.2026-11.test:init"), .ipAddress(.pgPortalIPAddress, ISNSIPAddress("192.0.2.9")!),
                        .uint32(.pgPortalPort, 3260), .uint32(.pgTag, 1),
                     ])
    }

    @Test func queryResponseToTargets() throws {
        let targets = try ISNSInitiatorMessages.targets(from: Self.sampleResponse())
        #expect(targets == [
            ISNSDiscoveredTarget(name: "iqn.2026-11.test:a", portals: [ISNSPortal(host: "192.0.2.7", port: 3260, tpgt: 5)]),
            ISNSDiscoveredTarget(name: "iqn.2026-11.test:b", portals: [
                ISNSPortal(host: "127.0.0.1", port: 3260, tpgt: 1), ISNSPortal(host: "fd00::5", port: 3261, tpgt: 2),
            ]),
        ])
    }

    @Test func largeResponseSplitAcrossPDUsAndBytesReassembles() throws {
        var response = Self.sampleResponse()
        for i in 0..<3000 {
            response.operating += [.string(.pgISCSIName, "iqn.2026-11.test:t\(i)"), .ipAddress(.pgPortalIPAddress, ISNSIPAddress("10.0.0.1")!),
                                   .uint32(.pgPortalPort, 3260), .uint32(.pgTag, 1)]
        }
        var wire = ByteBuffer()
        response.message().write(to: &wire)
        #expect(wire.readableBytes > 2 * ISNSMessage.maximumPDUPayload)
        // Feed in odd-sized chunks through the incremental reader and the assembler.
        let all = bytes(wire)
        var pending = ByteBuffer()
        var assembler = ISNSMessageAssembler()
        var result: ISNSMessage?
        var pdus = 0
        var offset = 0
        while offset < all.count {
            let n = min(997, all.count - offset)
            pending.writeBytes(all[offset..<(offset + n)])
            offset += n
            while let (h, p) = try pending.readISNSPDU() {
                pdus += 1
                if let m = try assembler.receive(header: h, payload: p) { result = m }
            }
        }
        #expect(pdus >= 3)
        let message = try #require(result)
        let parsed = try ISNSResponse(parsing: message)
        #expect(parsed == response)
        #expect(try ISNSInitiatorMessages.targets(from: parsed).count == 3002)
    }

    @Test func nonZeroStatusIsReported() throws {
        let r = ISNSResponse(functionID: .devAttrQryRsp, transactionID: 1, status: .sourceUnknown)
        let parsed = try ISNSResponse(parsing: r.message())
        #expect(parsed.status == .sourceUnknown)
        #expect(parsed.status.description == "Source Unknown (6)")
        #expect { try ISNSInitiatorMessages.targets(from: parsed) } throws: { ($0 as? ISNSError)?.status == .sourceUnknown }
    }

    @Test func statusMessages() {
        #expect(ISNSStatus.successful.message == "Successful")
        #expect(ISNSStatus(rawValue: 4).message == "Reserved status 4")
        #expect(ISNSStatus.invalidDeregistration.message == "Invalid Deregistration")
        #expect(ISNSStatus(rawValue: 999).message.contains("999"))
        #expect(ISNSFunctionID(rawValue: 0x8002) == .devAttrQryRsp)
        #expect(ISNSFunctionID.devDereg.response == .devDeregRsp)
    }

    @Test func ipAddressText() throws {
        #expect(ISNSIPAddress("127.0.0.1")?.description == "127.0.0.1")
        #expect(ISNSIPAddress("127.0.0.1")?.bytes == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 127, 0, 0, 1])
        #expect(ISNSIPAddress("fd00::5")?.description == "fd00::5")
        #expect(ISNSIPAddress("::1")?.description == "::1")
        #expect(ISNSIPAddress("2001:db8:0:0:1:0:0:1")?.description == "2001:db8::1:0:0:1")
        #expect(ISNSIPAddress("::ffff:10.1.2.3")?.description == "10.1.2.3")
        #expect(ISNSIPAddress("1.2.3") == nil)
        #expect(ISNSIPAddress("1.2.3.256") == nil)
        #expect(ISNSIPAddress("1::2::3") == nil)
        #expect(ISNSIPAddress("hostname") == nil)
    }

    // MARK: - Malformed input

    @Test(arguments: [
        // (name, PDU bytes)
        ("version 2", [0, 2, 0x80, 2, 0, 0, 0x4C, 0, 0, 1, 0, 0] as [UInt8]),
        ("unaligned length", [0, 1, 0x80, 2, 0, 3, 0x4C, 0, 0, 1, 0, 0, 0, 0, 0] as [UInt8]),
    ])
    func malformedPDUHeaders(name: String, pdu: [UInt8]) {
        var b = buffer(pdu)
        #expect(throws: ISNSError.self) { try b.readISNSPDU() }
    }

    private func response(payload: [UInt8]) -> ISNSMessage {
        ISNSMessage(functionID: .devAttrQryRsp, flags: .server, transactionID: 1, payload: buffer(payload))
    }

    @Test(arguments: [
        ("no status", [] as [UInt8]),
        ("truncated TLV header", [0, 0, 0, 0, 0, 0, 0, 32, 0, 0] as [UInt8]),
        ("TLV longer than payload", [0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 16, 65, 0, 0, 0] as [UInt8]),
        ("TLV length huge", [0, 0, 0, 0, 0, 0, 0, 32, 0xFF, 0xFF, 0xFF, 0xFC] as [UInt8]),
        ("TLV length unaligned", [0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 3, 65, 66, 0, 0] as [UInt8]),
        ("delimiter with value", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4] as [UInt8]),
    ])
    func malformedResponsePayloads(name: String, payload: [UInt8]) {
        #expect(throws: ISNSError.self) { try ISNSResponse(parsing: response(payload: payload)) }
    }

    @Test func requestMessageIsNotAResponse() {
        let m = ISNSMessage(functionID: .devAttrQry, flags: .client, transactionID: 1, payload: buffer([0, 0, 0, 0]))
        #expect(throws: ISNSError.self) { try ISNSResponse(parsing: m) }
    }

    @Test(arguments: [
        ("name not NUL-terminated", ISNSAttribute(tag: .pgISCSIName, value: ByteBuffer(bytes: Array("abcd".utf8)))),
        ("name not UTF-8", ISNSAttribute(tag: .pgISCSIName, value: ByteBuffer(bytes: [0xFF, 0xFE, 0, 0]))),
        ("IP address 8 bytes", ISNSAttribute(tag: .pgPortalIPAddress, value: ByteBuffer(bytes: [UInt8](repeating: 1, count: 8)))),
        ("port 8 bytes", ISNSAttribute(tag: .pgPortalPort, value: ByteBuffer(bytes: [UInt8](repeating: 0, count: 8)))),
        ("node type 0 bytes", ISNSAttribute(tag: .iscsiNodeType, value: ByteBuffer())),
    ])
    func malformedAttributesInQueryResponse(name: String, bad: ISNSAttribute) {
        var operating: [ISNSAttribute] = [.string(.iscsiName, "iqn.x"), .string(.pgISCSIName, "iqn.x")]
        operating.append(bad)
        let r = ISNSResponse(functionID: .devAttrQryRsp, transactionID: 1, status: .successful, operating: operating)
        #expect(throws: ISNSError.self) { try ISNSInitiatorMessages.targets(from: r) }
    }

    @Test func pgAttributesOutsideAPortalGroupAreRejected() {
        let r = ISNSResponse(functionID: .devAttrQryRsp, transactionID: 1, status: .successful,
                             operating: [.uint32(.pgTag, 1)])
        #expect(throws: ISNSError.self) { try ISNSInitiatorMessages.targets(from: r) }
    }

    @Test func udpPortalsAndZeroPortsAreNotUsed() throws {
        let udp = ISNSResponse(functionID: .devAttrQryRsp, transactionID: 1, status: .successful, operating: [
            .string(.pgISCSIName, "iqn.x"), .ipAddress(.pgPortalIPAddress, ISNSIPAddress("10.0.0.1")!),
            .uint32(.pgPortalPort, 0x0001_0000 | 3260), .uint32(.pgTag, 1),
        ])
        #expect(try ISNSInitiatorMessages.targets(from: udp).isEmpty)
        let zero = ISNSResponse(functionID: .devAttrQryRsp, transactionID: 1, status: .successful, operating: [
            .string(.pgISCSIName, "iqn.x"), .ipAddress(.pgPortalIPAddress, ISNSIPAddress("10.0.0.1")!),
            .uint32(.pgPortalPort, 0), .uint32(.pgTag, 1),
        ])
        #expect(throws: ISNSError.self) { try ISNSInitiatorMessages.targets(from: zero) }
    }

    @Test func reassemblyRejectsBadSequences() throws {
        var a = ISNSMessageAssembler()
        let mid = ISNSPDUHeader(functionID: .devAttrQryRsp, length: 0, flags: [.server], transactionID: 1, sequenceID: 1)
        #expect(throws: ISNSError.self) { try a.receive(header: mid, payload: ByteBuffer()) }

        var b = ISNSMessageAssembler()
        let first = ISNSPDUHeader(functionID: .devAttrQryRsp, length: 4, flags: [.server, .firstPDU], transactionID: 1, sequenceID: 0)
        #expect(try b.receive(header: first, payload: buffer([0, 0, 0, 0])) == nil)
        let skipped = ISNSPDUHeader(functionID: .devAttrQryRsp, length: 0, flags: [.server, .lastPDU], transactionID: 1, sequenceID: 2)
        #expect(throws: ISNSError.self) { try b.receive(header: skipped, payload: ByteBuffer()) }

        var c = ISNSMessageAssembler()
        _ = try c.receive(header: first, payload: buffer([0, 0, 0, 0]))
        let otherXID = ISNSPDUHeader(functionID: .devAttrQryRsp, length: 0, flags: [.server, .lastPDU], transactionID: 2, sequenceID: 1)
        #expect(throws: ISNSError.self) { try c.receive(header: otherXID, payload: ByteBuffer()) }

        var d = ISNSMessageAssembler(maximumMessageSize: 8)
        _ = try d.receive(header: first, payload: buffer([0, 0, 0, 0]))
        let big = ISNSPDUHeader(functionID: .devAttrQryRsp, length: 8, flags: [.server, .lastPDU], transactionID: 1, sequenceID: 1)
        #expect(throws: ISNSError.self) { try d.receive(header: big, payload: buffer([UInt8](repeating: 0, count: 8))) }
    }

    @Test func randomGarbageNeverCrashes() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let n = Int.random(in: 0..<80, using: &rng)
            var bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if n >= 2 { bytes[0] = 0; bytes[1] = 1 }  // mostly valid version so we reach deeper code
            var b = buffer(bytes)
            var assembler = ISNSMessageAssembler()
            while let (h, p) = try? b.readISNSPDU() {
                guard let m = try? assembler.receive(header: h, payload: p) else { break }
                if let r = try? ISNSResponse(parsing: m) { _ = try? ISNSInitiatorMessages.targets(from: r) }
            }
            let m = ISNSMessage(functionID: .devAttrQryRsp, flags: .server, transactionID: 0, payload: buffer(bytes))
            if let r = try? ISNSResponse(parsing: m) { _ = try? ISNSInitiatorMessages.targets(from: r) }
        }
    }
}
