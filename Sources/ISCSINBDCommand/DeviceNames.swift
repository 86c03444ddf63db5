import ISCSIBlockBackend
import SCSI

/// Stable device names in open-iscsi's form, so fstab lines and mount units carry over. udev makes them
/// (dist/udev/60-iscsi-nbd.rules asks `iscsi-nbd udev-id` for the properties), because systemd only knows
/// the links udev makes: a mount unit waits on the `.device` unit of its `What=`.
enum DeviceNames {
    static let byPathDirectory = "/dev/disk/by-path"
    static let byIDDirectory = "/dev/disk/by-id"

    /// udev's ID_PATH for an iSCSI disk, as systemd's path_id builtin writes it for open-iscsi's sessions
    /// (src/udev/udev-builtin-path_id.c, `handle_scsi_iscsi`): "ip-%s:%s-iscsi-%s-%s" of the connection's
    /// persistent_address and persistent_port, the target name and the LUN. iscsid passes the record's
    /// address as persistent_address, so an IPv6 host appears as written, without brackets.
    static func byPathName(host: String, port: Int, target: String, lun: UInt16) -> String {
        "ip-\(host):\(port)-iscsi-\(target)-\(lunComponent(LogicalUnitNumber(lun)))"
    }

    /// path_id's `format_lun_number` of the kernel's LUN integer (`scsilun_to_int`: the 8-byte LUN field's
    /// two-byte levels, byte-swapped): "lun-N" below 256, else "lun-0x%04x%04x00000000".
    static func lunComponent(_ lun: LogicalUnitNumber) -> String {
        let level1 = (lun.encoded >> 48) & 0xFFFF, level2 = (lun.encoded >> 32) & 0xFFFF
        let kernel = level1 | (level2 << 16)
        if kernel < 256 { return "lun-\(kernel)" }
        return "lun-0x" + hex(level1, width: 4) + hex(level2, width: 4) + "00000000"
    }

    /// The LUN a by-path name of `target` at `portal` names (the inverse of `byPathName`), or nil when the
    /// name is another node's.
    static func lun(inPath path: String, host: String, port: Int, target: String) -> UInt16? {
        let prefix = "ip-\(host):\(port)-iscsi-\(target)-"
        guard path.hasPrefix(prefix) else { return nil }
        let component = path.dropFirst(prefix.count)
        if component.hasPrefix("lun-0x"), component.count == 22, let level1 = UInt16(component.dropFirst(6).prefix(4), radix: 16) {
            // Flat space addressing (01b): the LUN is the low 14 bits of the first level.
            let lun = level1 >> 14 == 1 ? level1 & 0x3FFF : level1
            return lunComponent(LogicalUnitNumber(lun)) == String(component) ? lun : nil
        }
        guard component.hasPrefix("lun-"), let lun = UInt16(component.dropFirst(4)), lun < 256 else { return nil }
        return lun
    }

    /// path_id's ID_PATH_TAG: only [A-Za-z0-9-] kept, other runs become one "_", none leading or trailing.
    static func pathTag(_ path: String) -> String {
        var tag = ""
        for c in path.unicodeScalars {
            if ("0"..."9").contains(c) || ("a"..."z").contains(c) || ("A"..."Z").contains(c) || c == "-" {
                tag.unicodeScalars.append(c)
            } else if !tag.isEmpty, !tag.hasSuffix("_") {
                tag += "_"
            }
        }
        while tag.hasSuffix("_") { tag.removeLast() }
        return tag
    }

    /// udev's ID_SERIAL for a SCSI disk as scsi_id computes it (src/udev/scsi_id/scsi_serial.c): the first LU
    /// designator of VPD 83h in its search order (NAA IEEE registered extended, NAA IEEE registered, any
    /// NAA, EUI-64, T10 vendor ID, vendor specific; binary before ASCII code set), written as the designator
    /// type's hex digit, then (vendor specific only) vendor and product, then the value: hex for binary,
    /// the bytes for ASCII. Without one: "S" + vendor + product + the VPD 80h serial. White space runs become
    /// "_" and bytes outside udev's safe set "_" (`udev_replace_whitespace`, `udev_replace_chars`).
    /// nil when the LUN has neither.
    static func scsiSerial(_ identity: LUNIdentity) -> String? {
        let lu = identity.designators.filter { $0.association == .logicalUnit }
        typealias Search = (type: Designator.DesignatorType, naa: UInt8?, codeSet: UInt8)
        var order: [Search] = []
        for naa: UInt8? in [6, 5, nil] { order += [(.naa, naa, 1), (.naa, naa, 2)] }
        for type in [Designator.DesignatorType.eui64, .t10VendorID, .vendorSpecific] { order += [(type, nil, 1), (type, nil, 2)] }
        let vendorModel = pad(identity.vendor, 8) + pad(identity.product, 16)
        for search in order {
            guard let d = lu.first(where: { d in
                d.type == search.type && d.codeSet == search.codeSet
                    && (search.naa == nil || (d.value.first ?? 0) >> 4 == search.naa!)
            }) else { continue }
            var serial = String(d.type.rawValue, radix: 16)
            if d.type == .vendorSpecific { serial += vendorModel }
            serial += d.codeSet == 2 ? String(decoding: d.value, as: UTF8.self) : d.value.map { hex(UInt64($0), width: 2) }.joined()
            return udevSafe(serial)
        }
        guard let number = identity.serialNumber, !number.isEmpty else { return nil }
        return udevSafe("S" + vendorModel + number)
    }

    /// `udev_replace_whitespace` then `udev_replace_chars(s, NULL)`: leading and trailing white space
    /// dropped, inner runs one "_", and anything but ASCII letters, digits and "#+-.:=@_" (or valid UTF-8
    /// beyond ASCII) "_".
    static func udevSafe(_ text: String) -> String {
        let words = text.split(whereSeparator: { $0.isWhitespace })
        return String(words.joined(separator: "_").unicodeScalars.map { c -> Character in
            if c.value > 0x7F { return Character(c) }
            if c.properties.isAlphabetic || ("0"..."9").contains(c) || "#+-.:=@_".unicodeScalars.contains(c) { return Character(c) }
            return "_"
        })
    }

    private static func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? String(s.prefix(width)) : s + String(repeating: " ", count: width - s.count)
    }

    private static func hex(_ value: UInt64, width: Int) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
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

/// Who a kernel device is, in one printable line the kernel keeps for us: the netlink backend identifier
/// (NBD_ATTR_BACKEND_IDENTIFIER, shown in /sys/block/nbdN/backend) is "iscsi-nbd PATH SERIAL", PATH being
/// udev's ID_PATH (open-iscsi's by-path name) and SERIAL scsi_id's ID_SERIAL ("-" when the LUN has none).
/// The kernel refuses NBD_CMD_RECONFIGURE with another identifier, so a device is never handed to a
/// different LU, and `iscsi-nbd udev-id` turns it into udev properties for the stable links.
struct DeviceIdentity: Hashable, Sendable {
    static let tag = "iscsi-nbd"

    /// udev's ID_PATH: "ip-HOST:PORT-iscsi-IQN-lun-N".
    var path: String
    /// udev's ID_SERIAL as scsi_id computes it; nil when the LUN has no VPD 83h/80h identity.
    var serial: String?

    init(path: String, serial: String?) {
        self.path = Self.token(path)
        self.serial = serial.map(Self.token).flatMap { $0 == "-" || $0.isEmpty ? nil : $0 }
    }

    init(host: String, port: Int, target: String, lun: UInt16, identity: LUNIdentity?) {
        self.init(path: DeviceNames.byPathName(host: host, port: port, target: target, lun: lun),
                  serial: identity.flatMap(DeviceNames.scsiSerial))
    }

    var backendIdentifier: String { "\(Self.tag) \(path) \(serial ?? "-")" }

    /// nil for anything that is not one of ours (another NBD client's backend, or none).
    init?(backendIdentifier text: String) {
        let fields = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard fields.count == 3, fields[0] == Self.tag, fields[1].hasPrefix("ip-") else { return nil }
        self.init(path: String(fields[1]), serial: String(fields[2]))
    }

    /// What `iscsi-nbd udev-id` prints for udev's IMPORT{program}: the properties open-iscsi's disks get
    /// from path_id and scsi_id (so 60-persistent-storage.rules makes by-path and wwn- links, and our rule
    /// the scsi- link), plus ID_ISCSI_NBD=1.
    var udevProperties: [(String, String)] {
        var p: [(String, String)] = [("ID_ISCSI_NBD", "1"), ("ID_PATH", path), ("ID_PATH_TAG", DeviceNames.pathTag(path))]
        guard let serial else { return p }
        p += [("ID_BUS", "scsi"), ("ID_SERIAL", serial)]
        if let type = serial.first, type != "0", type != "S" { p.append(("ID_SERIAL_SHORT", String(serial.dropFirst()))) }
        // scsi_id: an NAA designator is also the WWN, the first 16 hex digits plus any vendor extension.
        if serial.first == "3", serial.count >= 17 {
            let naa = serial.dropFirst()
            let wwn = "0x" + naa.prefix(16), ext = naa.dropFirst(16)
            p.append(("ID_WWN", wwn))
            if !ext.isEmpty { p.append(("ID_WWN_VENDOR_EXTENSION", "0x" + ext.prefix(16))) }
            p.append(("ID_WWN_WITH_EXTENSION", wwn + ext.prefix(16)))
        }
        return p
    }

    /// One printable token: white space and control bytes become "_" (sysfs shows it as one line, and
    /// udev properties are one line each).
    private static func token(_ s: String) -> String {
        String(s.unicodeScalars.map { $0.value > 0x20 && $0.value != 0x7F ? Character($0) : "_" }.prefix(400))
    }
}
