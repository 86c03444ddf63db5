import NIOCore

/// A `TargetAddress` value (RFC 7143 §13.8): `domainname[:port][,portal-group-tag]`, where domainname is a
/// DNS name, a dotted-decimal IPv4 address or a bracketed IPv6 address (RFC 3986).
public struct TargetPortalAddress: Sendable, Hashable, CustomStringConvertible {
    /// Host name or address, without brackets for IPv6.
    public var host: String
    public var port: Int
    /// Absent in redirections (§13.8: "the comma and portal-group-tag MUST be omitted").
    public var portalGroupTag: UInt16?

    public static let defaultPort = 3260

    public init(host: String, port: Int = TargetPortalAddress.defaultPort, portalGroupTag: UInt16? = nil) {
        self.host = host
        self.port = port
        self.portalGroupTag = portalGroupTag
    }

    /// Parses `host[:port][,tpgt]`; the port defaults to 3260 (§13.8 "If the TCP port is not specified, it is
    /// assumed to be the IANA-assigned default port for iSCSI"). Returns nil when malformed.
    public init?(parsing text: String, defaultPort: Int = TargetPortalAddress.defaultPort) {
        guard !text.isEmpty, text.utf8.count <= 1024 else { return nil }
        var address = Substring(text)
        var tag: UInt16?
        if let comma = address.lastIndex(of: ",") {
            let tagText = address[address.index(after: comma)...]
            guard let value = TextValue.parseNumber(String(tagText)), value <= UInt64(UInt16.max) else { return nil }
            tag = UInt16(value)
            address = address[..<comma]
        }
        var host: Substring
        var portText: Substring?
        if address.first == "[" {
            guard let close = address.firstIndex(of: "]") else { return nil }
            host = address[address.index(after: address.startIndex)..<close]
            let rest = address[address.index(after: close)...]
            if !rest.isEmpty {
                guard rest.first == ":" else { return nil }
                portText = rest.dropFirst()
            }
            guard !host.isEmpty, host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." || $0 == "%" }) else {
                return nil
            }
        } else {
            let colons = address.filter { $0 == ":" }.count
            if colons == 1, let colon = address.firstIndex(of: ":") {
                host = address[..<colon]
                portText = address[address.index(after: colon)...]
            } else if colons == 0 {
                host = address
            } else {
                // An unbracketed IPv6 address is not valid here, but a bare one (no port) is unambiguous.
                host = address
            }
            guard !host.isEmpty, !host.contains(where: { $0 == " " || $0 == "[" || $0 == "]" || $0 == "/" }) else {
                return nil
            }
        }
        var port = defaultPort
        if let portText {
            guard let value = TextValue.parseNumber(String(portText)), (1...65535).contains(value) else { return nil }
            port = Int(value)
        }
        self.init(host: String(host), port: port, portalGroupTag: tag)
    }

    /// `host:port[,tpgt]`, IPv6 in brackets.
    public var description: String {
        let hostPart = host.contains(":") ? "[\(host)]" : host
        return "\(hostPart):\(port)" + (portalGroupTag.map { ",\($0)" } ?? "")
    }
}

/// One target record of a SendTargets response.
public struct DiscoveredTarget: Sendable, Hashable {
    public var name: String
    /// Empty when the target gave no TargetAddress: Appendix C says the target is then reachable at the
    /// address of the discovery connection (`portals(default:)`).
    public var portals: [TargetPortalAddress]

    public init(name: String, portals: [TargetPortalAddress]) {
        self.name = name
        self.portals = portals
    }

    /// `portals`, or the discovery portal when none were listed.
    public func portals(default discoveryPortal: TargetPortalAddress) -> [TargetPortalAddress] {
        portals.isEmpty ? [discoveryPortal] : portals
    }
}

/// A malformed SendTargets response.
public struct SendTargetsError: Error, Sendable, Hashable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// SendTargets (RFC 7143 §13.3, Appendix C).
public enum SendTargets {
    /// The keys of the Text Request: "This PDU contains exactly one text key and value. The text key MUST be
    /// SendTargets." `All` on a Discovery session, a target name, or "" for the session's own target.
    public static func requestKeys(_ value: String = "All") -> TextKeyValues {
        ["SendTargets": value]
    }

    /// Parses the (complete, C-bit accumulated) text of a SendTargets response.
    public static func parse(_ text: ByteBuffer, limits: TextLimits = .default) throws(SendTargetsError)
        -> [DiscoveredTarget]
    {
        let keys: TextKeyValues
        do {
            keys = try TextKeyValues.decode(text, limits: limits, duplicates: .allow)
        } catch {
            throw SendTargetsError("malformed SendTargets response: \(error.description)")
        }
        return try parse(keys)
    }

    /// Appendix C: "A target record begins with the TargetName text key, followed by a list of TargetAddress
    /// text keys, and bounded by the end of the Text Response or the next TargetName key". Other keys are not
    /// permitted; they are skipped rather than failing a discovery.
    public static func parse(_ keys: TextKeyValues) throws(SendTargetsError) -> [DiscoveredTarget] {
        var targets: [DiscoveredTarget] = []
        for pair in keys {
            switch pair.key {
            case "TargetName":
                guard !pair.value.isEmpty, pair.value.utf8.count <= 223 else {
                    throw SendTargetsError("invalid TargetName in SendTargets response (empty or over 223 bytes)")
                }
                targets.append(DiscoveredTarget(name: pair.value, portals: []))
            case "TargetAddress":
                guard !targets.isEmpty else {
                    throw SendTargetsError("TargetAddress before any TargetName in SendTargets response")
                }
                guard let portal = TargetPortalAddress(parsing: pair.value) else {
                    throw SendTargetsError("invalid TargetAddress \"\(pair.value.prefix(80))\" in SendTargets response")
                }
                targets[targets.count - 1].portals.append(portal)
            default:
                continue
            }
        }
        return targets
    }
}
