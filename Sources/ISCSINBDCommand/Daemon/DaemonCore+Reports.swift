import Foundation
import ISCSIBlockBackend
import ISCSIClient

extension DaemonCore {
    // MARK: - Reports

    /// iscsiadm's CHAP section (secrets always masked), headed by the method actually used: open-iscsi's
    /// rule makes that CHAP whenever a password is set, whatever `authmethod` says.
    static func authRows(_ c: ISCSISessionConfiguration) -> [[String]] {
        [
            ["authmethod in use", c.authSummary],
            ["username", c.chap.map(\.username).flatMap { $0.isEmpty ? nil : $0 } ?? "<empty>"],
            ["password", "********"],
            ["username_in", c.chap?.mutual.map(\.username).flatMap { $0.isEmpty ? nil : $0 } ?? "<empty>"],
            ["password_in", "********"],
        ]
    }

    func sessionReports() -> [ControlSession] {
        table.entries.values.sorted { $0.id < $1.id }.map { e in
            let l = live[e.id]
            let luns = l?.attachments.map { a in
                ControlLUN(lun: a.lun, device: a.attachment.devicePath, byPath: a.attachment.byPathLink,
                           size: a.attachment.device.info.size, blockSize: a.attachment.device.info.logicalBlockSize,
                           backend: a.attachment.backendIdentifier, state: "running",
                           health: health(e, l?.session.status, metrics.lun(e.id, a.lun)))
            } ?? []
            var negotiated: [[String]] = []
            var timeouts: [[String]] = []
            if let l {
                let p = l.session.parameters
                negotiated = [
                    ["HeaderDigest", p.headerDigest.description], ["DataDigest", p.dataDigest.description],
                    ["MaxRecvDataSegmentLength", "\(p.initiatorMaxRecvDataSegmentLength)"],
                    ["MaxXmitDataSegmentLength", "\(p.targetMaxRecvDataSegmentLength)"],
                    ["FirstBurstLength", "\(p.firstBurstLength)"], ["MaxBurstLength", "\(p.maxBurstLength)"],
                    ["ImmediateData", p.immediateData ? "Yes" : "No"], ["InitialR2T", p.initialR2T ? "Yes" : "No"],
                    ["MaxOutstandingR2T", "\(p.maxOutstandingR2T)"], ["ErrorRecoveryLevel", "\(p.errorRecoveryLevel)"],
                    ["DefaultTime2Wait", "\(p.defaultTime2Wait)"], ["DefaultTime2Retain", "\(p.defaultTime2Retain)"],
                ]
                let s = l.settings
                timeouts = [
                    ["Recovery Timeout (replacement_timeout)", "\(s.replacementTimeout.components.seconds)"],
                    ["Login Timeout", "\(s.loginTimeout.components.seconds)"],
                    ["Logout Timeout", "\(s.logoutTimeout.components.seconds)"],
                    ["NOP-out Interval", "\(s.noopOutInterval.components.seconds)"],
                    ["NOP-out Timeout", "\(s.noopOutTimeout.components.seconds)"],
                    ["Request Timeout (nbd)", settings.requestTimeout.map { "\($0.components.seconds)" } ?? "kernel default"],
                    ["Dead Connection Timeout (nbd)", "\(s.replacementTimeout.components.seconds)"],
                ]
            }
            // The client recovers a dropped connection by itself: show that as iscsiadm does (FAILED).
            var state = e.state.rawValue
            var lastError = e.lastError
            if e.state == .loggedIn, let status = l?.session.status {
                switch status.state {
                case .connected: break
                case .recovering(let expired):
                    state = SessionTable.State.recovering.rawValue
                    lastError = expired ? "reconnecting; replacement_timeout expired, I/O fails until the target is back" : "reconnecting"
                case .closed: state = "CLOSED"
                }
                timeouts.append(["Recoveries", "\(status.recoveries)"])
            }
            return ControlSession(
                id: e.id, target: e.key.target, portal: e.key.portal.description,
                tpgt: l?.plan.node.tpgt ?? 1, state: state, initiatorName: l?.session.configuration.initiatorName,
                tsih: l?.session.tsih, isid: l.map { String(format: "%012llx", $0.session.configuration.isid) },
                luns: luns, negotiated: negotiated, timeouts: timeouts, lastError: lastError,
                auth: l.map { Self.authRows($0.session.configuration) } ?? [])
        }
    }

    /// A LUN's health: the session's state (the client recovering underneath, or the daemon logging in again
    /// after the session ended), and the last minute's latencies.
    private func health(_ e: SessionTable.Entry, _ status: SessionStatus?, _ lun: LUNMetrics?) -> ControlHealth {
        var h = ControlHealth(state: "LOGGED_IN", requests: 0)
        if e.state == .recovering {
            h.state = "RECOVERING"
            h.attempts = e.attempts
            h.lastError = e.lastError
        } else if let status {
            h.state = SessionMetrics.stateName(status.state)
            h.since = status.recoveringSince
            h.attempts = status.recoveryAttempts
            h.lastError = status.lastError
        }
        if let recent = lun?.requests.published.recent {
            h.requests = recent.count
            h.p50 = recent.p50
            h.p99 = recent.p99
        }
        return h
    }

    /// `-m session -s`: the sessions with iscsiadm's counters and ours.
    func statsReports(sid: Int?) async -> [ControlSession] {
        var out: [ControlSession] = []
        for var report in sessionReports() where sid == nil || report.id == sid {
            if let l = live[report.id], let s = try? await l.session.statistics().get() {
                var scsi: [SCSICommandStatistics.Snapshot] = []
                for a in l.attachments {
                    if let s = try? await a.scsi.commandStatistics.snapshot().get() { scsi.append(s) }
                }
                report.stats = Self.statsRows(s, scsi: scsi)
            }
            out.append(report)
        }
        return out
    }

    static func statsRows(_ s: ISCSISessionStatistics, scsi: [SCSICommandStatistics.Snapshot]) -> ControlStats {
        func retries(_ cause: SCSICommandStatistics.RetryCause) -> String {
            "\(scsi.reduce(UInt64(0)) { $0 + ($1.retries[cause] ?? 0) })"
        }
        var extended: [[String]] = [
            ["recoveries", "\(s.recoveries)"], ["relogin_attempts", "\(s.reloginAttempts)"],
            ["last_recovery_time", s.lastRecovery.map { SessionPrinter.timestamp($0.lostAt) } ?? "-"],
            ["last_recovery_reason", s.lastRecovery?.reason ?? "-"],
            ["last_recovery_seconds", s.lastRecovery.map { $0.durationSeconds.map { String(format: "%.3f", $0) } ?? "under way" } ?? "-"],
        ]
        for cause in SCSICommandStatistics.RetryCause.allCases { extended.append(["retries_\(cause.rawValue)", retries(cause)]) }
        extended.append(["transport_failures", "\(scsi.reduce(UInt64(0)) { $0 + $1.transportFailures })"])
        if let w = s.window {
            extended += [
                ["queue_depth", "\(w.queueDepth)"], ["commands_outstanding", "\(w.outstanding)"],
                ["commands_queued", "\(w.queued)"], ["cmdsn", "\(w.cmdSN)"], ["exp_cmdsn", "\(w.expCmdSN)"],
                ["max_cmdsn", "\(w.maxCmdSN)"], ["cmdsn_window", "\(w.window)"],
            ]
        }
        return ControlStats(snmp: s.pdus.iscsiadmRows.map { [$0.0, "\($0.1)"] }, extended: extended)
    }

    /// The status line systemd shows (`systemctl status iscsi-nbd`): every LUN's health, every 10 s.
    func publishStatus() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(10))
            guard !Task.isCancelled, !shuttingDown else { return }
            SystemdNotify.send("STATUS=\(Self.statusLine(sessionReports()))")
        }
    }

    /// "nbd0 LOGGED_IN p50 85 µs p99 1.20 ms; nbd1 RECOVERING since ... attempt 3" (at most 1000 bytes).
    static func statusLine(_ sessions: [ControlSession]) -> String {
        let parts = sessions.flatMap { s in
            s.luns.map { l -> String in
                let name = l.device.map { String($0.dropFirst("/dev/".count)) } ?? "sid \(s.id) lun \(l.lun)"
                guard let h = l.health else { return "\(name) \(s.state)" }
                var part = "\(name) \(h.state)"
                if let since = h.since { part += " since \(SessionPrinter.timestamp(since))" }
                if h.state != "LOGGED_IN", let attempts = h.attempts { part += " attempt \(attempts)" }
                if let p50 = h.p50, let p99 = h.p99, h.requests > 0 {
                    part += " p50 \(SessionPrinter.duration(p50)) p99 \(SessionPrinter.duration(p99))"
                }
                return part
            }
        }
        let line = parts.isEmpty ? "\(sessions.count) sessions, no devices" : parts.joined(separator: "; ")
        return line.count > 1000 ? String(line.prefix(997)) + "..." : line
    }
}
