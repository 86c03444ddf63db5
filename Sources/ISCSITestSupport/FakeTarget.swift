import ISCSIProtocol
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A small scripted iSCSI target on 127.0.0.1 for session tests that a real tgtd cannot drive: it records
/// every Login Request (ISID, TSIH), serves READ(16)/WRITE(16) on an in-memory disk, and on command sends
/// an Async Message asking for logout, stops answering commands, or drops every connection.
///
/// Login: AuthMethod=None, then the operational keys below (ImmediateData=Yes, InitialR2T=No,
/// FirstBurstLength = MaxBurstLength = 256 KiB, so writes up to 256 KiB need no R2T).
public final class FakeTarget: Sendable {
    public struct LoginRecord: Sendable, Hashable {
        public var isid: UInt64
        public var tsih: UInt16
    }

    public let port: Int
    public let blockSize = 512
    private let group: MultiThreadedEventLoopGroup
    private let server: any Channel
    private let state: NIOLockedValueBox<State>

    struct State {
        var disk: [UInt8]
        var logins: [LoginRecord] = []
        var nextTSIH: UInt16 = 0x100
        var connections: [ObjectIdentifier: any Channel] = [:]
        var holdCommands = false
        var commandsSeen = 0
    }

    public init(diskSize: Int = 1 << 20) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.group = group
        let state = NIOLockedValueBox(State(disk: [UInt8](repeating: 0, count: diskSize)))
        self.state = state
        do {
            server = try ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    state.withLockedValue { $0.connections[ObjectIdentifier(channel)] = channel }
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(Connection(state: state))
                    }
                }
                .bind(host: "127.0.0.1", port: 0).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
        port = server.localAddress?.port ?? 0
    }

    /// Every Login Request's first PDU (ISID and TSIH), in order.
    public var logins: [LoginRecord] { state.withLockedValue { $0.logins } }
    /// SCSI commands received (re-issued ones included).
    public var commandsSeen: Int { state.withLockedValue { $0.commandsSeen } }

    public func read(offset: Int, length: Int) -> [UInt8] {
        state.withLockedValue { Array($0.disk[offset..<(offset + length)]) }
    }

    /// Commands are received but not answered until `holdCommands(false)`... or the connection drops.
    public func holdCommands(_ hold: Bool) { state.withLockedValue { $0.holdCommands = hold } }

    /// Sends Async Message "logout requested" (RFC 7143 §11.9.1, AsyncEvent 1) on every connection.
    public func requestLogout() { broadcast(.logoutRequested) }

    /// Sends Async Message "connection will drop" with Time2Wait `seconds`, then drops every connection.
    public func announceDropAndDisconnect(time2Wait seconds: UInt16) {
        broadcast(.connectionWillDrop, parameter2: seconds, thenClose: true)
    }

    /// Closes every connection.
    public func dropAll() {
        let all = state.withLockedValue { s -> [any Channel] in
            defer { s.connections.removeAll() }
            return Array(s.connections.values)
        }
        for channel in all { channel.close(promise: nil) }
    }

    private func broadcast(_ event: ISCSIPDU.AsyncMessage.Event, parameter2: UInt16 = 0, thenClose: Bool = false) {
        let all = state.withLockedValue { Array($0.connections.values) }
        for channel in all {
            channel.eventLoop.execute {
                guard let handler = try? channel.pipeline.syncOperations.handler(type: Connection.self) else { return }
                handler.sendAsync(event, parameter2: parameter2, channel: channel)
                if thenClose { channel.close(promise: nil) }
            }
        }
    }

    public func stop() {
        dropAll()
        try? server.close().wait()
        try? group.syncShutdownGracefully()
    }

    /// One connection's protocol engine (target side).
    final class Connection: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let state: NIOLockedValueBox<State>
        var parser = PDUParser(maxDataSegmentLength: 1 << 20, direction: .initiatorToTarget)
        var buffer = ByteBuffer()
        var statSN = SerialNumber(1)
        var expCmdSN = SerialNumber(0)
        var tsih: UInt16 = 0
        var loginLogged = false
        /// Writes collecting unsolicited Data-Out: ITT → (LBA offset, expected length, data so far).
        var writes: [UInt32: (offset: Int, length: Int, data: [UInt8])] = [:]

        init(state: NIOLockedValueBox<State>) { self.state = state }

        var maxCmdSN: SerialNumber { expCmdSN + 32 }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var incoming = unwrapInboundIn(data)
            buffer.writeBuffer(&incoming)
            do {
                while let pdu = try parser.parse(&buffer) { try handle(pdu, context: context) }
            } catch {
                context.close(promise: nil)
            }
            context.flush()
        }

        func channelInactive(context: ChannelHandlerContext) {
            state.withLockedValue { _ = $0.connections.removeValue(forKey: ObjectIdentifier(context.channel)) }
            context.fireChannelInactive()
        }

        func send(_ message: ISCSIMessage, context: ChannelHandlerContext) {
            var out = context.channel.allocator.buffer(capacity: 64)
            PDUEncoder().encode(message.pdu, into: &out)
            context.write(wrapOutboundOut(out), promise: nil)
        }

        func sendAsync(_ event: ISCSIPDU.AsyncMessage.Event, parameter2: UInt16, channel: any Channel) {
            var m = ISCSIPDU.AsyncMessage()
            m.event = event
            m.parameter2 = parameter2
            m.parameter3 = 2
            m.statSN = statSN
            statSN += 1
            m.expCmdSN = expCmdSN
            m.maxCmdSN = maxCmdSN
            var out = channel.allocator.buffer(capacity: 64)
            PDUEncoder().encode(ISCSIMessage.asyncMessage(m).pdu, into: &out)
            channel.writeAndFlush(out, promise: nil)
        }

        func handle(_ pdu: ISCSIPDU, context: ChannelHandlerContext) throws {
            switch pdu.header.opcode {
            case .loginRequest:
                let request = try ISCSIPDU.LoginRequest(pdu)
                if !loginLogged {
                    loginLogged = true
                    tsih = state.withLockedValue { s in
                        s.logins.append(LoginRecord(isid: request.isid, tsih: request.tsih))
                        s.nextTSIH &+= 1
                        return s.nextTSIH
                    }
                    expCmdSN = request.cmdSN
                }
                var response = ISCSIPDU.LoginResponse()
                response.transit = request.transit
                response.currentStage = request.currentStage
                response.nextStage = request.nextStage
                response.isid = request.isid
                response.tsih = request.transit && request.nextStage == 3 ? tsih : 0
                response.initiatorTaskTag = request.initiatorTaskTag
                response.statSN = statSN
                statSN += 1
                response.expCmdSN = expCmdSN
                response.maxCmdSN = maxCmdSN
                let keys: [(String, String)] =
                    request.currentStage == 0
                    ? [("AuthMethod", "None")]
                    : [
                        ("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "262144"),
                        ("InitialR2T", "No"), ("ImmediateData", "Yes"), ("MaxBurstLength", "262144"),
                        ("FirstBurstLength", "262144"), ("MaxOutstandingR2T", "1"), ("DataPDUInOrder", "Yes"),
                        ("DataSequenceInOrder", "Yes"), ("ErrorRecoveryLevel", "0"), ("DefaultTime2Wait", "2"),
                        ("DefaultTime2Retain", "0"), ("MaxConnections", "1"),
                    ]
                response.data = TextKeyValues(keys).encoded()
                send(.loginResponse(response), context: context)
            case .scsiCommand:
                let command = try ISCSIPDU.SCSICommand(pdu)
                if !command.immediate { expCmdSN = command.cmdSN + 1 }
                let hold = state.withLockedValue { s -> Bool in
                    s.commandsSeen += 1
                    return s.holdCommands
                }
                if hold { return }
                let cdb = command.cdb.bytes
                var lba = 0
                for i in 0..<8 { lba = lba << 8 | Int(cdb[2 + i]) }
                var blocks = 0
                for i in 0..<4 { blocks = blocks << 8 | Int(cdb[10 + i]) }
                let offset = lba * 512
                let length = blocks * 512
                switch cdb[0] {
                case 0x88:
                    let bytes = state.withLockedValue { s -> [UInt8] in
                        offset + length <= s.disk.count ? Array(s.disk[offset..<(offset + length)]) : []
                    }
                    var d = ISCSIPDU.DataIn()
                    d.initiatorTaskTag = command.initiatorTaskTag
                    d.final = true
                    d.statusPresent = true
                    d.status = 0
                    d.statSN = statSN
                    statSN += 1
                    d.expCmdSN = expCmdSN
                    d.maxCmdSN = maxCmdSN
                    d.data = ByteBuffer(bytes: bytes)
                    send(.dataIn(d), context: context)
                case 0x8A:
                    writes[command.initiatorTaskTag] = (offset, length, Array(command.data.readableBytesView))
                    finishWriteIfComplete(command.initiatorTaskTag, context: context)
                default:
                    respond(itt: command.initiatorTaskTag, context: context)
                }
            case .dataOut:
                let out = try ISCSIPDU.DataOut(pdu)
                writes[out.initiatorTaskTag]?.data.append(contentsOf: out.data.readableBytesView)
                finishWriteIfComplete(out.initiatorTaskTag, context: context)
            case .nopOut:
                let nop = try ISCSIPDU.NOPOut(pdu)
                guard nop.initiatorTaskTag != 0xFFFF_FFFF else { return }
                var reply = ISCSIPDU.NOPIn()
                reply.initiatorTaskTag = nop.initiatorTaskTag
                reply.statSN = statSN
                statSN += 1
                reply.expCmdSN = expCmdSN
                reply.maxCmdSN = maxCmdSN
                send(.nopIn(reply), context: context)
            case .logoutRequest:
                let request = try ISCSIPDU.LogoutRequest(pdu)
                var response = ISCSIPDU.LogoutResponse()
                response.initiatorTaskTag = request.initiatorTaskTag
                response.statSN = statSN
                statSN += 1
                response.expCmdSN = expCmdSN
                response.maxCmdSN = maxCmdSN
                send(.logoutResponse(response), context: context)
                context.flush()
                context.close(promise: nil)
            default:
                break
            }
        }

        func finishWriteIfComplete(_ itt: UInt32, context: ChannelHandlerContext) {
            guard let write = writes[itt], write.data.count >= write.length else { return }
            writes[itt] = nil
            state.withLockedValue { s in
                guard write.offset + write.length <= s.disk.count else { return }
                s.disk.replaceSubrange(write.offset..<(write.offset + write.length), with: write.data.prefix(write.length))
            }
            respond(itt: itt, context: context)
        }

        func respond(itt: UInt32, context: ChannelHandlerContext) {
            var r = ISCSIPDU.SCSIResponse()
            r.initiatorTaskTag = itt
            r.statSN = statSN
            statSN += 1
            r.expCmdSN = expCmdSN
            r.maxCmdSN = maxCmdSN
            send(.scsiResponse(r), context: context)
        }
    }
}
