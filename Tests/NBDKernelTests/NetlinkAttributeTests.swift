import NIOCore
import Testing

@testable import NBDKernel

// All fixtures assume a little-endian host (x86-64, arm64): netlink integers are in host order.

@Suite struct NetlinkAttributeEncodingTests {
    @Test func u32HasNoPadding() {
        let bytes = writer { $0.write(type: 1, u32: 0x0102_0304) }
        #expect(hex(bytes) == "08000100" + "04030201")
    }

    @Test func u64IsTwelveBytes() {
        let bytes = writer { $0.write(type: 2, u64: 0x0000_0001_0000_0000) }
        #expect(hex(bytes) == "0c000200" + "0000000001000000")
    }

    @Test func u8IsPaddedToFourButLengthExcludesPadding() {
        let bytes = writer { $0.write(type: 2, u8: 0xAB) }
        #expect(hex(bytes) == "05000200" + "ab000000")
    }

    @Test func u16IsPadded() {
        let bytes = writer { $0.write(type: 1, u16: 0x1234) }
        #expect(hex(bytes) == "06000100" + "34120000")
    }

    @Test func stringIsNulTerminatedAndPadded() throws {
        let bytes = try writer { try $0.write(type: 2, string: "nbd") }
        #expect(hex(bytes) == "08000200" + "6e626400")
        let five = try writer { try $0.write(type: 10, string: "abcde") }
        #expect(hex(five) == "0a000a00" + "6162636465000000")
    }

    @Test func stringWithNulIsRefused() {
        #expect(throws: NBDKernelError.self) { try writer { try $0.write(type: 2, string: "a\u{0}b") } }
    }

    @Test func nestedSetsFlagAndCoversPaddedChildren() throws {
        let bytes = try writer {
            try $0.writeNested(type: 7) { (inner) throws(NBDKernelError) in
                inner.write(type: 1, u8: 1)
                inner.write(type: 2, u32: 5)
            }
        }
        // nest header: len 4 + 8 (u8, padded) + 8 (u32) = 20, type 7 | NLA_F_NESTED (0x8000)
        #expect(hex(bytes) == "14000780" + "05000100" + "01000000" + "08000200" + "05000000")
    }

    @Test func socketsNestTwoLevels() throws {
        let bytes = try writer { try NBDNetlinkMessages.writeSockets([5, 6], into: &$0) }
        // NBD_ATTR_SOCKETS(7) → NBD_SOCK_ITEM(1) → NBD_SOCK_FD(1)
        #expect(
            hex(bytes) == "1c000780"  // 4 + 2 × 12
                + "0c000180" + "08000100" + "05000000"
                + "0c000180" + "08000100" + "06000000")
    }

    @Test func stringTooLongForSixteenBitLengthIsRefused() {
        let long = String(repeating: "x", count: 70_000)
        #expect(throws: NBDKernelError.self) { try writer { try $0.write(type: 10, string: long) } }
    }
}

@Suite struct NetlinkAttributeDecodingTests {
    @Test func roundTripOfEveryKind() throws {
        let bytes = try writer {
            $0.write(type: 1, u8: 7)
            $0.write(type: 2, u16: 513)
            $0.write(type: 3, u32: 70_000)
            $0.write(type: 4, u64: UInt64.max - 1)
            try $0.write(type: 5, string: "héllo")
            try $0.writeNested(type: 6) { (inner) throws(NBDKernelError) in inner.write(type: 1, u32: 9) }
        }
        let attributes = try NetlinkAttribute.parseAll(bytes)
        #expect(attributes.map(\.type) == [1, 2, 3, 4, 5, 6])
        #expect(try attributes[0].u8() == 7)
        #expect(try attributes[1].u16() == 513)
        #expect(try attributes[2].u32() == 70_000)
        #expect(try attributes[3].u64() == UInt64.max - 1)
        #expect(try attributes[4].string() == "héllo")
        #expect(attributes[5].isNested)
        #expect(!attributes[4].isNested)
        let inner = try attributes[5].nested()
        #expect(inner.count == 1)
        #expect(try inner[0].u32() == 9)
    }

    @Test func lastAttributeMayLackPadding() throws {
        // u8 attribute with nla_len 5 and no padding bytes at the end of the buffer
        let attributes = try NetlinkAttribute.parseAll(buffer("05000200ab"))
        #expect(attributes.count == 1)
        #expect(try attributes[0].u8() == 0xAB)
    }

    @Test func networkByteOrderFlagIsHonoured() throws {
        let attributes = try NetlinkAttribute.parseAll(buffer("08000140" + "00000102"))
        #expect(attributes[0].isNetworkByteOrder)
        #expect(attributes[0].type == 1)
        #expect(try attributes[0].u32() == 0x102)
    }

    @Test(arguments: [
        "0300010000",  // nla_len 3 < header
        "0c00010001000000",  // nla_len 12 runs past an 8-byte buffer
        "080001000100000001",  // one trailing byte
        "08000100010000000600",  // two trailing bytes: not an attribute header
    ])
    func malformedAttributesThrow(_ fixture: String) {
        #expect(throws: NBDKernelError.self) { try NetlinkAttribute.parseAll(buffer(fixture)) }
        do {
            _ = try NetlinkAttribute.parseAll(buffer(fixture))
        } catch {
            #expect(error.code == .malformedReply)
        }
    }

    @Test func integerOfWrongSizeThrows() throws {
        let attributes = try NetlinkAttribute.parseAll(buffer("08000100" + "01000000"))
        #expect(throws: NBDKernelError.self) { try attributes[0].u64() }
        #expect(throws: NBDKernelError.self) { try attributes[0].u8() }
        #expect(try attributes[0].u32() == 1)
    }

    @Test func badStringsThrow() throws {
        let inner = try NetlinkAttribute.parseAll(buffer("08000100" + "61006200"))
        #expect(throws: NBDKernelError.self) { try inner[0].string() }
        let invalidUTF8 = try NetlinkAttribute.parseAll(buffer("07000100" + "ff fe 00 00"))
        #expect(throws: NBDKernelError.self) { try invalidUTF8[0].string() }
    }

    @Test func emptyBufferHasNoAttributes() throws {
        #expect(try NetlinkAttribute.parseAll(ByteBuffer()).isEmpty)
    }
}
