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
}
