/// Stable device names in open-iscsi's by-path form, so fstab lines and mount units carry over:
/// `/dev/disk/by-path/ip-HOST:PORT-iscsi-IQN-lun-N` (IPv6 hosts in brackets).
enum DeviceNames {
    static let byPathDirectory = "/dev/disk/by-path"

    static func byPathName(host: String, port: Int, target: String, lun: UInt16) -> String {
        let h = host.contains(":") ? "[\(host)]" : host
        return "ip-\(h):\(port)-iscsi-\(target)-lun-\(lun)"
    }

    /// The systemd unit name of a mount point or device path (systemd-escape --path): "/" → "-",
    /// other unsafe bytes as \xNN.
    static func systemdEscapePath(_ path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.hasPrefix("/") { trimmed = trimmed.dropFirst() }
        while trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        if trimmed.isEmpty { return "-" }
        var out = ""
        for (i, byte) in trimmed.utf8.enumerated() {
            let alnum = (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
            if byte == UInt8(ascii: "/") {
                out += "-"
            } else if alnum || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ":")
                        || (byte == UInt8(ascii: ".") && i > 0) {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                out += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
            }
        }
        return out
    }
}
