import Foundation
import ISCSIConfig
import ISCSIProtocol

/// Our initiator name when none is given: `InitiatorName=` in `<config dir>/initiatorname.iscsi`
/// (open-iscsi's file), else a stable name derived from /etc/machine-id (nothing is written; `iscsi-nbd`
/// creates the file itself only in the admin modes).
enum InitiatorIdentity {
    static func defaultName(configDir: String = ConfigDirectory.resolve()) throws -> String {
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

extension ResolvedCHAP {
    var credentials: ISCSIProtocol.CHAPCredentials {
        ISCSIProtocol.CHAPCredentials(
            username: username, secret: secret,
            mutual: targetUsername.flatMap { user in targetSecret.map { ISCSIProtocol.CHAPCredentials.Identity(username: user, secret: $0) } })
    }
}
