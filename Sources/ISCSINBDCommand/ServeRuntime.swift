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
    var url: ISCSIURL
    var chap: ResolvedCHAP?
    var sockets: [String]
    var tcp: [ListenAddress]
    var exportName: String
    var readOnly: Bool
    var initiatorName: String?
    var queueDepth: Int
    var threads: Int
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

        var configuration = ISCSISessionConfiguration(
            host: url.host, port: url.port, targetName: url.targetName,
            initiatorName: try initiatorName ?? InitiatorIdentity.defaultName(),
            queueDepth: queueDepth)
        configuration.chap = chap.map(\.credentials)

        let session: ISCSISession
        do {
            session = try await ISCSISession.connect(configuration, on: loop, logger: logger).get()
        } catch {
            throw CommandFailure("cannot log in to \(url.targetName) at \(portalText): \(error)")
        }
        logger.info("logged in", metadata: ["target": "\(url.targetName)", "portal": "\(portalText)"])

        let device: any BlockDevice
        do {
            let scsi = try await SCSIBlockDevice.open(
                transport: session, lun: LogicalUnitNumber(url.lun), logger: logger).get()
            device = readOnly ? ReadOnlyBlockDevice(scsi, eventLoop: loop) : scsi
        } catch {
            try? await session.logout().get()
            throw CommandFailure("LUN \(url.lun) of \(url.targetName): \(error)")
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

        // Serve until a signal or until the session dies under us.
        session.closeFuture.whenComplete { _ in reasons.stop("the iSCSI connection closed") }
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

    private var portalText: String { url.host.contains(":") ? "[\(url.host)]:\(url.port)" : "\(url.host):\(url.port)" }
}

/// A failure the user sees as one clear line (ArgumentParser prints `Error: ...` and exits non-zero).
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
