import BlockBackend
import ISCSIBlockBackend
import ISCSIClient
import Logging
import NIOCore
import SCSI

/// "Open a session, open a LUN as a block device": shared by `serve`, `attach` and the daemon.
enum SessionWiring {
    static func portalText(host: String, port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// Logs in; the error names the target and portal.
    static func login(_ configuration: ISCSISessionConfiguration, on loop: any EventLoop, logger: Logger) async throws -> ISCSISession {
        do {
            let session = try await ISCSISession.connect(configuration, on: loop, logger: logger).get()
            logger.info("logged in", metadata: [
                "target": "\(configuration.targetName ?? "-")",
                "portal": "\(portalText(host: configuration.host, port: configuration.port))",
            ])
            return session
        } catch {
            throw CommandFailure(
                "cannot log in to \(configuration.targetName ?? "-") at \(portalText(host: configuration.host, port: configuration.port)): \(error)")
        }
    }

    /// Probes a LUN and returns it as a block device (read-only wrapper when asked).
    static func openLUN(
        session: ISCSISession, lun: UInt16, readOnly: Bool, logger: Logger
    ) async throws -> (device: any BlockDevice, scsi: SCSIBlockDevice) {
        do {
            let scsi = try await SCSIBlockDevice.open(transport: session, lun: LogicalUnitNumber(lun), logger: logger).get()
            return (readOnly ? ReadOnlyBlockDevice(scsi, eventLoop: session.eventLoop) : scsi, scsi)
        } catch {
            throw CommandFailure("LUN \(lun) of \(session.configuration.targetName ?? "-"): \(error)")
        }
    }

    /// The LUNs of a session that are disks (REPORT LUNS; LUN 0 when REPORT LUNS is not answered).
    static func reportLUNs(session: ISCSISession, logger: Logger) async -> [UInt16] {
        let luns = (try? await SCSIBlockDevice.reportLUNs(transport: session, logger: logger).get()) ?? [LogicalUnitNumber(0)]
        return luns.compactMap(\.number)
    }

    /// NBD_ATTR_BACKEND_IDENTIFIER: names the LU uniquely, so a stale /dev/nbdN is never taken for another
    /// LUN: "iscsi-nbd:IQN:lun-N:<preferred VPD 83h designator>" (or the serial number).
    static func backendIdentifier(target: String, lun: UInt16, identity: LUNIdentity?) -> String {
        var id = "iscsi-nbd:\(target):lun-\(lun)"
        if let d = identity?.designator {
            id += ":\(d.description)"
        } else if let serial = identity?.serialNumber, !serial.isEmpty {
            id += ":serial.\(serial)"
        }
        // Keep it one printable line (it is shown in /sys/block/nbdN/backend).
        return String(id.unicodeScalars.map { $0.value >= 0x20 && $0.value < 0x7F ? Character($0) : "_" }.prefix(512))
    }
}
