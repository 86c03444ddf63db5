import Foundation
import ISCSIBlockBackend
import SCSI
import Testing

@testable import ISCSINBDCommand

@Suite struct DeviceNamesTests {
    /// systemd's path_id for an open-iscsi disk: "ip-%s:%s-iscsi-%s-%s" of persistent_address (the
    /// record's address, IPv6 without brackets), persistent_port, target name and format_lun_number.
    @Test func byPathMatchesOpenISCSI() {
        #expect(DeviceNames.byPathName(host: "192.168.1.10", port: 3260, target: "iqn.2004-04.com.example:disk", lun: 1)
                == "ip-192.168.1.10:3260-iscsi-iqn.2004-04.com.example:disk-lun-1")
        #expect(DeviceNames.byPathName(host: "fe80::1", port: 3260, target: "iqn.x:y", lun: 0)
                == "ip-fe80::1:3260-iscsi-iqn.x:y-lun-0")
        #expect(DeviceNames.byPathName(host: "h", port: 3260, target: "iqn.x:y", lun: 255).hasSuffix("-lun-255"))
        // LUN 300 is flat-space addressed (0x412C in the first level); the kernel's scsilun_to_int gives
        // 0x412C, and path_id writes "lun-0x%04lx%04lx00000000".
        #expect(DeviceNames.byPathName(host: "h", port: 3260, target: "iqn.x:y", lun: 300).hasSuffix("-lun-0x412c000000000000"))
    }

    @Test func byPathNamesGiveTheirLUNBack() {
        for lun: UInt16 in [0, 1, 255, 256, 300, 16383] {
            let path = DeviceNames.byPathName(host: "10.0.0.1", port: 3260, target: "iqn.x:y-lun-7", lun: lun)
            #expect(DeviceNames.lun(inPath: path, host: "10.0.0.1", port: 3260, target: "iqn.x:y-lun-7") == lun, "\(path)")
        }
        let path = DeviceNames.byPathName(host: "10.0.0.1", port: 3260, target: "iqn.x:y", lun: 1)
        #expect(DeviceNames.lun(inPath: path, host: "10.0.0.2", port: 3260, target: "iqn.x:y") == nil)
        #expect(DeviceNames.lun(inPath: path, host: "10.0.0.1", port: 3260, target: "iqn.x:") == nil)
        #expect(DeviceNames.lun(inPath: path + "x", host: "10.0.0.1", port: 3260, target: "iqn.x:y") == nil)
        #expect(DeviceNames.lun(inPath: "ip-10.0.0.1:3260-iscsi-iqn.x:y-lun-999", host: "10.0.0.1", port: 3260, target: "iqn.x:y") == nil)
    }

    @Test func pathTagIsPathIDs() {
        #expect(DeviceNames.pathTag("ip-127.0.0.1:3260-iscsi-iqn.2026-11.test:disk-lun-1")
                == "ip-127_0_0_1_3260-iscsi-iqn_2026-11_test_disk-lun-1")
        #expect(DeviceNames.pathTag("..a::b..") == "a_b")
    }

    static func identity(_ designators: [Designator], serial: String? = nil) -> LUNIdentity {
        LUNIdentity(designator: designators.first, designators: designators, serialNumber: serial,
                    vendor: "LIO-ORG", product: "disk one", blockCount: 8, blockLength: 512)
    }

    static let naa6 = Designator(type: .naa, value: [0x60, 0x01, 0x40, 0x5a, 0xbc, 0xde, 0xf0, 0x12,
                                                      0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01])
    static let naa5 = Designator(type: .naa, value: [0x50, 0x01, 0x40, 0x50, 0x00, 0x00, 0x00, 0x07])
    static let t10 = Designator(type: .t10VendorID, codeSet: 2, value: Array("LIO-ORG  disk one  abc".utf8))

    /// scsi_id's choice and format (src/udev/scsi_id/scsi_serial.c): NAA 6, then 5, then any NAA, EUI-64,
    /// T10 vendor ID, vendor specific; type digit + hex (binary) or the bytes (ASCII, white space runs "_").
    @Test func scsiSerialIsScsiIDs() {
        #expect(DeviceNames.scsiSerial(Self.identity([Self.t10, Self.naa5, Self.naa6])) == "36001405abcdef0123456789abcdef001")
        #expect(DeviceNames.scsiSerial(Self.identity([Self.t10, Self.naa5])) == "35001405000000007")
        #expect(DeviceNames.scsiSerial(Self.identity([Self.t10])) == "1LIO-ORG_disk_one_abc")
        let eui = Designator(type: .eui64, value: [0, 1, 2, 3, 4, 5, 6, 7])
        #expect(DeviceNames.scsiSerial(Self.identity([Self.t10, eui])) == "20001020304050607")
        // Vendor specific: vendor and product (padded to 8 and 16) go first.
        let vs = Designator(type: .vendorSpecific, value: [0xAB])
        #expect(DeviceNames.scsiSerial(Self.identity([vs])) == "0LIO-ORG_disk_one_ab")
        // Target-port designators, UTF-8 code set and SCSI name strings are not used: VPD 80h then.
        let port = Designator(type: .naa, association: .targetPort, value: Self.naa6.value)
        let utf8 = Designator(type: .naa, codeSet: 3, value: Array("6abc".utf8))
        let name = Designator(type: .scsiNameString, codeSet: 3, value: Array("iqn.x:y,t,0x1".utf8))
        #expect(DeviceNames.scsiSerial(Self.identity([port, utf8, name], serial: "beaf11")) == "SLIO-ORG_disk_one_beaf11")
        #expect(DeviceNames.scsiSerial(Self.identity([port])) == nil)
        #expect(DeviceNames.udevSafe("  a b\tc/d\u{7}é ") == "a_b_c_d_é")
    }

    @Test func identityRoundTripsThroughTheBackendIdentifier() throws {
        let id = DeviceIdentity(host: "127.0.0.1", port: 3260, target: "iqn.2026-11.test:disk", lun: 1,
                                identity: Self.identity([Self.naa6]))
        #expect(id.backendIdentifier == "iscsi-nbd ip-127.0.0.1:3260-iscsi-iqn.2026-11.test:disk-lun-1 36001405abcdef0123456789abcdef001")
        #expect(DeviceIdentity(backendIdentifier: id.backendIdentifier + "\n") == id)
        let bare = DeviceIdentity(host: "fe80::1", port: 3260, target: "iqn.x:y", lun: 0, identity: nil)
        #expect(bare.backendIdentifier == "iscsi-nbd ip-fe80::1:3260-iscsi-iqn.x:y-lun-0 -")
        #expect(DeviceIdentity(backendIdentifier: bare.backendIdentifier) == bare)
        // Other NBD clients' backends, the old format and garbage name nothing.
        for other in ["", "nbd-client", "iscsi-nbd:iqn.x:y:lun-1:naa.60", "iscsi-nbd ip-a b c d", "iscsi-nbd x 3"] {
            #expect(DeviceIdentity(backendIdentifier: other) == nil, "\(other)")
        }
        // A target name with white space cannot break the one-line format.
        let odd = DeviceIdentity(host: "h", port: 1, target: "iqn.x:a b\n", lun: 2, identity: nil)
        #expect(!odd.backendIdentifier.contains("\n") && DeviceIdentity(backendIdentifier: odd.backendIdentifier) == odd)
    }

    @Test func udevPropertiesAreScsiIDsAndPathIDs() {
        let id = DeviceIdentity(path: "ip-127.0.0.1:3260-iscsi-iqn.x:y-lun-1", serial: "36001405abcdef0123456789abcdef001")
        let p = Dictionary(id.udevProperties, uniquingKeysWith: { a, _ in a })
        #expect(p["ID_ISCSI_NBD"] == "1" && p["ID_PATH"] == "ip-127.0.0.1:3260-iscsi-iqn.x:y-lun-1")
        #expect(p["ID_PATH_TAG"] == "ip-127_0_0_1_3260-iscsi-iqn_x_y-lun-1")
        #expect(p["ID_BUS"] == "scsi" && p["ID_SERIAL"] == "36001405abcdef0123456789abcdef001")
        #expect(p["ID_SERIAL_SHORT"] == "6001405abcdef0123456789abcdef001")
        #expect(p["ID_WWN"] == "0x6001405abcdef012" && p["ID_WWN_VENDOR_EXTENSION"] == "0x3456789abcdef001")
        #expect(p["ID_WWN_WITH_EXTENSION"] == "0x6001405abcdef0123456789abcdef001")
        let naa5 = Dictionary(DeviceIdentity(path: "ip-x", serial: "35001405000000007").udevProperties, uniquingKeysWith: { a, _ in a })
        #expect(naa5["ID_WWN"] == "0x5001405000000007" && naa5["ID_WWN_WITH_EXTENSION"] == "0x5001405000000007")
        #expect(naa5["ID_WWN_VENDOR_EXTENSION"] == nil)
        let t10 = Dictionary(DeviceIdentity(path: "ip-x", serial: "1LIO-ORG_x").udevProperties, uniquingKeysWith: { a, _ in a })
        #expect(t10["ID_WWN"] == nil && t10["ID_SERIAL_SHORT"] == "LIO-ORG_x")
        #expect(DeviceIdentity(path: "ip-x", serial: nil).udevProperties.map(\.0) == ["ID_ISCSI_NBD", "ID_PATH", "ID_PATH_TAG"])
    }

    @Test func systemdEscape() {
        // Values as `systemd-escape --path` prints them.
        #expect(DeviceNames.systemdEscapePath("/mnt/data") == "mnt-data")
        #expect(DeviceNames.systemdEscapePath("/") == "-")
        #expect(DeviceNames.systemdEscapePath("/srv/my disk/") == "srv-my\\x20disk")
        #expect(DeviceNames.systemdEscapePath("/dev/disk/by-path/ip-10.0.0.1:3260-iscsi-iqn.x:y-lun-1")
                == "dev-disk-by\\x2dpath-ip\\x2d10.0.0.1:3260\\x2discsi\\x2diqn.x:y\\x2dlun\\x2d1")
        #expect(DeviceNames.systemdEscapePath("/.hidden") == "\\x2ehidden")
    }
}

/// The registry udev reads: the kernel's backend attribute first, else the ioctl device's record, which
/// counts only while its process runs the device.
@Suite struct DeviceRegistryTests {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("registry-\(UUID().uuidString.prefix(8))").path
    var registry: DeviceRegistry { DeviceRegistry(directory: root + "/run", sysBlock: root + "/sys", proc: root + "/proc") }
    let id = DeviceIdentity(path: "ip-127.0.0.1:3260-iscsi-iqn.x:y-lun-1", serial: "35001405000000007")

    func write(_ text: String, _ path: String) throws {
        try FileManager.default.createDirectory(atPath: (root + path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: root + path, atomically: true, encoding: .utf8)
    }

    @Test func netlinkDevicesAreReadFromTheBackendAttribute() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try write(id.backendIdentifier + "\n", "/sys/nbd3/backend")
        #expect(registry.identity(of: "nbd3") == id)
        try write("something-else\n", "/sys/nbd4/backend")
        #expect(registry.identity(of: "nbd4") == nil)
        #expect(registry.identity(of: "nbd9") == nil)
        for bad in ["../nbd3", "nbd3/..", "sda", "nbd", "nbd-1", "nbd3 "] { #expect(registry.identity(of: bad) == nil, "\(bad)") }
    }

    @Test func ioctlDevicesCountWhileTheirProcessRunsThem() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try registry.register(index: 2, identity: id, pid: 4242)
        #expect(registry.identity(of: "nbd2") == nil, "no pid attribute: not running")
        try write("4250\n", "/sys/nbd2/pid")
        #expect(registry.identity(of: "nbd2") == nil, "thread 4250 is not one of process 4242's")
        try FileManager.default.createDirectory(atPath: root + "/proc/4242/task/4250", withIntermediateDirectories: true)
        #expect(registry.identity(of: "nbd2") == id)
        registry.unregister(index: 2, pid: 1)
        #expect(registry.identity(of: "nbd2") == id, "another process's record is left alone")
        registry.unregister(index: 2, pid: 4242)
        #expect(registry.identity(of: "nbd2") == nil)
    }

    /// The command udev runs: properties on stdout for ours, nothing for others, exit 0 either way.
    @Test func udevIDCommandPrintsProperties() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try write(id.backendIdentifier + "\n", "/sys/nbd0/backend")
        let args = ["--sys-block", root + "/sys", "--runtime-dir", root + "/run", "--proc", root + "/proc"]
        var ours = try UdevIDCommand.parse(["/dev/nbd0"] + args)
        try ours.run()
        var other = try UdevIDCommand.parse(["nbd1"] + args)
        try other.run()
    }
}
