import Testing

@testable import ISCSINBDCommand

@Suite struct DeviceNamesTests {
    @Test func byPathMatchesOpenISCSI() {
        #expect(DeviceNames.byPathName(host: "192.168.1.10", port: 3260, target: "iqn.2004-04.com.example:disk", lun: 1)
                == "ip-192.168.1.10:3260-iscsi-iqn.2004-04.com.example:disk-lun-1")
        #expect(DeviceNames.byPathName(host: "fe80::1", port: 3260, target: "iqn.x:y", lun: 0)
                == "ip-[fe80::1]:3260-iscsi-iqn.x:y-lun-0")
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
