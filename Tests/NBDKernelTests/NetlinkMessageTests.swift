import NIOCore
import Testing

@testable import NBDKernel

/// Datagrams captured from a real kernel (Linux 6.18 host, python3 raw AF_NETLINK socket, 2026-11-25).
enum CapturedHost {
    /// Reply to CTRL_CMD_GETFAMILY "nlctrl" (seq 0x4d, port 0x6c65): family id 0x10, version 2, ops, and
    /// the multicast group "notify" = 0x10. The group list has no NLA_F_NESTED flag.
    static let nlctrlFamilyReply = """
        88000000100000004d000000656c0000010200000b0002006e6c6374726c000006000100100000000800030002000000\
        080004000000000008000500000000002c000600140001000800010003000000080002000e00000014000200080001000a\
        000000080002000c0000001c0007001800010008000200100000000b0001006e6f746966790000
        """
    /// The ACK that followed (NLMSG_ERROR, error 0, NLM_F_CAPPED, echoed header only).
    static let ack = "24000000020000014d000000656c00000000000020000000100005004d00000000000000"
    /// CTRL_CMD_GETFAMILY "nbd" on a kernel without nbd: NLMSG_ERROR -ENOENT, request echoed in full
    /// (no NETLINK_CAP_ACK), no TLVs.
    static let unknownFamilyError = """
        30000000020000004e000000656c0000feffffff1c000000100005004e0000000000000003020000080002006e626400
        """
}

@Suite struct NetlinkMessageTests {
    @Test func getFamilyRequestBytes() throws {
        let request = try GenericNetlinkFamily.encodeRequest(name: "nbd", sequence: 0x4e)
        #expect(
            hex(request)
                == "1c000000" + "1000" + "0500"  // len 28, GENL_ID_CTRL, REQUEST|ACK
                + "4e000000" + "00000000"  // seq, port 0
                + "03020000"  // CTRL_CMD_GETFAMILY, version 2, reserved
                + "08000200" + "6e626400")  // CTRL_ATTR_FAMILY_NAME "nbd\0"
    }

    @Test func familyNameLimits() {
        #expect(throws: NBDKernelError.self) { try GenericNetlinkFamily.encodeRequest(name: "", sequence: 1) }
        #expect(throws: NBDKernelError.self) {
            try GenericNetlinkFamily.encodeRequest(name: "sixteen-bytes-xx", sequence: 1)
        }
    }

    @Test func capturedFamilyReplyParses() throws {
        let messages = try NetlinkMessage.parseDatagram(buffer(CapturedHost.nlctrlFamilyReply))
        #expect(messages.count == 1)
        let message = messages[0]
        #expect(message.type == .genericController)
        #expect(message.sequence == 0x4d)
        #expect(message.portID == 0x6c65)
        let family = try GenericNetlinkFamily(reply: GenericNetlinkMessage(message))
        #expect(family.id.rawValue == 0x10)
        #expect(family.name == "nlctrl")
        #expect(family.version == 2)
        #expect(family.multicastGroups == ["notify": 0x10])
    }

    @Test func capturedAckParses() throws {
        let messages = try NetlinkMessage.parseDatagram(buffer(CapturedHost.ack))
        #expect(messages.count == 1)
        #expect(messages[0].flags.contains(.capped))
        let ack = try NetlinkErrorMessage(messages[0])
        #expect(ack.isAcknowledgement)
        #expect(ack.requestSequence == 0x4d)
        #expect(ack.requestType == .genericController)
    }

    @Test func capturedUnknownFamilyIsENOENT() throws {
        let messages = try NetlinkMessage.parseDatagram(buffer(CapturedHost.unknownFamilyError))
        let error = try NetlinkErrorMessage(messages[0])
        #expect(error.errno == 2)
        #expect(error.requestSequence == 0x4e)
        #expect(error.extendedMessage == nil)
    }

    @Test func twoMessagesInOneDatagramAtAlignedOffsets() throws {
        // A 21-byte message (5 payload bytes, padded to 24) followed by a bare 16-byte NLMSG_DONE.
        let datagram = buffer(
            "15000000" + "1a00" + "0000" + "01000000" + "00000000" + "0102030405" + "000000"
                + "10000000" + "0300" + "0200" + "01000000" + "00000000")
        let messages = try NetlinkMessage.parseDatagram(datagram)
        #expect(messages.count == 2)
        #expect(messages[0].type.rawValue == 0x1a)
        #expect(hex(messages[0].payload) == "0102030405")
        #expect(messages[1].type == .done)
        #expect(messages[1].flags == .multi)
        #expect(messages[1].payload.readableBytes == 0)
    }

    @Test(arguments: [
        "0f000000" + "1a00000001000000" + "00000000",  // nlmsg_len 15 < header
        "20000000" + "1a00000001000000" + "00000000",  // nlmsg_len 32 past a 16-byte datagram
        "10000000" + "1a00000001000000" + "00000000" + "0000",  // 2 trailing bytes
        "1a000000",  // shorter than a header
    ])
    func malformedDatagramsThrow(_ fixture: String) {
        #expect(throws: NBDKernelError.self) { try NetlinkMessage.parseDatagram(buffer(fixture)) }
    }

    @Test func genericHeaderRequired() throws {
        let message = NetlinkMessage(
            type: NetlinkMessageType(rawValue: 0x1a), flags: [], sequence: 1, portID: 0, payload: buffer("0101"))
        #expect(throws: NBDKernelError.self) { try GenericNetlinkMessage(message) }
    }

    @Test func errorWithExtendedAckMessageAfterEchoedRequest() throws {
        // error -EINVAL, echoed request of 20 bytes (header + 4 payload bytes), then NLMSGERR_ATTR_MSG "bad"
        // and NLMSGERR_ATTR_MISS_TYPE 7; flags NLM_F_ACK_TLVS, not capped.
        let payload =
            "eaffffff" + "14000000" + "1a000500" + "09000000" + "00000000" + "01010000"
            + "08000100" + "62616400" + "08000500" + "07000000"
        let message = NetlinkMessage(
            type: .error, flags: .ackTLVs, sequence: 9, portID: 0, payload: buffer(payload))
        let error = try NetlinkErrorMessage(message)
        #expect(error.errno == 22)
        #expect(error.requestSequence == 9)
        #expect(error.extendedMessage == "bad")
        #expect(error.missingAttribute == 7)
    }

    @Test func cappedErrorWithTLVs() throws {
        let payload =
            "f0ffffff" + "30000000" + "1a000500" + "0a000000" + "00000000"  // EBUSY, echoed header claims 48
            + "0b000100" + "696e2075736500" + "00"  // "in use\0", padded
        let message = NetlinkMessage(
            type: .error, flags: [.capped, .ackTLVs], sequence: 10, portID: 0, payload: buffer(payload))
        let error = try NetlinkErrorMessage(message)
        #expect(error.errno == 16)
        #expect(error.extendedMessage == "in use")
    }

    @Test(arguments: [
        ("01000000" + "10000000" + "1a000500" + "09000000" + "00000000", NetlinkMessageFlags()),  // positive error
        ("eaffffff" + "10000000", NetlinkMessageFlags()),  // shorter than nlmsgerr
        // uncapped error claiming a 64-byte echoed request in a 20-byte payload
        ("eaffffff" + "40000000" + "1a000500" + "09000000" + "00000000", NetlinkMessageFlags.ackTLVs),
    ])
    func malformedErrorsThrow(_ payload: String, _ flags: NetlinkMessageFlags) {
        let message = NetlinkMessage(type: .error, flags: flags, sequence: 9, portID: 0, payload: buffer(payload))
        #expect(throws: NBDKernelError.self) { try NetlinkErrorMessage(message) }
    }

    @Test func familyReplyMissingIDThrows() throws {
        let attributes = try NetlinkAttribute.parseAll(try writer { try $0.write(type: 2, string: "nbd") })
        let reply = GenericNetlinkMessage(family: .genericController, command: 1, version: 2, attributes: attributes)
        #expect(throws: NBDKernelError.self) { try GenericNetlinkFamily(reply: reply) }
    }

    @Test func familyReplyWithBadGroupEntryThrows() throws {
        let bytes = try writer {
            $0.write(type: 1, u16: 0x1c)
            try $0.write(type: 2, string: "nbd")
            try $0.writeNested(type: 7) { (groups) throws(NBDKernelError) in
                try groups.writeNested(type: 1) { (entry) throws(NBDKernelError) in
                    try entry.write(type: 1, string: "nbd_mc_group")  // no id
                }
            }
        }
        let reply = GenericNetlinkMessage(
            family: .genericController, command: 1, version: 2, attributes: try NetlinkAttribute.parseAll(bytes))
        #expect(throws: NBDKernelError.self) { try GenericNetlinkFamily(reply: reply) }
    }

    @Test func familyReplyFromOtherSenderOrCommandThrows() throws {
        let reply = try GenericNetlinkMessage(
            NetlinkMessage.parseDatagram(buffer(CapturedHost.nlctrlFamilyReply))[0])
        var wrongCommand = reply
        wrongCommand.command = 3
        #expect(throws: NBDKernelError.self) { try GenericNetlinkFamily(reply: wrongCommand) }
        var wrongFamily = reply
        wrongFamily.family = NetlinkMessageType(rawValue: 0x1a)
        #expect(throws: NBDKernelError.self) { try GenericNetlinkFamily(reply: wrongFamily) }
    }
}

@Suite struct NetlinkTransactionTests {
    func message(_ type: NetlinkMessageType, sequence: UInt32, portID: UInt32 = 42, payload: String = "03010000")
        -> NetlinkMessage
    {
        NetlinkMessage(type: type, flags: [], sequence: sequence, portID: portID, payload: buffer(payload))
    }

    func ack(sequence: UInt32, errno: Int32 = 0) -> NetlinkMessage {
        var payload = ByteBuffer()
        payload.writeInteger(-errno, endianness: .little)
        payload.writeBytes(hexBytes("10000000" + "1a000500"))
        payload.writeInteger(sequence, endianness: .little)
        payload.writeBytes(hexBytes("00000000"))
        return NetlinkMessage(type: .error, flags: .capped, sequence: sequence, portID: 42, payload: payload)
    }

    @Test func replyThenAck() throws {
        var transaction = NetlinkTransaction(sequence: 5, portID: 42)
        #expect(try transaction.receive(message(NetlinkMessageType(rawValue: 0x1a), sequence: 5)) == .needMore)
        #expect(try transaction.receive(ack(sequence: 5)) == .acknowledged)
        #expect(transaction.replies.count == 1)
    }

    @Test func otherSequencesAndPortsAndMulticastAreSkipped() throws {
        var transaction = NetlinkTransaction(sequence: 5, portID: 42)
        #expect(try transaction.receive(message(NetlinkMessageType(rawValue: 0x1a), sequence: 4)) == .needMore)
        #expect(try transaction.receive(message(NetlinkMessageType(rawValue: 0x1a), sequence: 0, portID: 0)) == .needMore)
        #expect(try transaction.receive(message(NetlinkMessageType(rawValue: 0x1a), sequence: 5, portID: 99)) == .needMore)
        #expect(try transaction.receive(ack(sequence: 4)) == .needMore)
        #expect(transaction.replies.isEmpty)
        #expect(try transaction.receive(ack(sequence: 5)) == .acknowledged)
    }

    @Test func errorRejects() throws {
        var transaction = NetlinkTransaction(sequence: 7, portID: 42)
        guard case .rejected(let error) = try transaction.receive(ack(sequence: 7, errno: 16)) else {
            Issue.record("expected rejection")
            return
        }
        #expect(error.errno == 16)
    }

    @Test func overrunThrows() {
        var transaction = NetlinkTransaction(sequence: 7, portID: 42)
        #expect(throws: NBDKernelError.self) { try transaction.receive(message(.overrun, sequence: 7)) }
    }
}
