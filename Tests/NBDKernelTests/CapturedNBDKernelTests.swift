import NIOCore
import Testing

@testable import NBDKernel

/// Datagrams captured from the real nbd driver: Debian 12 kernel 6.1.0-56-amd64 in the VM
/// (scripts/vm/scenario-netlink.sh, step "capture raw replies", python3 raw AF_NETLINK socket, port 0x10b),
/// while /dev/nbd0 was connected to nbdkit with 2 sockets.
enum CapturedNBD {
    static let port: UInt32 = 0x10b
    /// CTRL_CMD_GETFAMILY "nbd" (seq 100): name first, then id 0x20, version 1, maxattr 10, 5 ops,
    /// multicast group nbd_mc_group = 9.
    static let familyReply = """
        b400000010000000640000000b01000001020000080002006e6264000600010020000000080003000100000008000400\
        00000000080005000a00000054000600140001000800010001000000080002000a000000140002000800010002000000\
        080002000a000000140003000800010003000000080002000a000000140004000800010005000000080002000a000000\
        24000700200001000800020009000000110001006e62645f6d635f67726f757000000000
        """
    /// The ACK after it.
    static let familyAck = """
        2400000002000001640000000b010000000000001c000000100005006400000000000000
        """
    /// NBD_CMD_STATUS for index 0 (seq 101): one item, nbd0 connected. The list attribute lacks NLA_F_NESTED.
    static let statusReply = """
        2c00000020000000650000000b01000005010000180009001400010008000100000000000500020001000000
        """
    static let statusAck = """
        2400000002000001650000000b010000000000001c000000200005006500000000000000
        """
    /// NBD_CMD_STATUS for all devices (seq 102): nbd0 connected, nbd1...nbd15 not.
    static let statusAllReply = """
        5801000020000000660000000b0100000501000044010900140001000800010000000000050002000100000014000100\
        080001000100000005000200000000001400010008000100020000000500020000000000140001000800010003000000\
        050002000000000014000100080001000400000005000200000000001400010008000100050000000500020000000000\
        140001000800010006000000050002000000000014000100080001000700000005000200000000001400010008000100\
        080000000500020000000000140001000800010009000000050002000000000014000100080001000a00000005000200\
        0000000014000100080001000b000000050002000000000014000100080001000c000000050002000000000014000100\
        080001000d000000050002000000000014000100080001000e000000050002000000000014000100080001000f000000\
        0500020000000000
        """
    static let statusAllAck = """
        2400000002000001660000000b0100000000000014000000200005006600000000000000
        """
}

@Suite struct CapturedNBDKernelTests {
    /// Runs the datagrams through the same path as `NetlinkSocket.transact`.
    func transact(_ datagrams: [String], sequence: UInt32) throws -> [NetlinkMessage] {
        var transaction = NetlinkTransaction(sequence: sequence, portID: CapturedNBD.port)
        for datagram in datagrams {
            for message in try NetlinkMessage.parseDatagram(buffer(datagram)) {
                switch try transaction.receive(message) {
                case .needMore: continue
                case .acknowledged: return transaction.replies
                case .rejected(let error): throw NBDKernelError.kernelRejected("test", errno: error.errno)
                }
            }
        }
        Issue.record("no ACK")
        return []
    }

    @Test func familyResolution() throws {
        let replies = try transact([CapturedNBD.familyReply, CapturedNBD.familyAck], sequence: 100)
        #expect(replies.count == 1)
        let family = try GenericNetlinkFamily(reply: GenericNetlinkMessage(replies[0]))
        #expect(family.name == NBDNetlinkFamily.name)
        #expect(family.id.rawValue == 0x20)
        #expect(family.version == 1)
        #expect(family.maximumAttribute == 10)
        #expect(family.multicastGroups == [NBDNetlinkFamily.multicastGroupName: 9])
    }

    @Test func statusOfOneDevice() throws {
        let replies = try transact([CapturedNBD.statusReply, CapturedNBD.statusAck], sequence: 101)
        let status = try NBDNetlinkMessages.parseStatusReply(GenericNetlinkMessage(replies[0]))
        #expect(status == [NBDDeviceStatus(index: 0, isConnected: true)])
    }

    @Test func statusOfAllDevices() throws {
        let replies = try transact([CapturedNBD.statusAllReply, CapturedNBD.statusAllAck], sequence: 102)
        let status = try NBDNetlinkMessages.parseStatusReply(GenericNetlinkMessage(replies[0]))
        #expect(status.map(\.index) == Array(0..<16))
        #expect(status.filter(\.isConnected).map(\.index) == [0])
    }

    @Test func replyForAnotherSequenceIsNotTaken() throws {
        var transaction = NetlinkTransaction(sequence: 99, portID: CapturedNBD.port)
        for message in try NetlinkMessage.parseDatagram(buffer(CapturedNBD.statusReply)) {
            #expect(try transaction.receive(message) == .needMore)
        }
        #expect(transaction.replies.isEmpty)
    }

    /// Every truncation of a captured reply is refused (the length field runs past the datagram).
    @Test func truncationsThrow() throws {
        let bytes = hexBytes(CapturedNBD.familyReply)
        for length in 1..<bytes.count {
            #expect(throws: NBDKernelError.self) { try NetlinkMessage.parseDatagram(ByteBuffer(bytes: bytes[0..<length])) }
        }
    }

    /// Flipping any byte of the attribute area gives a family or an error, never a crash.
    @Test func corruptionsNeverCrash() throws {
        let bytes = hexBytes(CapturedNBD.familyReply)
        for position in 20..<bytes.count {
            var corrupted = bytes
            corrupted[position] ^= 0xff
            if let message = try? NetlinkMessage.parseDatagram(ByteBuffer(bytes: corrupted)).first {
                _ = try? GenericNetlinkFamily(reply: GenericNetlinkMessage(message))
            }
        }
    }
}
