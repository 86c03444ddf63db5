import Foundation
import Testing

@testable import ISCSINBDCommand

/// One version everywhere: `iscsi-nbd --version` prints the constant, scripts/package.sh names the .deb and
/// the image after what the binary prints, and no doc or dist file states another version.
@Suite struct VersionTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func theCommandLinePrintsTheConstant() {
        #expect(ISCSINBDRootCommand.configuration.version == ISCSINBDVersion.current)
        #expect(ISCSINBDVersion.current.split(separator: ".").count == 3)
    }

    /// Files that name the package or the binary with a version must name this one; the Debian control
    /// template takes it from the build (@VERSION@), never a literal.
    @Test func docsAndDistFilesAgree() throws {
        let files = ["README.md"] + (try FileManager.default.contentsOfDirectory(atPath: Self.root.appendingPathComponent("docs").path)
            .filter { $0.hasSuffix(".md") }.map { "docs/\($0)" })
            + ["dist/debian/control", "dist/butane/iscsi-nbd.bu", "dist/man/iscsi-nbd.8", "dist/man/iscsi-nbd.conf.5"]
        let pattern = try NSRegularExpression(pattern: #"iscsi-nbd[ _-](?:version )?v?(\d+\.\d+\.\d+)"#)
        var seen = 0
        for file in files {
            let text = try String(contentsOf: Self.root.appendingPathComponent(file), encoding: .utf8)
            for m in pattern.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                let version = String(text[Range(m.range(at: 1), in: text)!])
                #expect(version == ISCSINBDVersion.current, "\(file) names version \(version)")
                seen += 1
            }
        }
        let control = try String(contentsOf: Self.root.appendingPathComponent("dist/debian/control"), encoding: .utf8)
        #expect(control.contains("Version: @VERSION@"))
        _ = seen
    }
}
