import ArgumentParser
import ISCSIConfig
import Testing

@testable import ISCSINBDCommand

/// The iscsiadm vocabulary from open-iscsi guides, parsed into requests (no IO).
@Suite struct AdminParsingTests {
    func request(_ argv: [String]) throws -> AdminRequest {
        let command = try ISCSINBDRootCommand.parseAsRoot(argv)
        guard let admin = command as? Admin else { throw ValidationError("parsed as \(type(of: command))") }
        return try admin.request()
    }

    @Test func guideCommands() throws {
        #expect(try request(["-m", "discovery", "-t", "sendtargets", "-p", "10.0.0.1:3260"])
                == .discovery(.sendTargets, portal: Portal(host: "10.0.0.1", port: 3260), login: false))
        #expect(try request(["-m", "discovery", "-t", "st", "-p", "10.0.0.1"])
                == .discovery(.sendTargets, portal: Portal(host: "10.0.0.1", port: 3260), login: false))
        #expect(try request(["-m", "discovery", "-t", "isns"]) == .discovery(.isns, portal: nil, login: false))
        #expect(try request(["-m", "discovery", "-t", "isns", "-p", "127.0.0.1"])
                == .discovery(.isns, portal: Portal(host: "127.0.0.1", port: 3205), login: false))
        #expect(try request(["-m", "node"]) == .nodeList)
        #expect(try request(["-m", "node", "-T", "iqn.x:y"]) == .nodeShow(target: "iqn.x:y", portal: nil))
        #expect(try request(["-m", "node", "--targetname=iqn.x:y", "--op", "update",
                             "--name=node.session.auth.username", "--value=alice"])
                == .nodeUpdate(target: "iqn.x:y", portal: nil, key: "node.session.auth.username", value: "alice"))
        #expect(try request(["-m", "node", "-T", "iqn.x:y", "-o", "update", "-n", "node.startup", "-v", "automatic"])
                == .nodeUpdate(target: "iqn.x:y", portal: nil, key: "node.startup", value: "automatic"))
        #expect(try request(["-m", "node", "--login"]) == .nodeLogin(target: nil, portal: nil))
        #expect(try request(["-m", "node", "--targetname=iqn.x:y", "-p", "[::1]:3261", "-l"])
                == .nodeLogin(target: "iqn.x:y", portal: Portal(host: "::1", port: 3261)))
        #expect(try request(["-m", "node", "-T", "iqn.x:y", "-u"]) == .nodeLogout(target: "iqn.x:y", portal: nil))
        #expect(try request(["-m", "node", "-T", "t", "-p", "h:1,1", "--op", "new"])
                == .nodeNew(target: "t", portal: Portal(host: "h", port: 1)))
        #expect(try request(["-m", "node", "-T", "t", "--op=delete"]) == .nodeDelete(target: "t", portal: nil))
        #expect(try request(["-m", "session"]) == .sessionList(printLevel: 0))
        #expect(try request(["-m", "session", "-P", "3"]) == .sessionList(printLevel: 3))
    }

    @Test(arguments: [
        ["-m", "discovery", "-t", "sendtargets"],         // no portal
        ["-m", "discovery", "-t", "slp", "-p", "h"],       // unknown type
        ["-m", "discovery"],                                // no type
        ["-m", "node", "--op", "update", "--name", "k"],   // no value
        ["-m", "node", "--op", "new", "-T", "t"],          // no portal
        ["-m", "node", "--op", "frobnicate"],
        ["-m", "node", "--login", "--logout"],
        ["-m", "session", "-P", "7"],
        ["-m", "iface"],
        ["-m", "bogus"],
        ["-m", "node", "-p", "h:99999", "-T", "t"],
        ["-m", "node", "-I", "iser", "-T", "t"],
    ])
    func rejected(_ argv: [String]) {
        #expect(throws: (any Error).self) { try request(argv) }
    }
}
