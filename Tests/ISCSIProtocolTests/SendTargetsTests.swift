import ISCSIProtocol
import NIOCore
import Testing

@Suite struct SendTargetsTests {
    @Test func requestKeys() {
        #expect(SendTargets.requestKeys().encoded() == ByteBuffer(string: "SendTargets=All\0"))
        #expect(SendTargets.requestKeys("")["SendTargets"] == "")
    }

    @Test func parsesRecordsInOrder() throws {
        let text = ByteBuffer(string:
            "TargetName=iqn.2026-01.test:a\0TargetAddress=10.0.0.1:3261,1\0TargetAddress=[fe80::1]:3262,2\0"
            + "TargetName=iqn.2026-01.test:b\0TargetAddress=[2001:db8::5],3\0TargetAddress=storage.example.com,4\0"
            + "TargetName=iqn.2026-01.test:c\0")
        let targets = try SendTargets.parse(text)
        #expect(targets.map(\.name) == ["iqn.2026-01.test:a", "iqn.2026-01.test:b", "iqn.2026-01.test:c"])
        #expect(targets[0].portals == [TargetPortalAddress(host: "10.0.0.1", port: 3261, portalGroupTag: 1),
                                       TargetPortalAddress(host: "fe80::1", port: 3262, portalGroupTag: 2)])
        #expect(targets[1].portals == [TargetPortalAddress(host: "2001:db8::5", port: 3260, portalGroupTag: 3),
                                       TargetPortalAddress(host: "storage.example.com", port: 3260, portalGroupTag: 4)])
        #expect(targets[2].portals.isEmpty)
        let discovery = TargetPortalAddress(host: "192.0.2.1", port: 3260)
        #expect(targets[2].portals(default: discovery) == [discovery])
        #expect(targets[0].portals[1].description == "[fe80::1]:3262,2")
    }

    @Test func emptyResponseMeansNoTargets() throws {
        #expect(try SendTargets.parse(ByteBuffer()).isEmpty)
    }

    @Test(arguments: [
        "TargetAddress=10.0.0.1:3260,1\0",  // address before any name
        "TargetName=iqn.x\0TargetAddress=10.0.0.1:99999,1\0",
        "TargetName=iqn.x\0TargetAddress=10.0.0.1:3260,70000\0",
        "TargetName=iqn.x\0TargetAddress=[fe80::1:3260,1\0",
        "TargetName=iqn.x\0TargetAddress=[fe80::1]x,1\0",
        "TargetName=iqn.x\0TargetAddress=,1\0",
        "TargetName=\0",
        "TargetName=iqn.x\0garbage\0",
    ])
    func rejectsMalformed(text: String) {
        #expect(throws: SendTargetsError.self) { try SendTargets.parse(ByteBuffer(string: text)) }
    }

    @Test func portalParsing() {
        #expect(TargetPortalAddress(parsing: "127.0.0.1") == TargetPortalAddress(host: "127.0.0.1", port: 3260))
        #expect(TargetPortalAddress(parsing: "127.0.0.1:3261") == TargetPortalAddress(host: "127.0.0.1", port: 3261))
        #expect(TargetPortalAddress(parsing: "[::1]") == TargetPortalAddress(host: "::1", port: 3260))
        #expect(TargetPortalAddress(parsing: "host:0") == nil)
        #expect(TargetPortalAddress(parsing: "") == nil)
        #expect(TargetPortalAddress(parsing: "a b:1") == nil)
    }
}
