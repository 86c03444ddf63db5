import Foundation
import Testing

@testable import ISCSINBDCommand

@Suite struct ISCSIURLTests {
    @Test func plain() throws {
        let u = try ISCSIURL(parsing: "iscsi://127.0.0.1/iqn.2026-11.com.example:disk/1")
        #expect(u.host == "127.0.0.1")
        #expect(u.port == 3260)
        #expect(u.targetName == "iqn.2026-11.com.example:disk")
        #expect(u.lun == 1)
        #expect(u.username == nil && u.password == nil)
    }

    @Test func portUserAndPassword() throws {
        let u = try ISCSIURL(parsing: "iscsi://alice%s3cr3t@host.example:3261/iqn.x:y/0")
        #expect(u.username == "alice")
        #expect(u.password == "s3cr3t")
        #expect(u.host == "host.example")
        #expect(u.port == 3261)
        #expect(u.lun == 0)
        #expect(!u.description.contains("s3cr3t"))
        #expect(u.description == "iscsi://alice%********@host.example:3261/iqn.x:y/0")
    }

    @Test func ipv6() throws {
        let u = try ISCSIURL(parsing: "iscsi://[::1]:3262/iqn.x:y/2")
        #expect(u.host == "::1")
        #expect(u.port == 3262)
        #expect(u.description == "iscsi://[::1]:3262/iqn.x:y/2")
    }

    @Test(arguments: [
        "http://h/iqn.x/1", "iscsi://h", "iscsi://h/iqn.x", "iscsi://h/iqn.x/", "iscsi://h/iqn.x/abc",
        "iscsi://h/iqn.x/16384", "iscsi://h:0/iqn.x/1", "iscsi://h:99999/iqn.x/1", "iscsi://h:port/iqn.x/1",
        "iscsi:///iqn.x/1", "iscsi://h//1", "iscsi://[::1/iqn.x/1", "iscsi://@h/iqn.x/1", "iscsi://u%@h/iqn.x/1",
        "iscsi://h/iqn.x/1/2", "iscsi://h h/iqn.x/1",
    ])
    func rejects(_ text: String) {
        #expect(throws: ISCSIURL.ParseError.self) { try ISCSIURL(parsing: text) }
    }

    /// The second one: a '/' in the password ends the authority early, so the host:port part is "bob%top:s".
    @Test(arguments: ["iscsi://bob%topsecret@h/iqn.x/zz", "iscsi://bob%top:s/ecret@h/iqn.x/0"])
    func errorsNeverShowThePassword(url: String) {
        do {
            _ = try ISCSIURL(parsing: url)
            Issue.record("expected an error")
        } catch {
            #expect(!error.description.contains("top"), "\(error)")
        }
    }
}

@Suite struct ListenAddressTests {
    @Test func forms() throws {
        #expect(try ListenAddress.parseTCP(":10810") == ListenAddress(host: "127.0.0.1", port: 10810))
        #expect(try ListenAddress.parseTCP("0.0.0.0") == ListenAddress(host: "0.0.0.0", port: 10809))
        #expect(try ListenAddress.parseTCP("127.0.0.2:1") == ListenAddress(host: "127.0.0.2", port: 1))
        #expect(try ListenAddress.parseTCP("[::1]:5") == ListenAddress(host: "::1", port: 5))
        #expect(throws: (any Error).self) { try ListenAddress.parseTCP("h:0") }
        #expect(throws: (any Error).self) { try ListenAddress.parseTCP("[::1") }
    }
}

@Suite struct SecretResolverTests {
    func tempFile(_ contents: String, mode: mode_t = 0o600) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("secret-\(UUID())").path
        FileManager.default.createFile(atPath: path, contents: Data(contents.utf8))
        chmod(path, mode)
        return path
    }

    @Test func noneConfigured() throws {
        #expect(try SecretResolver.resolve(urlUsername: nil, urlPassword: nil, username: nil, secretFile: nil,
                                           targetUsername: nil, targetSecretFile: nil, environment: [:]) == nil)
    }

    @Test func precedenceFileOverEnvironmentOverURL() throws {
        let file = try tempFile("fromfile\nignored\n")
        defer { unlink(file) }
        let env = [SecretResolver.usernameVariable: "envuser", SecretResolver.secretVariable: "fromenv"]
        let a = try SecretResolver.resolve(urlUsername: "u", urlPassword: "fromurl", username: nil, secretFile: file,
                                           targetUsername: nil, targetSecretFile: nil, environment: env)
        #expect(a == ResolvedCHAP(username: "envuser", secret: "fromfile"))
        let b = try SecretResolver.resolve(urlUsername: "u", urlPassword: "fromurl", username: "cli", secretFile: nil,
                                           targetUsername: nil, targetSecretFile: nil, environment: env)
        #expect(b == ResolvedCHAP(username: "cli", secret: "fromenv"))
        let c = try SecretResolver.resolve(urlUsername: "u", urlPassword: "fromurl", username: nil, secretFile: nil,
                                           targetUsername: nil, targetSecretFile: nil, environment: [:])
        #expect(c == ResolvedCHAP(username: "u", secret: "fromurl"))
        #expect(!String(describing: c!).contains("fromurl"))
    }

    @Test func worldReadableSecretFileRefused() throws {
        let file = try tempFile("s", mode: 0o644)
        defer { unlink(file) }
        #expect(throws: SecretError.self) {
            try SecretResolver.resolve(urlUsername: "u", urlPassword: nil, username: nil, secretFile: file,
                                       targetUsername: nil, targetSecretFile: nil, environment: [:])
        }
    }

    @Test func incompleteOrIdenticalMutualRefused() throws {
        let env = [SecretResolver.targetUsernameVariable: "tgt"]
        #expect(throws: SecretError.self) {
            try SecretResolver.resolve(urlUsername: "u", urlPassword: "p", username: nil, secretFile: nil,
                                       targetUsername: nil, targetSecretFile: nil, environment: env)
        }
        let same = [SecretResolver.targetUsernameVariable: "tgt", SecretResolver.targetSecretVariable: "p"]
        do {
            _ = try SecretResolver.resolve(urlUsername: "u", urlPassword: "p", username: nil, secretFile: nil,
                                           targetUsername: nil, targetSecretFile: nil, environment: same)
            Issue.record("identical secrets accepted")
        } catch {
            #expect(error.description.contains("differ"))
            #expect(!error.description.contains("\"p\""))
        }
        #expect(throws: SecretError.self) {
            try SecretResolver.resolve(urlUsername: nil, urlPassword: nil, username: nil, secretFile: nil,
                                       targetUsername: nil, targetSecretFile: nil,
                                       environment: [SecretResolver.secretVariable: "x"])
        }
    }
}
