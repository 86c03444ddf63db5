import ArgumentParser
import ISCSIConfig

/// An `iscsi://` URL as libiscsi and qemu write it:
///
///     iscsi://[<username>[%<password>]@]<host>[:<port>]/<target-iqn>/<lun>
///
/// `host` may be an IPv6 literal in brackets. The port defaults to 3260 (RFC 7143 §13.? well-known port).
/// A password in the URL is accepted for compatibility; `serve` scrubs it from the process's argv at once.
public struct ISCSIURL: Sendable, Hashable, CustomStringConvertible {
    public var username: String?
    public var password: String?
    public var portal: Portal
    public var targetName: String
    public var lun: UInt16

    public var host: String { portal.host }
    public var port: Int { portal.port }

    public init(username: String? = nil, password: String? = nil, host: String, port: Int = Portal.defaultPort,
                targetName: String, lun: UInt16) {
        self.username = username
        self.password = password
        self.portal = Portal(host: host, port: port)
        self.targetName = targetName
        self.lun = lun
    }

    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    private static func fail(_ why: String) -> ParseError {
        ParseError(description: "invalid iSCSI URL: \(why) (expected iscsi://[user[%password]@]host[:port]/target-iqn/lun)")
    }

    /// Parses the URL. Errors never repeat the password.
    public init(parsing string: String) throws(ParseError) {
        guard string.hasPrefix("iscsi://") else { throw Self.fail("it must start with iscsi://") }
        let rest = string.dropFirst("iscsi://".count)
        guard let slash = rest.firstIndex(of: "/") else { throw Self.fail("no target name") }
        var authority = rest[..<slash]
        let path = rest[rest.index(after: slash)...]

        if let at = authority.lastIndex(of: "@") {
            let userInfo = authority[..<at]
            authority = authority[authority.index(after: at)...]
            if let pct = userInfo.firstIndex(of: "%") {
                username = String(userInfo[..<pct])
                password = String(userInfo[userInfo.index(after: pct)...])
                if password!.isEmpty { throw Self.fail("empty password after %") }
            } else {
                username = String(userInfo)
            }
            if username!.isEmpty { throw Self.fail("empty user name before @") }
        }

        // host[:port], [v6][:port]: the project's one portal grammar; an IPv6 literal needs its brackets here.
        guard !authority.contains(","), authority.hasPrefix("[") || authority.filter({ $0 == ":" }).count <= 1 else {
            throw Self.fail("an IPv6 host goes in brackets, and no ,tpgt")
        }
        let split: (host: String, port: Int?)
        // Not Portal.split's message: it quotes its input, which holds the password when that has a '/'.
        do { split = try Portal.split(String(authority)) } catch { throw Self.fail("bad host or port: host[:port] or [v6][:port], port 1 to 65535") }
        guard !split.host.isEmpty else { throw Self.fail("no host") }
        guard split.host.allSatisfy({ $0.isLetter || $0.isNumber || "-.:_%".contains($0) }) else {
            throw Self.fail("bad character in host")
        }
        portal = Portal(host: split.host, port: split.port ?? Portal.defaultPort)

        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else { throw Self.fail("the path must be /target-iqn/lun") }
        targetName = String(parts[0])
        guard !targetName.isEmpty else { throw Self.fail("empty target name") }
        guard let l = UInt16(parts[1]), l < 16384 else { throw Self.fail("LUN must be a number from 0 to 16383") }
        lun = l
    }

    /// The URL without the password (safe for logs and errors).
    public var description: String {
        var s = "iscsi://"
        if let username { s += username + (password == nil ? "" : "%********") + "@" }
        s += port == Portal.defaultPort ? (host.contains(":") ? "[\(host)]" : host) : portal.description
        return s + "/\(targetName)/\(lun)"
    }
}

extension ISCSIURL {
    /// A URL given on the command line: parsed (errors as usage errors, never with the password), and its
    /// password scrubbed from argv at once, so `ps` no longer shows it.
    static func fromCommandLine(_ text: String) throws -> ISCSIURL {
        let parsed: ISCSIURL
        do { parsed = try ISCSIURL(parsing: text) } catch { throw ValidationError(error.description) }
        if let password = parsed.password { ArgvScrubber.scrub(password) }
        return parsed
    }
}
