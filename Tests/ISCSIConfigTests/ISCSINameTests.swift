import Foundation
import Testing

@testable import ISCSIConfig

@Suite struct ISCSINameTests {
    @Test(arguments: [
        "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",
        "iqn.2001-04.com.example",
        "iqn.2001-04.com.example:storage.tape1.sys1.xyz",
        "iqn.2005-03.org.open-iscsi:0123456789ab",
        "iqn.2026-11.test:disk",
        "eui.02004567A425678D",
        "eui.02004567a425678d",
        "naa.52004567BA64678D",
        "naa.62004567BA64678D0123456789ABCDEF",
        "iqn.2001-04.com.example:ünïcödé",
    ])
    func validNames(name: String) throws {
        #expect(try ISCSIName(validating: name).rawValue == name)
    }

    @Test(arguments: [
        "",
        "IQN.2001-04.com.example",
        "iqn.2001-04.com.Example",
        "iqn.2001-04.com.example:Disk",
        "iqn.2001-13.com.example",
        "iqn.2001-00.com.example",
        "iqn.01-04.com.example",
        "iqn.2001-04",
        "iqn.2001-04.",
        "iqn.2001-04.com..example",
        "iqn.2001-04.com.example:disk one",
        "iqn.2001-04.com.example:disk_one",
        "iqn.2001-04.com.example:disk/one",
        "eui.02004567A425678",
        "eui.02004567A425678G",
        "naa.52004567BA64678D01",
        "wwn.0123",
        "iqn.2001-04.com.example:" + String(repeating: "a", count: 200),
    ])
    func invalidNames(name: String) {
        #expect(throws: ISCSIConfigError.self) { try ISCSIName(validating: name) }
    }

    @Test func maximumLengthIs223Bytes() throws {
        let prefix = "iqn.2001-04.com.example:"
        let ok = prefix + String(repeating: "a", count: 223 - prefix.utf8.count)
        #expect(ok.utf8.count == 223)
        _ = try ISCSIName(validating: ok)
        #expect(throws: ISCSIConfigError.self) { try ISCSIName(validating: ok + "a") }
    }

    @Test func generatedNamesAreValidAndUnique() throws {
        var seen: Set<String> = []
        for _ in 0..<200 {
            let name = try ISCSIName.generate()
            #expect(name.rawValue.hasPrefix("iqn.2005-03.org.open-iscsi:"))
            let suffix = name.rawValue.split(separator: ":").last.map(String.init) ?? ""
            #expect(suffix.count == 12 && suffix.allSatisfy { $0.isHexDigit && !$0.isUppercase })
            seen.insert(name.rawValue)
        }
        #expect(seen.count == 200)
        let custom = try ISCSIName.generate(prefix: "iqn.2026-01.org.example.iscsi-nbd")
        #expect(custom.rawValue.hasPrefix("iqn.2026-01.org.example.iscsi-nbd:"))
        #expect(throws: ISCSIConfigError.self) { try ISCSIName.generate(prefix: "not-a-name") }
    }

    @Test func initiatorNameFileParsing() throws {
        let file = try InitiatorNameFile.parse("""
            ## DO NOT EDIT OR REMOVE THIS FILE!
            # comment
            InitiatorName=iqn.1993-08.org.debian:01:abcdef012345
            InitiatorAlias=my host
            """)
        #expect(file.name.rawValue == "iqn.1993-08.org.debian:01:abcdef012345")
        #expect(file.alias == "my host")
        #expect(try InitiatorNameFile.parse(file.render()) == file)
    }

    @Test func initiatorNameFileErrors() {
        #expect { try InitiatorNameFile.parse("# nothing\n", file: "f") } throws: { ($0 as? ISCSIConfigError)?.code == .invalidName }
        #expect {
            try InitiatorNameFile.parse("# c\nInitiatorName=iqn.bad\n", file: "f")
        } throws: { ($0 as? ISCSIConfigError)?.line == 2 && ($0 as? ISCSIConfigError)?.file == "f" }
    }

    @Test func initiatorNameIsGeneratedOnceAndThenKept() throws {
        let dir = try TempDir()
        let configDir = dir.path + "/etc/iscsi"
        let first = try InitiatorNameFile.loadOrCreate(configDirectory: configDir)
        let second = try InitiatorNameFile.loadOrCreate(configDirectory: configDir)
        #expect(first == second)
        let text = try String(contentsOfFile: configDir + "/initiatorname.iscsi", encoding: .utf8)
        #expect(text.contains("InitiatorName=\(first.name.rawValue)\n"))
        let attrs = try FileManager.default.attributesOfItem(atPath: configDir + "/initiatorname.iscsi")
        #expect((attrs[.posixPermissions] as? NSNumber)?.intValue == 0o644)
    }

    @Test func configDirectoryResolution() {
        #expect(ConfigDirectory.resolve(explicit: nil, environment: [:]) == "/etc/iscsi")
        #expect(ConfigDirectory.resolve(explicit: nil, environment: ["ISCSI_NBD_CONFIG_DIR": "/tmp/x"]) == "/tmp/x")
        #expect(ConfigDirectory.resolve(explicit: "/opt/c", environment: ["ISCSI_NBD_CONFIG_DIR": "/tmp/x"]) == "/opt/c")
        #expect(ConfigDirectory.resolve(explicit: nil, environment: ["ISCSI_NBD_CONFIG_DIR": ""]) == "/etc/iscsi")
    }
}

/// A temporary directory removed when the value is deinitialised.
final class TempDir {
    let path: String
    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("iscsiconfig-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}
