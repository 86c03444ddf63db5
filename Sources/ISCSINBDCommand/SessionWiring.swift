import BlockBackend
import ISCSIBlockBackend
import ISCSIClient
import Logging
import NIOCore
import SCSI

/// "Open a session, open a LUN as a block device": shared by `serve`, `attach` and the daemon.
enum SessionWiring {
    /// Logs in; the error names the target and portal.
    static func login(_ configuration: ISCSISessionConfiguration, on loop: any EventLoop, logger: Logger) async throws -> ISCSISession {
        if let note = configuration.authNote {
            logger.notice("\(note)", metadata: ["target": "\(configuration.targetName ?? "-")"])
        }
        do {
            let session = try await ISCSISession.connect(configuration, on: loop, logger: logger).get()
            logger.info("logged in", metadata: [
                "target": "\(configuration.targetName ?? "-")",
                "portal": "\(configuration.portal)",
            ])
            return session
        } catch {
            throw LoginFailure(
                description: "cannot log in to \(configuration.targetName ?? "-") at \(configuration.portal): \(ErrorText.describe(error))",
                isPermanent: (error as? ISCSISessionError).map {
                    if case .login(let e) = $0 { return e.isPermanent }
                    return false
                } ?? false)
        }
    }

    /// Probes a LUN and returns it as a block device (read-only wrapper when asked). With `lun` nil, the
    /// first LUN that REPORT LUNS lists and that is a direct-access block device (tgt's LUN 0 is its
    /// controller; LIO's disks start at 0).
    static func openLUN(
        session: ISCSISession, lun: UInt16?, readOnly: Bool, logger: Logger
    ) async throws -> (device: any BlockDevice, scsi: SCSIBlockDevice) {
        let target = session.configuration.targetName ?? "-"
        let scsi: SCSIBlockDevice
        if let lun {
            do {
                scsi = try await SCSIBlockDevice.open(transport: session, lun: LogicalUnitNumber(lun), logger: logger).get()
            } catch {
                throw CommandFailure("LUN \(lun) of \(target): \(error)")
            }
        } else {
            let luns = try await SCSIBlockDevice.reportLUNs(transport: session, logger: logger).get()
            var problems: [String] = []
            var found: SCSIBlockDevice?
            for candidate in luns where found == nil {
                do {
                    found = try await SCSIBlockDevice.open(transport: session, lun: candidate, logger: logger).get()
                } catch {
                    problems.append("LUN \(candidate): \(error)")
                }
            }
            guard let found else {
                throw CommandFailure("\(target) has no direct-access LUN (\(problems.joined(separator: "; ")))")
            }
            scsi = found
        }
        return (readOnly ? ReadOnlyBlockDevice(scsi, eventLoop: session.eventLoop) : scsi, scsi)
    }

    /// After every reconnect, before queued I/O goes out: each device must still be the same LU (VPD 83h,
    /// 80h, geometry; a grown LUN is passed on) or the session fail-stops and nothing is written to a
    /// different LU.
    static func guardIdentity(session: ISCSISession, devices: [SCSIBlockDevice]) {
        session.setReloginCheck { transport in
            let checks = devices.map { device in
                device.verifyAfterRelogin(over: transport).map { _ in }.flatMapErrorThrowing { error in
                    if let mismatch = error as? LUNIdentityMismatch {
                        throw ISCSISessionError.identityMismatch(mismatch.description)
                    }
                    throw error
                }
            }
            return EventLoopFuture.andAllSucceed(checks, on: transport.eventLoop)
        }
    }

    /// The LUNs of a session that are disks (REPORT LUNS; LUN 0 when REPORT LUNS is not answered).
    static func reportLUNs(session: ISCSISession, logger: Logger) async -> [UInt16] {
        let luns = (try? await SCSIBlockDevice.reportLUNs(transport: session, logger: logger).get()) ?? [LogicalUnitNumber(0)]
        return luns.compactMap(\.number)
    }
}

/// A login that failed, said in one line; `isPermanent` when trying again cannot help (see
/// `LoginError.isPermanent`), so the daemon does not retry it in the background.
struct LoginFailure: Error, CustomStringConvertible {
    var description: String
    var isPermanent: Bool
}
