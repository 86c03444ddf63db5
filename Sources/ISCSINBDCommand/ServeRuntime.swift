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
        let target = configuration.targetName ?? ""
        if let replacementTimeout { configuration.replacementTimeout = .seconds(Int64(replacementTimeout)) }
        let session: ISCSISession
        do {
            session = try await ISCSISession.connect(configuration, on: loop, logger: logger).get()
        } catch {
            throw CommandFailure("cannot log in to \(target) at \(portalText): \(ErrorText.describe(error))")
        }
        logger.info("logged in", metadata: ["target": "\(target)", "portal": "\(portalText)"])

        let device: any BlockDevice
        do {
            let scsi = try await openLUN(session: session)
            device = readOnly ? ReadOnlyBlockDevice(scsi, eventLoop: loop) : scsi
            // After every reconnect, before queued I/O goes out: the same LUN (VPD 83h/80h, geometry) or stop.
            session.setReloginCheck { transport in
                scsi.verifyAfterRelogin(over: transport).map { _ in }.flatMapErrorThrowing { error in
                    if let mismatch = error as? LUNIdentityMismatch {
                        throw ISCSISessionError.identityMismatch(mismatch.description)
                    }
                    throw error
                }
            }
        } catch {
            try? await session.logout().get()
            throw CommandFailure("\(lun.map { "LUN \($0)" } ?? "no usable LUN") of \(target): \(error)")
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

    private var portalText: String {
        session.host.contains(":") ? "[\(session.host)]:\(session.port)" : "\(session.host):\(session.port)"
    }

    /// The LUN asked for, or the first one REPORT LUNS lists that is a direct-access block device
    /// (tgt's LUN 0 is its controller; LIO's disks start at 0).
    private func openLUN(session: ISCSISession) async throws -> SCSIBlockDevice {
        if let lun {
            return try await SCSIBlockDevice.open(transport: session, lun: LogicalUnitNumber(lun), logger: logger).get()
        }
        let luns = try await SCSIBlockDevice.reportLUNs(transport: session, logger: logger).get()
        var problems: [String] = []
        for candidate in luns {
            do {
                return try await SCSIBlockDevice.open(transport: session, lun: candidate, logger: logger).get()
            } catch {
                problems.append("LUN \(candidate): \(error)")
            }
        }
        throw CommandFailure("the target has no direct-access LUN (\(problems.joined(separator: "; ")))")
    }
}

/// A failure the user sees as one clear line (ArgumentParser prints `Error: ...` and exits non-zero).
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
