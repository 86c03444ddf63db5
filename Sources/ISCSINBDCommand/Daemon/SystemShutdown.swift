import Foundation
import NIOPosix

/// Whether the machine is shutting down, as systemd says (`systemctl is-system-running` prints
/// "stopping" once a shutdown, reboot or poweroff is under way; a restart of our own unit is not one).
enum SystemShutdown {
    /// True only under systemd (PID 1), and only while it is stopping. Blocking: run off the event loops.
    static func inProgress(systemdRuntime: String = "/run/systemd/system") -> Bool {
        guard FileManager.default.fileExists(atPath: systemdRuntime) else { return false }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/systemctl")
        process.arguments = ["is-system-running"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return false }
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == "stopping"
    }
}

extension DaemonCore {
    /// While a session is down, watches for the machine shutting down. Then waiting for the target is
    /// pointless: the unmount that writes back dirty pages would hang until the replacement timeout, and
    /// systemd's stop job with it ("A stop job is running"). So held requests fail at once and the journal
    /// says which devices lost what. Checked every 2 s, only while some session is recovering.
    func watchShutdown(every period: Duration = .seconds(2)) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: period)
            let down = recoveringSessions()
            guard !down.isEmpty else { continue }
            let stopping = (try? await NIOThreadPool.singleton.runIfActive { SystemShutdown.inProgress() }) ?? false
            guard stopping else { continue }
            for (id, session, devices) in down {
                let failed = (try? await session.expireRecovery(reason: "down while the system shuts down").get()) ?? 0
                logger.error("the system is shutting down and session \(id) (\(session.configuration.targetName ?? "-") at \(session.configuration.portal)) cannot reach its target: \(failed) held SCSI command(s) failed; data not written to \(devices.joined(separator: ", ")) is lost")
            }
        }
    }
}
