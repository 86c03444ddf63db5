import Foundation
import ISCSIConfig

/// `-m session [-P N]` output in iscsiadm's layout, plus what open-iscsi does not show (its issue #393):
/// the negotiated values and timeouts in effect, and the /dev/nbdN device with its by-path link.
enum SessionPrinter {
    static func render(_ sessions: [ControlSession], level: Int) -> String {
        var out = ""
        if level == 0 {
            for s in sessions {
                let portal = portalWithoutBrackets(s.portal)
                out += "tcp: [\(s.id)] \(portal),\(s.tpgt) \(s.target) (non-flash)"
                if s.state != SessionTable.State.loggedIn.rawValue { out += " [\(s.state)]" }
                out += "\n"
            }
            return out
        }
        for s in sessions {
            out += "Target: \(s.target) (non-flash)\n"
            out += "\tCurrent Portal: \(s.portal),\(s.tpgt)\n"
            out += "\tPersistent Portal: \(s.portal),\(s.tpgt)\n"
            out += "\t\t**********\n\t\tInterface:\n\t\t**********\n"
            out += "\t\tIface Name: default\n\t\tIface Transport: tcp\n"
            if let name = s.initiatorName { out += "\t\tIface Initiatorname: \(name)\n" }
            out += "\t\tSID: \(s.id)\n"
            if let isid = s.isid { out += "\t\tISID: \(isid)\n" }
            if let tsih = s.tsih { out += "\t\tTSIH: \(tsih)\n" }
            let loggedIn = s.state == SessionTable.State.loggedIn.rawValue
            out += "\t\tiSCSI Connection State: \(loggedIn ? "LOGGED IN" : "FREE")\n"
            out += "\t\tiSCSI Session State: \(s.state)\n"
            if let e = s.lastError { out += "\t\tLast Error: \(e)\n" }
            for l in s.luns { if let h = l.health { out += "\t\t\(healthLine(lun: l, h))\n" } }
            if level >= 2 {
                if !s.timeouts.isEmpty {
                    out += "\t\t*********\n\t\tTimeouts:\n\t\t*********\n"
                    for row in s.timeouts where row.count == 2 { out += "\t\t\(row[0]): \(row[1])\n" }
                }
                if let auth = s.auth, !auth.isEmpty {
                    out += "\t\t*****\n\t\tCHAP:\n\t\t*****\n"
                    for row in auth where row.count == 2 { out += "\t\t\(row[0]): \(row[1])\n" }
                }
                if !s.negotiated.isEmpty {
                    out += "\t\t************************\n\t\tNegotiated iSCSI params:\n\t\t************************\n"
                    for row in s.negotiated where row.count == 2 { out += "\t\t\(row[0]): \(row[1])\n" }
                }
            }
            if level >= 3 {
                out += "\t\t************************\n\t\tAttached NBD devices:\n\t\t************************\n"
                for l in s.luns {
                    out += "\t\tLun: \(l.lun)\n"
                    out += "\t\t\tAttached nbd disk \(l.device.map { String($0.dropFirst("/dev/".count)) } ?? "-")\t\tState: \(l.state)\n"
                    if let p = l.byPath { out += "\t\t\tBy-path: \(p)\n" }
                    out += "\t\t\tSize: \(l.size) bytes, block size \(l.blockSize)\n"
                    if let b = l.backend { out += "\t\t\tBackend: \(b)\n" }
                }
            }
        }
        return out
    }

    /// Lines printed after a successful login through the daemon: one per attached LUN.
    static func deviceLines(_ session: ControlSession) -> [String] {
        session.luns.map { l in
            "\tLUN \(l.lun): \(l.device ?? "-")" + (l.byPath.map { " (\($0))" } ?? "")
        }
    }

    private static func portalWithoutBrackets(_ p: String) -> String { p }

    /// `-P 1`: "LUN 1 (/dev/nbd0): LOGGED_IN, last minute: 5230 requests, p50 85 µs, p99 1.20 ms", or
    /// "LUN 1 (/dev/nbd0): RECOVERING since 2026-12-06 19:40:02 UTC, attempt 3, last error: ...".
    static func healthLine(lun l: ControlLUN, _ h: ControlHealth) -> String {
        var line = "LUN \(l.lun) (\(l.device ?? "-")): \(h.state)"
        if let since = h.since { line += " since \(timestamp(since))" }
        if let attempts = h.attempts, h.state != "LOGGED_IN" { line += ", attempt \(attempts)" }
        if let e = h.lastError, h.state != "LOGGED_IN" { line += ", last error: \(e)" }
        if h.requests > 0, let p50 = h.p50, let p99 = h.p99 {
            line += ", last minute: \(h.requests) requests, p50 \(duration(p50)), p99 \(duration(p99))"
        } else {
            line += ", last minute: no requests"
        }
        return line
    }

    /// `-m session -s`, in iscsiadm's layout: a header line per session, "iSCSI SNMP:" with its counters in
    /// its order, then ours under "iSCSI Extended:".
    static func renderStats(_ sessions: [ControlSession]) -> String {
        var out = ""
        for s in sessions {
            let portal = (try? Portal(parsing: s.portal))?.iscsiadmForm ?? s.portal
            out += "Stats for session [sid: \(s.id), target: \(s.target), portal: \(portal)]\n"
            guard let stats = s.stats else {
                out += "\tno counters: the session is not logged in (\(s.state))\n"
                continue
            }
            out += "iSCSI SNMP:\n"
            for row in stats.snmp where row.count == 2 { out += "\t\(row[0]): \(row[1])\n" }
            out += "iSCSI Extended:\n"
            for row in stats.extended where row.count == 2 { out += "\t\(row[0]): \(row[1])\n" }
        }
        return out
    }

    static func duration(_ nanoseconds: UInt64) -> String {
        let ns = Double(nanoseconds)
        if ns < 1_000_000 { return "\(Int((ns / 1000).rounded())) µs" }
        if ns < 1_000_000_000 { return String(format: "%.2f ms", ns / 1e6) }
        return String(format: "%.2f s", ns / 1e9)
    }

    static func timestamp(_ seconds: Double) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss 'UTC'"
        return formatter.string(from: Date(timeIntervalSince1970: seconds))
    }
}
