import BlockBackend
import ISCSIBlockBackend
import ISCSIClient
import Logging
import NIOCore
import ServiceLifecycle

/// A logged-in session and the LUN opened on it, handed from `SessionService` to the service that
/// serves it (the NBD export of `serve`, the kernel device of `attach`).
struct OpenedLUN: Sendable {
    var session: ISCSISession
    /// What NBD serves (a read-only wrapper with --read-only).
    var device: any BlockDevice
    var scsi: SCSIBlockDevice
}

/// `serve` and `attach`: logs in, opens the LUN, hands it on, and keeps the session until the group shuts
/// down; then logs out. It comes first in the group, so it is shut down last, after whatever serves the
/// LUN has drained or detached. A session that ends for good (a fail-stop; lost connections recover
/// underneath) ends the command with an error.
struct SessionService: Service {
    var configuration: ISCSISessionConfiguration
    /// nil: the first direct-access LUN of REPORT LUNS.
    var lun: UInt16?
    var readOnly: Bool
    var loop: any EventLoop
    var opened: Handoff<OpenedLUN>
    var logger: Logger

    func run() async throws {
        let stop = StopSignal()
        let session: ISCSISession
        let lun: OpenedLUN
        do {
            session = try await SessionWiring.login(configuration, on: loop, logger: logger)
        } catch {
            opened.resolve(nil)
            throw error
        }
        do {
            let open = try await SessionWiring.openLUN(session: session, lun: self.lun, readOnly: readOnly, logger: logger)
            // Before queued I/O is re-issued after a reconnect, the LU must still be the same one.
            SessionWiring.guardIdentity(session: session, devices: [open.scsi])
            lun = OpenedLUN(session: session, device: open.device, scsi: open.scsi)
        } catch {
            opened.resolve(nil)
            try? await session.logout().get()
            throw error
        }
        session.closeFuture.whenComplete { _ in stop.stop(.sessionEnded) }
        opened.resolve(lun)
        let reason = await stop.first()
        guard reason != .sessionEnded else { throw CommandFailure("\(reason) while in use") }
        do {
            try await session.logout().get()
            logger.info("logged out")
        } catch {
            logger.warning("logout failed: \(error)")
        }
    }
}
