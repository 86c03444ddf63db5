import NIOCore

/// A target portal found through iSNS: host (dotted IPv4 or IPv6 text), TCP port, portal group tag.
public struct ISNSPortal: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var tpgt: Int

    public init(host: String, port: Int, tpgt: Int) {
        self.host = host
        self.port = port
        self.tpgt = tpgt
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port),\(tpgt)" : "\(host):\(port),\(tpgt)" }
    public static func < (a: ISNSPortal, b: ISNSPortal) -> Bool { (a.host, a.port, a.tpgt) < (b.host, b.port, b.tpgt) }
}

/// A target and its portals, from a DevAttrQryRsp.
public struct ISNSDiscoveredTarget: Hashable, Sendable, CustomStringConvertible {
    public var name: String
    public var portals: [ISNSPortal]

    public init(name: String, portals: [ISNSPortal]) {
        self.name = name
        self.portals = portals
    }

    public var description: String { "\(name) \(portals.map(\.description).joined(separator: " "))" }
}

/// Builders for the requests an initiator sends, and the parser for the query response.
public enum ISNSInitiatorMessages {
    /// DevAttrReg registering our initiator node (RFC 4171 §5.6.5.1): Message Key = EID (a new
    /// entity is created if it does not exist), Operating = EID, Entity Protocol iSCSI, iSCSI Name,
    /// iSCSI Node Type Initiator. Key attributes precede non-key attributes of each object.
    public static func registerInitiator(name: String, entityIdentifier: String, alias: String? = nil) -> ISNSRequest {
        var operating: [ISNSAttribute] = [
            .string(.entityIdentifier, entityIdentifier),
            .uint32(.entityProtocol, ISNSEntityProtocol.iscsi.rawValue),
            .string(.iscsiName, name),
            .uint32(.iscsiNodeType, ISNSNodeType.initiator.rawValue),
        ]
        if let alias { operating.append(.string(.iscsiAlias, alias)) }
        return ISNSRequest(functionID: .devAttrReg, source: .string(.iscsiName, name),
                           messageKey: [.string(.entityIdentifier, entityIdentifier)], operating: operating)
    }

    /// DevAttrQry for all visible iSCSI targets (§5.6.5.2): Message Key = iSCSI Node Type Target;
    /// Operating = zero-length TLVs naming the attributes wanted back (node name/type, portals, and
    /// the Portal Group objects that tie a target to its portals with a PGT).
    public static func queryTargets(source: String) -> ISNSRequest {
        let wanted: [ISNSAttributeTag] = [
            .iscsiName, .iscsiNodeType, .portalIPAddress, .portalPort,
            .pgISCSIName, .pgPortalIPAddress, .pgPortalPort, .pgTag,
        ]
        return ISNSRequest(functionID: .devAttrQry, source: .string(.iscsiName, source),
                           messageKey: [.uint32(.iscsiNodeType, ISNSNodeType.target.rawValue)],
                           operating: wanted.map(ISNSAttribute.empty))
    }

    /// DevDereg removing our entity and everything under it (§5.6.5.4: no Message Key; Operating = EID).
    public static func deregister(source: String, entityIdentifier: String) -> ISNSRequest {
        ISNSRequest(functionID: .devDereg, source: .string(.iscsiName, source), messageKey: [],
                    operating: [.string(.entityIdentifier, entityIdentifier)])
    }

    /// Extracts targets from a DevAttrQryRsp. Portal Group objects (PG iSCSI Name, PG Portal IP
    /// Address, PG Portal TCP/UDP Port, PG Tag) give (target, portal, tpgt); a PG whose PGT is
    /// zero-length is a "NULL PGT", meaning the portal may not be used for that node (§6.5), so it
    /// is skipped. Nodes known from the response not to be targets are skipped too. Attributes are
    /// validated (sizes, NUL termination); a malformed attribute is an error.
    public static func targets(from response: ISNSResponse) throws(ISNSError) -> [ISNSDiscoveredTarget] {
        guard response.status == .successful else {
            throw ISNSError(.status, "DevAttrQry failed", status: response.status)
        }
        struct PG { var name: String?; var address: ISNSIPAddress?; var port: UInt32?; var tag: UInt32?; var nullTag = false }
        var groups: [PG] = []
        var nodeTypes: [String: ISNSNodeType] = [:]
        var currentNode: String?
        for attribute in response.messageKey + response.operating {
            switch attribute.tag {
            case .iscsiName:
                currentNode = try attribute.stringValue()
            case .iscsiNodeType:
                if let node = currentNode { nodeTypes[node] = ISNSNodeType(rawValue: try attribute.uint32Value()) }
            case .pgISCSIName:
                // A PG object starts with its key attribute, the PG iSCSI Name.
                groups.append(PG(name: try attribute.stringValue()))
            case .pgPortalIPAddress:
                guard !groups.isEmpty else { throw .malformed("PG Portal IP Address outside a Portal Group") }
                groups[groups.count - 1].address = try attribute.ipAddressValue()
            case .pgPortalPort:
                guard !groups.isEmpty else { throw .malformed("PG Portal Port outside a Portal Group") }
                groups[groups.count - 1].port = try attribute.uint32Value()
            case .pgTag:
                guard !groups.isEmpty else { throw .malformed("PG Tag outside a Portal Group") }
                if attribute.value.readableBytes == 0 {
                    groups[groups.count - 1].nullTag = true
                } else {
                    groups[groups.count - 1].tag = try attribute.uint32Value()
                }
            default:
                continue
            }
        }
        var byName: [String: Set<ISNSPortal>] = [:]
        var order: [String] = []
        for pg in groups {
            guard let name = pg.name, let address = pg.address, let port = pg.port, let tag = pg.tag, !pg.nullTag else { continue }
            // §6.1: iSCSI Name / PG iSCSI Name are 4-224 bytes including the NUL.
            guard !name.isEmpty, name.utf8.count <= 223 else {
                throw .malformed("PG iSCSI Name of \(name.utf8.count) bytes (1-223 allowed)")
            }
            if let type = nodeTypes[name], !type.contains(.target) { continue }
            // §6.3.2: bits 16-31 are the port; bit 15 (0x10000) set means UDP, which iSCSI does not use.
            guard port & 0x0001_0000 == 0 else { continue }
            let tcpPort = Int(port & 0xFFFF)
            guard tcpPort != 0, tag <= 0xFFFF else {
                throw .malformed("Portal Group for \(name) has port \(tcpPort) / PGT \(tag) out of range")
            }
            if byName[name] == nil { order.append(name) }
            byName[name, default: []].insert(ISNSPortal(host: address.description, port: tcpPort, tpgt: Int(tag)))
        }
        return order.sorted().map { ISNSDiscoveredTarget(name: $0, portals: (byName[$0] ?? []).sorted()) }
    }
}
