import BlockBackend
import Foundation
import ISCSIBlockBackend
import ISCSIClient
import ISCSIProtocol
import Logging
import NBDServer
import NIOCore
import NIOPosix
import SCSI

/// What `serve` does: log in, probe the LUN, serve it over NBD until a signal, then drain and log out.
struct ServeRuntime {
    /// Who to log in to, as what, with which credentials and proposals (from a URL or a node record).
    var session: ISCSISessionConfiguration
    /// The LUN to serve; nil serves the first direct-access LUN that REPORT LUNS lists.
    var lun: UInt16?
    var sockets: [String]
    var tcp: [ListenAddress]
    var exportName: String
    var readOnly: Bool
    var threads: Int
    /// Seconds requests wait for a recovering session; nil keeps node.session.timeo.replacement_timeout.
    var replacementTimeout: Int?
    /// TLS for the TCP listeners (see `NBDTLSConfiguration`).
    var tls: NBDTLSConfiguration? = nil
    var maxConnections: Int = 512
    var stallTimeout: TimeAmount? = .seconds(30)
    var maxBufferedWriteBytes: Int = 256 << 20
    var logger: Logger

    func run() async throws {
        // Signals are watched from the start: one that arrives during login or probing stops the start-up.
        let reasons = StopReasons()
        let signals = SignalWatcher([SIGINT, SIGTERM]) { reasons.stop("signal \($0)") }
        defer { signals.cancel() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        do {
            try await serve(on: group, reasons: reasons)
            try? await group.shutdownGracefully()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    private func serve(on group: MultiThreadedEventLoopGroup, reasons: StopReasons) async throws {
        // The session, the device and (by the server's placement) every NBD connection share this loop.
        let loop = group.next()

        var configuration = self.session
        if let replacementTimeout { configuration.replacementTimeout = .seconds(Int64(replacementTimeout)) }
        let session = try await SessionWiring.login(configuration, on: loop, logger: logger)
        let device: any BlockDevice
        do {
            let opened = try await SessionWiring.openLUN(session: session, lun: lun, readOnly: readOnly, logger: logger)
            device = opened.device
            SessionWiring.guardIdentity(session: session, devices: [opened.scsi])
        } catch {
            try? await session.logout().get()
            throw error
        }

        let server = NBDServer(
            device: device,
            configuration: NBDServerConfiguration(
                exportName: exportName,
                listen: sockets.map { .unix(path: $0) } + tcp.map { .tcp(host: $0.host, port: $0.port) },
                tls: tls, maxConnections: maxConnections, stallTimeout: stallTimeout,
                maxBufferedWriteBytes: maxBufferedWriteBytes),
            group: group, logger: logger)
        do {
            try await server.start()
        } catch {
            try? await session.logout().get()
            throw CommandFailure("cannot serve: \(error)")
        }
        logger.notice("serving", metadata: [
            "export": "\(exportName)", "size": "\(device.info.size)",
            "listen": "\(server.boundAddresses.map(\.description).joined(separator: ", "))",
        ])

        // Serve until a signal or until the session ends for good (a lost connection is recovered
        // underneath; only a fail-stop such as a LUN identity change ends it).
        session.closeFuture.whenComplete { _ in reasons.stop("the iSCSI session ended") }
        let stopReason = await reasons.first()
        logger.notice("stopping: \(stopReason); draining requests in flight")
        await server.shutdown()
        do {
            try await session.logout().get()
            logger.info("logged out")
        } catch {
            logger.warning("logout failed: \(error)")
        }
        if stopReason.hasPrefix("the iSCSI") { throw CommandFailure("\(stopReason) while serving") }
    }

}

/// A failure the user sees as one clear line (ArgumentParser prints `Error: ...` and exits non-zero).
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
