import Foundation
import ISCSIProtocol

/// Our initiator name when none is given: `InitiatorName=` in `<config dir>/initiatorname.iscsi`
/// (open-iscsi's file), else a stable name derived from /etc/machine-id (nothing is written; `iscsi-nbd`
/// creates the file itself only in the admin modes).
enum InitiatorIdentity {
    static func defaultName(configDir: String = ConfigLocation.directory()) throws -> String {
        let path = configDir + "/initiatorname.iscsi"
        if let text = try? String(contentsOfFile: path, encoding: .utf8) {
            for line in text.split(separator: "\n") {
                let t = line.trimmingCharacters(in: .whitespaces)
                if t.hasPrefix("InitiatorName=") {
                    let name = String(t.dropFirst("InitiatorName=".count)).trimmingCharacters(in: .whitespaces)
                    if !name.isEmpty { return name }
                }
            }
        }
        let machineID = (try? String(contentsOfFile: "/etc/machine-id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        let suffix = machineID.isEmpty ? String(UInt64.random(in: 0...UInt64.max), radix: 16) : String(machineID.prefix(12))
        return "iqn.2026-11.org.iscsi-nbd:\(suffix)"
    }
}

/// Where configuration lives: `--config-dir`, else `ISCSI_NBD_CONFIG_DIR`, else /etc/iscsi.
enum ConfigLocation {
    static let variable = "ISCSI_NBD_CONFIG_DIR"

    static func directory(_ explicit: String? = nil,
                          environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        explicit ?? environment[variable].flatMap { $0.isEmpty ? nil : $0 } ?? "/etc/iscsi"
    }
}

extension ResolvedCHAP {
    var credentials: CHAPCredentials {
        CHAPCredentials(
            username: username, secret: secret,
            mutual: targetUsername.flatMap { user in targetSecret.map { CHAPCredentials.Identity(username: user, secret: $0) } })
    }
}
