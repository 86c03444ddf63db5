import Foundation
import ISCSITestSupport
import Testing

@testable import ISCSINBDCommand

/// dist/: the unit files pass `systemd-analyze verify`, the mount example uses the by-path naming and a
/// unit name that matches its Where=, and the udev rule keeps nbd devices unwatched.
@Suite struct DistUnitsTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let systemdDir = root.appendingPathComponent("dist/systemd")

    /// Copies the units to a scratch dir (ExecStart pointed at an existing binary) and verifies them there.
    private func verify(_ units: [String: String]) throws -> (status: Int32, output: String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("units-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for (name, text) in units {
            try text.replacingOccurrences(of: "/usr/sbin/iscsi-nbd", with: "/bin/true")
                .write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: findExecutable("systemd-analyze")!)
        process.arguments = ["verify"] + units.keys.sorted().map { dir.appendingPathComponent($0).path }
        // Documentation=man:iscsi-nbd(8) is looked up with man(1): the pages as the package installs them.
        for page in try FileManager.default.contentsOfDirectory(atPath: Self.root.appendingPathComponent("dist/man").path) {
            guard let section = page.split(separator: ".").last, section.count == 1 else { continue }
            let target = dir.appendingPathComponent("man/man\(section)")
            try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
            try FileManager.default.copyItem(at: Self.root.appendingPathComponent("dist/man/\(page)"),
                                            to: target.appendingPathComponent(page))
        }
        var env = ProcessInfo.processInfo.environment
        env["MANPATH"] = dir.appendingPathComponent("man").path
        env["SYSTEMD_UNIT_PATH"] = dir.path + ":"
        env["SYSTEMD_LOG_COLOR"] = "0"
        process.environment = env
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    private func shipped() throws -> [String: String] {
        var units: [String: String] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: Self.systemdDir.path) {
            units[name] = try String(contentsOf: Self.systemdDir.appendingPathComponent(name), encoding: .utf8)
        }
        return units
    }

    @Test func shippedUnitsVerify() throws {
        guard peersAvailable("systemd-analyze") else { return }
        let units = try shipped()
        #expect(Set(units.keys).isSuperset(of: ["iscsi-nbd.service", "iscsi-nbd.socket", "srv-data.mount"]))
        let result = try verify(units)
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.isEmpty, "\(result.output)")
    }

    @Test func verifyCatchesBrokenUnits() throws {
        guard peersAvailable("systemd-analyze") else { return }
        var units = try shipped()
        units["iscsi-nbd.service"] = units["iscsi-nbd.service"]!.replacingOccurrences(of: "Type=notify", with: "Type=sometimes")
        units["srv-data.mount"] = units["srv-data.mount"]!.replacingOccurrences(of: "Where=/srv/data", with: "Where=/srv/other")
        let result = try verify(units)
        #expect(!result.output.isEmpty)
    }

    @Test func mountExampleMatchesNaming() throws {
        let text = try String(contentsOf: Self.systemdDir.appendingPathComponent("srv-data.mount"), encoding: .utf8)
        let lines = text.split(separator: "\n").map(String.init)
        let what = lines.first { $0.hasPrefix("What=") }.map { String($0.dropFirst(5)) }
        let where_ = lines.first { $0.hasPrefix("Where=") }.map { String($0.dropFirst(6)) }
        #expect(what == DeviceNames.byPathDirectory + "/" + DeviceNames.byPathName(
            host: "192.168.1.10", port: 3260, target: "iqn.2004-04.com.example:storage.disk1", lun: 1))
        #expect(where_.map(DeviceNames.systemdEscapePath) == "srv-data")
        let service = try String(contentsOf: Self.systemdDir.appendingPathComponent("iscsi-nbd.service"), encoding: .utf8)
        #expect(service.contains("Type=notify"))
        #expect(service.contains("ExecStart=/usr/sbin/iscsi-nbd daemon"))
        let socket = try String(contentsOf: Self.systemdDir.appendingPathComponent("iscsi-nbd.socket"), encoding: .utf8)
        #expect(socket.contains("ListenStream=\(ControlProtocol.defaultSocketPath)"))
        #expect(socket.contains("SocketMode=0600"))
    }

    @Test func udevRuleKeepsNBDUnwatchedAndAsksTheInstalledBinary() throws {
        let rules = try String(contentsOf: Self.root.appendingPathComponent("dist/udev/60-iscsi-nbd.rules"), encoding: .utf8)
        let active = rules.split(separator: "\n").filter { !$0.hasPrefix("#") && !$0.trimmingCharacters(in: .whitespaces).isEmpty }
        // Everything after the guard applies to nbd devices only.
        #expect(active.firstIndex { $0.contains("KERNEL!=\"nbd[0-9]*\", GOTO=\"iscsi_nbd_end\"") }
                ?? 99 < active.firstIndex { $0 == "OPTIONS:=\"nowatch\"" } ?? 0)
        // The helper is the binary the package and the sysext install, named as the unit names it.
        let service = try String(contentsOf: Self.systemdDir.appendingPathComponent("iscsi-nbd.service"), encoding: .utf8)
        let binary = service.split(separator: "\n").first { $0.hasPrefix("ExecStart=") }!.dropFirst("ExecStart=".count).split(separator: " ")[0]
        #expect(active.contains { $0.contains("IMPORT{program}=\"\(binary) udev-id %k\"") && $0.contains("TEST==\"pid\"") })
        // Our ID_PATH must be set before 60-persistent-storage.rules makes the by-path link from it.
        #expect("60-iscsi-nbd.rules" < "60-persistent-storage.rules")
        _ = try UdevIDCommand.parse(["nbd0"])
    }
}
