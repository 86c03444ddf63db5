import Foundation
import Testing

@testable import ISCSIConfig

enum Fixtures {
    /// Debian bookworm's /etc/iscsi/iscsid.conf from open-iscsi 2.1.8-1+deb12u1
    /// (`apt-get download open-iscsi`, extracted with `dpkg-deb -x`), kept verbatim.
    static var debianISCSIDConf: String {
        get throws {
            let url = try #require(Bundle.module.url(forResource: "debian-iscsid", withExtension: "conf", subdirectory: "Fixtures"))
            return try String(contentsOf: url, encoding: .utf8)
        }
    }
}

@Suite struct ConfigDocumentTests {
    @Test func debianISCSIDConfParsesAndRoundTripsByteForByte() throws {
        let text = try Fixtures.debianISCSIDConf
        let doc = try ISCSIDConf.parse(text, file: "iscsid.conf")
        #expect(doc.render() == text)
        #expect(doc["node.startup"] == "manual")
        #expect(doc["node.session.cmds_max"] == "128")
        #expect(doc["node.conn[0].timeo.noop_out_interval"] == "5")
        #expect(doc["node.session.iscsi.MaxBurstLength"] == "16776192")
        // The value is the rest of the line, spaces included.
        #expect(doc["iscsid.startup"] == "/bin/systemctl start iscsid.socket")
        // Commented-out settings are comments, not entries.
        #expect(doc["node.session.auth.authmethod"] == nil)
        let unknown = ConfigKeys.unknownKeys(in: doc)
        #expect(unknown.contains("iscsid.startup"))
        #expect(unknown.contains("node.session.err_timeo.abort_timeout"))
        #expect(!unknown.contains("node.session.queue_depth"))
    }

    @Test func debianDefaultsResolveToOpenISCSIDefaults() throws {
        let doc = try ISCSIDConf.parse(try Fixtures.debianISCSIDConf)
        let s = try EffectiveNodeSettings.resolve(iscsid: doc)
        #expect(s.startup == .manual)
        #expect(s.replacementTimeout == .seconds(120))
        #expect(s.loginTimeout == .seconds(15))
        #expect(s.noopOutInterval == .seconds(5))
        #expect(s.initialLoginRetryMax == 8)
        #expect(s.cmdsMax == 128 && s.queueDepth == 32)
        #expect(s.initialR2T == false && s.immediateData == true)
        #expect(s.firstBurstLength == 262_144 && s.maxBurstLength == 16_776_192)
        #expect(s.maxRecvDataSegmentLength == 262_144)
        #expect(s.auth.method == .none)
    }

    @Test func editingKeepsEveryOtherLineAndOrder() throws {
        let text = """
            # comment one
            node.startup = manual

              # indented comment
            unknown.key=some value = with equals
            node.session.cmds_max   =   64
            """
        var doc = try ConfigDocument.parse(text)
        #expect(!doc.endsWithNewline)
        #expect(doc.render() == text)
        doc.set("node.session.cmds_max", to: "256")
        doc.set("new.key", to: "x")
        #expect(doc.render() == """
            # comment one
            node.startup = manual

              # indented comment
            unknown.key=some value = with equals
            node.session.cmds_max = 256
            new.key = x
            """)
        #expect(doc["unknown.key"] == "some value = with equals")
        let removed = doc.remove("node.startup")
        #expect(removed)
        #expect(!doc.render().contains("node.startup"))
    }

    @Test func lastOccurrenceWins() throws {
        let doc = try ConfigDocument.parse("a = 1\na = 2\n")
        #expect(doc["a"] == "2")
        #expect(doc.entry(for: "a")?.lineNumber == 2)
    }

    @Test func crlfFilesRoundTrip() throws {
        let text = "# c\r\nnode.startup = automatic\r\n\r\n"
        let doc = try ConfigDocument.parse(text)
        #expect(doc["node.startup"] == "automatic")
        #expect(doc.render() == text)
    }

    @Test(arguments: [
        ("a = 1\nno equals here\n", 2, "expected 'key = value'"),
        ("a = 1\n\n = value\n", 3, "empty key"),
        ("bad key = 1\n", 1, "whitespace"),
    ])
    func malformedLinesNameFileAndLine(text: String, line: Int, fragment: String) {
        #expect {
            try ConfigDocument.parse(text, file: "/etc/iscsi/iscsid.conf")
        } throws: { error in
            guard let e = error as? ISCSIConfigError else { return false }
            return e.code == .malformedLine && e.line == line && e.file == "/etc/iscsi/iscsid.conf"
                && e.description.hasPrefix("/etc/iscsi/iscsid.conf:\(line): ") && e.message.contains(fragment)
        }
    }

    @Test func oversizedFileIsRejected() {
        let big = String(repeating: "# padding padding padding\n", count: 50_000)
        #expect(throws: ISCSIConfigError.self) { try ConfigDocument.parse(big) }
    }
}
