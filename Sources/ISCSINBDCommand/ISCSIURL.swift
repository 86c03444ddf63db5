/// An `iscsi://` URL as libiscsi and qemu write it:
///
///     iscsi://[<username>[%<password>]@]<host>[:<port>]/<target-iqn>/<lun>
///
/// `host` may be an IPv6 literal in brackets. The port defaults to 3260 (RFC 7143 §13.? well-known port).
/// A password in the URL is accepted for compatibility; `serve` scrubs it from the process's argv at once.
public struct ISCSIURL: Sendable, Hashable, CustomStringConvertible {
    public var username: String?
    public var password: String?
    public var host: String
    public var port: Int
    public var targetName: String
    public var lun: UInt16

    public init(username: String? = nil, password: String? = nil, host: String, port: Int = 3260,
                targetName: String, lun: UInt16) {
        self.username = username
        self.password = password
        self.host = host
        self.port = port
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

        // host[:port], [v6][:port]
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw Self.fail("unterminated [ in host") }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw Self.fail("unexpected text after ]") }
                portText = after.dropFirst()
            }
        } else if let colon = authority.firstIndex(of: ":") {
            host = String(authority[..<colon])
            portText = authority[authority.index(after: colon)...]
        } else {
            host = String(authority)
        }
        guard !host.isEmpty else { throw Self.fail("no host") }
        guard host.allSatisfy({ $0.isLetter || $0.isNumber || "-.:_%".contains($0) }) else {
            throw Self.fail("bad character in host")
        }
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p) else { throw Self.fail("port must be 1 to 65535") }
            port = p
        } else {
            port = 3260
        }

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
        s += host.contains(":") ? "[\(host)]" : host
        if port != 3260 { s += ":\(port)" }
        return s + "/\(targetName)/\(lun)"
    }
}
