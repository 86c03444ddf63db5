import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A TCP proxy on 127.0.0.1 that forwards to an upstream (a target) and injects faults on command:
/// cut every connection, black-hole traffic (TCP stays up, nothing arrives: a stalled link), delay,
/// truncate (forward N more bytes, then cut) or corrupt a byte.
///
///     let proxy = try FaultProxy(upstreamPort: tgt.port)
///     // connect the initiator to 127.0.0.1:proxy.port
///     proxy.inject(.blackhole, toward: .initiator)
public final class FaultProxy: Sendable {
    public enum Direction: Sendable, Hashable {
        /// Bytes from the initiator to the target.
        case target
        /// Bytes from the target to the initiator.
        case initiator
    }

    public enum Fault: Sendable, Hashable {
        case none
        /// Discard everything (the connection stays open).
        case blackhole
        /// Forward each chunk after this delay.
        case delay(TimeAmount)
        /// Forward this many more bytes, then cut the connection (once; later connections are not affected).
        case truncate(afterBytes: Int)
        /// Flip the bits of the byte this many bytes further on, once.
        case corrupt(afterBytes: Int)
    }

    public let port: Int
    public let upstreamHost: String
    public let upstreamPort: Int
    private let group: MultiThreadedEventLoopGroup
    private let server: any Channel
    private let state: NIOLockedValueBox<State>

    struct State {
        var faults: [Direction: Fault] = [.target: .none, .initiator: .none]
        var connections: [ObjectIdentifier: any Channel] = [:]
        var accepted = 0
        var refuse = false
    }

    public init(upstreamHost: String = "127.0.0.1", upstreamPort: Int) throws {
        self.upstreamHost = upstreamHost
        self.upstreamPort = upstreamPort
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.group = group
        let state = NIOLockedValueBox(State())
        self.state = state
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { inbound in
                let refuse = state.withLockedValue { s -> Bool in
                    s.accepted += 1
                    return s.refuse
                }
                if refuse { return inbound.close() }
                return ClientBootstrap(group: inbound.eventLoop)
                    .connect(host: upstreamHost, port: upstreamPort)
                    .flatMap { outbound in
                        state.withLockedValue {
                            $0.connections[ObjectIdentifier(inbound)] = inbound
                            $0.connections[ObjectIdentifier(outbound)] = outbound
                        }
                        // ClientBootstrap(group: inbound.eventLoop): both channels live on this loop.
                        return inbound.eventLoop.makeCompletedFuture {
                            try inbound.pipeline.syncOperations.addHandler(
                                Relay(peer: outbound, direction: .target, state: state))
                            try outbound.pipeline.syncOperations.addHandler(
                                Relay(peer: inbound, direction: .initiator, state: state))
                            inbound.read()
                        }
                    }
                    .flatMapError { _ in inbound.close() }
            }
        do {
            server = try bootstrap.bind(host: "127.0.0.1", port: 0).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
        port = server.localAddress?.port ?? 0
    }

    /// Sets the fault for one direction of every connection (existing and new).
    public func inject(_ fault: Fault, toward direction: Direction) {
        state.withLockedValue { $0.faults[direction] = fault }
    }

    /// Clears all faults.
    public func heal() {
        state.withLockedValue {
            $0.faults = [.target: .none, .initiator: .none]
            $0.refuse = false
        }
    }

    /// New connections are accepted and closed at once (the target "is down") until `heal()`.
    public func refuseNewConnections() { state.withLockedValue { $0.refuse = true } }

    /// Closes every proxied connection (both sides).
    public func cutAll() {
        let channels = state.withLockedValue { s -> [any Channel] in
            let all = Array(s.connections.values)
            s.connections.removeAll()
            return all
        }
        for channel in channels { channel.close(promise: nil) }
    }

    /// Connections accepted so far (initiator reconnects show up here).
    public var acceptedConnections: Int { state.withLockedValue { $0.accepted } }

    public func stop() {
        cutAll()
        try? server.close().wait()
        try? group.syncShutdownGracefully()
    }

    /// Forwards what its channel reads to `peer`, applying the direction's fault.
    private final class Relay: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let peer: any Channel
        let direction: Direction
        let state: NIOLockedValueBox<State>

        init(peer: any Channel, direction: Direction, state: NIOLockedValueBox<State>) {
            self.peer = peer
            self.direction = direction
            self.state = state
        }

        func channelActive(context: ChannelHandlerContext) {
            context.read()
            context.fireChannelActive()
        }

        func handlerAdded(context: ChannelHandlerContext) {
            if context.channel.isActive { context.read() }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            let direction = self.direction
            let (fault, cutAfter) = state.withLockedValue { s -> (Fault, Int?) in
                let fault = s.faults[direction] ?? .none
                switch fault {
                case .truncate(let n):
                    let remaining = n - buffer.readableBytes
                    s.faults[direction] = remaining > 0 ? .truncate(afterBytes: remaining) : Fault.none
                    return (fault, remaining > 0 ? nil : n)
                case .corrupt(let n):
                    if n < buffer.readableBytes {
                        s.faults[direction] = Fault.none
                    } else {
                        s.faults[direction] = .corrupt(afterBytes: n - buffer.readableBytes)
                    }
                    return (fault, nil)
                default:
                    return (fault, nil)
                }
            }
            let peer = self.peer
            switch fault {
            case .none:
                peer.writeAndFlush(buffer, promise: nil)
            case .blackhole:
                break
            case .delay(let amount):
                context.eventLoop.scheduleTask(in: amount) { peer.writeAndFlush(buffer, promise: nil) }
            case .truncate:
                if let n = cutAfter {
                    if n > 0, let head = buffer.readSlice(length: min(n, buffer.readableBytes)) {
                        peer.writeAndFlush(head, promise: nil)
                    }
                    context.close(promise: nil)
                    peer.close(promise: nil)
                } else {
                    peer.writeAndFlush(buffer, promise: nil)
                }
            case .corrupt(let n):
                if n < buffer.readableBytes, let byte = buffer.getInteger(at: buffer.readerIndex + n, as: UInt8.self) {
                    buffer.setInteger(~byte, at: buffer.readerIndex + n)
                }
                peer.writeAndFlush(buffer, promise: nil)
            }
            context.read()
        }

        func channelInactive(context: ChannelHandlerContext) {
            peer.close(promise: nil)
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
