import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

@testable import NBDKernel

@Suite struct NBDNetlinkMessagesTests {
    let family = NetlinkMessageType(rawValue: 0x1c)

    @Test func connectRequestBytes() throws {
        let request = NBDConnectRequest(
            sockets: [5, 6], size: 256 << 20, blockSize: 4096, serverFlags: [.hasFlags, .sendFlush],
            timeoutSeconds: 30, index: 0, backendIdentifier: "x")
        let bytes = try request.encode(family: family, sequence: 3)
        let expected =
            "70000000" + "1c00" + "0500" + "03000000" + "00000000"  // nlmsghdr: 112 bytes
            + "01010000"  // NBD_CMD_CONNECT, version 1
            + "08000100" + "00000000"  // NBD_ATTR_INDEX 0
            + "0c000200" + "0000001000000000"  // NBD_ATTR_SIZE_BYTES 256 MiB
            + "0c000300" + "0010000000000000"  // NBD_ATTR_BLOCK_SIZE_BYTES 4096
            + "0c000500" + "0500000000000000"  // NBD_ATTR_SERVER_FLAGS HAS_FLAGS|SEND_FLUSH
            + "0c000400" + "1e00000000000000"  // NBD_ATTR_TIMEOUT 30
            + "06000a00" + "78000000"  // NBD_ATTR_BACKEND_IDENTIFIER "x\0" + pad
            + "1c000780"  // NBD_ATTR_SOCKETS (nested)
            + "0c000180" + "08000100" + "05000000"
            + "0c000180" + "08000100" + "06000000"
        #expect(hex(bytes) == expected)
        // and it decodes back
        let message = try NetlinkMessage.parseDatagram(bytes)[0]
        let generic = try GenericNetlinkMessage(message)
        #expect(generic.command == NBDNetlinkCommand.connect.rawValue)
        let sockets = try #require(generic.attributes.first { $0.type == 7 })
        let fds = try sockets.nested().map { try $0.nested()[0].u32() }
        #expect(fds == [5, 6])
    }

    @Test func connectWithoutIndexOmitsIt() throws {
        let request = NBDConnectRequest(sockets: [3], size: 1 << 30, blockSize: 512, serverFlags: [])
        let generic = try GenericNetlinkMessage(NetlinkMessage.parseDatagram(request.encode(family: family, sequence: 1))[0])
        #expect(generic.attributes.map(\.type) == [2, 3, 5, 7])
    }

    @Test func disconnectAndStatusBytes() throws {
        #expect(
            hex(try NBDNetlinkMessages.encodeDisconnect(family: family, index: 2, sequence: 9))
                == "1c000000" + "1c000500" + "09000000" + "00000000" + "02010000" + "08000100" + "02000000")
        #expect(
            hex(try NBDNetlinkMessages.encodeStatus(family: family, index: nil, sequence: 9))
                == "14000000" + "1c000500" + "09000000" + "00000000" + "05010000")
    }

    @Test func reconfigureCarriesIndexTimeoutsAndSockets() throws {
        let request = NBDReconfigureRequest(index: 1, sockets: [8], deadConnectionTimeoutSeconds: 60)
        let generic = try GenericNetlinkMessage(NetlinkMessage.parseDatagram(request.encode(family: family, sequence: 2))[0])
        #expect(generic.command == NBDNetlinkCommand.reconfigure.rawValue)
        #expect(generic.attributes.map(\.type) == [1, 8, 7])
        #expect(try generic.attributes[1].u64() == 60)
    }

    func reply(command: NBDNetlinkCommand, _ body: (inout NetlinkAttributeWriter) throws(NBDKernelError) -> Void) throws
        -> GenericNetlinkMessage
    {
        let bytes = try GenericNetlinkMessage.encodeRequest(
            family: family, command: command.rawValue, version: 1, flags: [], sequence: 1, attributes: body)
        return try GenericNetlinkMessage(NetlinkMessage.parseDatagram(bytes)[0])
    }

    @Test func connectReplyIndex() throws {
        let message = try reply(command: .connect) { (writer) throws(NBDKernelError) in
            writer.write(type: NBDAttribute.index, u32: 3)
        }
        #expect(try NBDNetlinkMessages.parseConnectReply(message) == 3)
        let empty = try reply(command: .connect) { (_) throws(NBDKernelError) in }
        #expect(throws: NBDKernelError.self) { try NBDNetlinkMessages.parseConnectReply(empty) }
        let wrongWidth = try reply(command: .connect) { (writer) throws(NBDKernelError) in
            writer.write(type: NBDAttribute.index, u64: 3)
        }
        #expect(throws: NBDKernelError.self) { try NBDNetlinkMessages.parseConnectReply(wrongWidth) }
    }

    @Test func statusReplyList() throws {
        let message = try reply(command: .status) { (writer) throws(NBDKernelError) in
            try writer.writeNested(type: NBDAttribute.deviceList) { (list) throws(NBDKernelError) in
                for (index, connected) in [(0, 1), (1, 0), (7, 1)] as [(UInt32, UInt8)] {
                    try list.writeNested(type: NBDAttribute.deviceItem) { (item) throws(NBDKernelError) in
                        item.write(type: NBDAttribute.deviceIndex, u32: index)
                        item.write(type: NBDAttribute.deviceConnected, u8: connected)
                    }
                }
            }
        }
        #expect(
            try NBDNetlinkMessages.parseStatusReply(message) == [
                NBDDeviceStatus(index: 0, isConnected: true), NBDDeviceStatus(index: 1, isConnected: false),
                NBDDeviceStatus(index: 7, isConnected: true),
            ])
        let none = try reply(command: .status) { (_) throws(NBDKernelError) in }
        #expect(try NBDNetlinkMessages.parseStatusReply(none).isEmpty)
    }

    @Test func statusItemWithoutConnectedThrows() throws {
        let message = try reply(command: .status) { (writer) throws(NBDKernelError) in
            try writer.writeNested(type: NBDAttribute.deviceList) { (list) throws(NBDKernelError) in
                try list.writeNested(type: NBDAttribute.deviceItem) { (item) throws(NBDKernelError) in
                    item.write(type: NBDAttribute.deviceIndex, u32: 0)
                }
            }
        }
        #expect(throws: NBDKernelError.self) { try NBDNetlinkMessages.parseStatusReply(message) }
    }

    @Test func linkDead() throws {
        let message = try reply(command: .linkDead) { (writer) throws(NBDKernelError) in
            writer.write(type: NBDAttribute.index, u32: 4)
        }
        #expect(try NBDNetlinkMessages.parseLinkDead(message) == 4)
        let status = try reply(command: .status) { (_) throws(NBDKernelError) in }
        #expect(try NBDNetlinkMessages.parseLinkDead(status) == nil)
    }

    @Test(arguments: [
        (UInt32(4096), true), (512, true), (1024, true), (256, false), (3000, false), (8192, false), (0, false),
    ])
    func blockSizeValidation(_ blockSize: UInt32, _ valid: Bool) {
        let request = NBDConnectRequest(sockets: [3], size: 1 << 20, blockSize: blockSize, serverFlags: [])
        if valid {
            #expect(throws: Never.self) { try request.validate(pageSize: 4096) }
        } else {
            #expect(throws: NBDKernelError.self) { try request.validate(pageSize: 4096) }
        }
    }

    @Test func validationRefusesNoSocketsZeroSizeAndHugeSize() {
        for request in [
            NBDConnectRequest(sockets: [], size: 1 << 20, blockSize: 512, serverFlags: []),
            NBDConnectRequest(sockets: [-1], size: 1 << 20, blockSize: 512, serverFlags: []),
            NBDConnectRequest(sockets: [3], size: 0, blockSize: 512, serverFlags: []),
            NBDConnectRequest(sockets: [3], size: UInt64.max, blockSize: 512, serverFlags: []),
        ] {
            #expect(throws: NBDKernelError.self) { try request.validate(pageSize: 4096) }
        }
    }

    @Test func durationsRoundUpToWholeSeconds() throws {
        #expect(try NBDKernelDevice.wholeSeconds(.seconds(30)) == 30)
        #expect(try NBDKernelDevice.wholeSeconds(.milliseconds(1500)) == 2)
        #expect(try NBDKernelDevice.wholeSeconds(.zero) == 0)
        #expect(throws: NBDKernelError.self) { try NBDKernelDevice.wholeSeconds(.seconds(-1)) }
        #expect(throws: NBDKernelError.self) { try NBDKernelDevice.deviceIndex(-1) }
    }
}

@Suite struct NBDKernelErrorTests {
    @Test(arguments: [
        (EBUSY, "in use"), (EPERM, "run as root"), (EACCES, "run as root"), (ENOENT, "no such NBD device"),
        (EINVAL, "invalid argument"), (ENOSPC, "no dead connection"), (ENOTSOCK, "not a socket"),
        (EBADF, "not open"), (ENOMEM, "out of memory"), (EEXIST, "already exists"), (ENODEV, "no such device"),
        (ETIMEDOUT, "timed out"), (EOPNOTSUPP, "not supported"),
    ])
    func errnoTable(_ errno: Int32, _ fragment: String) {
        #expect(NBDKernelError.explain(errno: errno, command: "NBD_CMD_CONNECT").contains(fragment))
    }

    @Test func unknownErrnoFallsBackToStrerror() {
        #expect(NBDKernelError.explain(errno: EIO, command: "x") == String(cString: strerror(EIO)))
        #expect(NBDKernelError.errnoName(EIO) == "errno \(EIO)")
    }

    @Test func rejectedDescriptionNamesCommandErrnoAndKernelText() {
        let error = NBDKernelError.kernelRejected("NBD_CMD_CONNECT", errno: EBUSY, extendedMessage: "busy dev")
        #expect(error.code == .kernelRejected)
        #expect(error.errno == EBUSY)
        #expect(error.description.contains("NBD_CMD_CONNECT"))
        #expect(error.description.contains("EBUSY"))
        #expect(error.description.contains("kernel says: busy dev"))
    }

    @Test func noDriverMessage() {
        let error = NBDKernelError.noDriver(modprobe: "Module nbd not found")
        #expect(error.code == .noDriver)
        #expect(error.description == "the kernel has no NBD driver (modprobe nbd failed: Module nbd not found)")
    }
}
