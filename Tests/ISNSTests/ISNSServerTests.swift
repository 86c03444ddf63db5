import ISCSITestSupport
import NIOCore
import NIOPosix
import Testing

@testable import ISNS

/// Against a real isnsd (open-isns) on loopback; targets are registered with isnsadm.
@Suite(.serialized, .enabled(if: peersAvailable("isnsd", "isnsadm")), .timeLimit(.minutes(2)))
struct ISNSServerTests {
    let initiator = "iqn.2026-11.test.iscsi-nbd:initiator1"

    @Test func registerQueryDeregister() async throws {
        let isns = try ISNSD.start()
        defer { isns.stop() }
        try isns.register(entity: "tgt-entity", portal: "127.0.0.1:3260",
                          targets: ["iqn.2026-11.test:disk-a", "iqn.2026-11.test:disk-b"])

        let client = try await ISNSClient.connect(host: "127.0.0.1", port: isns.port)
        try await client.registerInitiator(name: initiator, entityIdentifier: "nbd-entity")
        // Our registration is visible to isnsadm as an initiator node.
        #expect(try isns.nodeNames(type: "Initiator").contains(initiator))

        let targets = try await client.queryTargets(source: initiator)
        #expect(targets == [
            ISNSDiscoveredTarget(name: "iqn.2026-11.test:disk-a", portals: [ISNSPortal(host: "127.0.0.1", port: 3260, tpgt: 1)]),
            ISNSDiscoveredTarget(name: "iqn.2026-11.test:disk-b", portals: [ISNSPortal(host: "127.0.0.1", port: 3260, tpgt: 1)]),
        ])

        try await client.deregister(source: initiator, entityIdentifier: "nbd-entity")
        #expect(try !isns.nodeNames(type: "Initiator").contains(initiator))
        // Targets are untouched.
        #expect(try isns.nodeNames(type: "Target").sorted() == ["iqn.2026-11.test:disk-a", "iqn.2026-11.test:disk-b"])
        try await client.close()
    }

    @Test func discoverTargetsEndToEndWithTwoPortals() async throws {
        let isns = try ISNSD.start()
        defer { isns.stop() }
        try isns.register(entity: "e1", portal: "127.0.0.1:3260", targets: ["iqn.2026-11.test:one"])
        try isns.register(entity: "e2", portal: "127.0.0.2:3261", targets: ["iqn.2026-11.test:two"])

        let client = try await ISNSClient.connect(host: "127.0.0.1", port: isns.port)
        let targets = try await client.discoverTargets(initiatorName: initiator)
        #expect(targets.map(\.name) == ["iqn.2026-11.test:one", "iqn.2026-11.test:two"])
        #expect(targets.first { $0.name.hasSuffix("two") }?.portals == [ISNSPortal(host: "127.0.0.2", port: 3261, tpgt: 1)])
        // discoverTargets deregisters afterwards.
        #expect(try !isns.nodeNames(type: "Initiator").contains(initiator))
        try await client.close()
    }

    @Test func emptyServerGivesNoTargets() async throws {
        let isns = try ISNSD.start()
        defer { isns.stop() }
        let client = try await ISNSClient.connect(host: "127.0.0.1", port: isns.port)
        let targets = try await client.discoverTargets(initiatorName: initiator)
        #expect(targets.isEmpty)
        try await client.close()
    }

    @Test func connectionRefusedIsAnError() async throws {
        let port = try freeLoopbackPort()
        await #expect(throws: (any Error).self) {
            _ = try await ISNSClient.connect(host: "127.0.0.1", port: port, timeout: .seconds(2))
        }
    }
}

/// A fake server on loopback that answers with whatever bytes a test gives it, to check that the
/// client survives a hostile iSNS server.
@Suite(.timeLimit(.minutes(1)))
struct ISNSHostileServerTests {
    final class ReplyHandler: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let reply: @Sendable (UInt16) -> [UInt8]
        init(reply: @escaping @Sendable (UInt16) -> [UInt8]) { self.reply = reply }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let request = unwrapInboundIn(data)
            let xid = request.getInteger(at: request.readerIndex + 8, as: UInt16.self) ?? 0
            let bytes = reply(xid)
            if bytes.isEmpty { context.close(promise: nil); return }
            context.writeAndFlush(NIOAny(ByteBuffer(bytes: bytes)), promise: nil)
        }
    }

    func withServer(_ reply: @escaping @Sendable (UInt16) -> [UInt8], _ body: (Int) async throws -> Void) async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(ReplyHandler(reply: reply)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = server.localAddress?.port ?? 0
        do { try await body(port) } catch {
            try await server.close()
            throw error
        }
        try await server.close()
    }

    static func header(function: UInt16, length: UInt16, xid: UInt16, flags: UInt16 = 0x4C00) -> [UInt8] {
        [0, 1, UInt8(function >> 8), UInt8(function & 0xFF), UInt8(length >> 8), UInt8(length & 0xFF),
         UInt8(flags >> 8), UInt8(flags & 0xFF), UInt8(xid >> 8), UInt8(xid & 0xFF), 0, 0]
    }

    @Test func malformedTLVFromServerIsAnError() async throws {
        try await withServer({ xid in
            // Status 0, then a TLV claiming 0x1000 bytes in an 8-byte payload remainder.
            Self.header(function: 0x8002, length: 12, xid: xid) + [0, 0, 0, 0, 0, 0, 0, 48, 0, 0, 0x10, 0]
        }) { port in
            let client = try await ISNSClient.connect(host: "127.0.0.1", port: port)
            await #expect(throws: ISNSError.self) { try await client.queryTargets(source: "iqn.2026-11.test:x") }
            try await client.close()
        }
    }

    @Test func badVersionClosesAndFails() async throws {
        try await withServer({ xid in
            var h = Self.header(function: 0x8002, length: 4, xid: xid)
            h[1] = 9
            return h + [0, 0, 0, 0]
        }) { port in
            let client = try await ISNSClient.connect(host: "127.0.0.1", port: port)
            await #expect(throws: (any Error).self) { try await client.queryTargets(source: "iqn.2026-11.test:x") }
            try await client.close()
        }
    }

    @Test func wrongResponseTypeIsAnError() async throws {
        try await withServer({ xid in Self.header(function: 0x8004, length: 4, xid: xid) + [0, 0, 0, 0] }) { port in
            let client = try await ISNSClient.connect(host: "127.0.0.1", port: port)
            await #expect { try await client.queryTargets(source: "iqn.2026-11.test:x") } throws: {
                ($0 as? ISNSError)?.code == .unexpectedResponse
            }
            try await client.close()
        }
    }

    @Test func errorStatusIsThrownWithItsMessage() async throws {
        try await withServer({ xid in Self.header(function: 0x8001, length: 4, xid: xid) + [0, 0, 0, 6] }) { port in
            let client = try await ISNSClient.connect(host: "127.0.0.1", port: port)
            await #expect {
                try await client.registerInitiator(name: "iqn.2026-11.test:x", entityIdentifier: "e")
            } throws: { ($0 as? ISNSError)?.status == .sourceUnknown && "\($0)".contains("Source Unknown") }
            try await client.close()
        }
    }

    @Test func serverClosingFailsTheRequest() async throws {
        try await withServer({ _ in [] }) { port in
            let client = try await ISNSClient.connect(host: "127.0.0.1", port: port)
            await #expect { try await client.queryTargets(source: "iqn.2026-11.test:x") } throws: {
                ($0 as? ISNSError)?.code == .connectionClosed
            }
            try await client.close()
        }
    }

    @Test func silentServerTimesOut() async throws {
        try await withServer({ _ in [0] }) { port in  // one stray byte, never a full PDU
            let client = try await ISNSClient.connect(host: "127.0.0.1", port: port, timeout: .milliseconds(300))
            await #expect { try await client.queryTargets(source: "iqn.2026-11.test:x") } throws: {
                ($0 as? ISNSError)?.code == .timeout
            }
            try await client.close()
        }
    }
}
