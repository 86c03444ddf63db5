import NIOCore

/// What the generic netlink controller says about a family (reply to `CTRL_CMD_GETFAMILY`, linux/genetlink.h).
public struct GenericNetlinkFamily: Hashable, Sendable {
    /// `CTRL_ATTR_FAMILY_ID`: the `nlmsg_type` to address this family with.
    public var id: NetlinkMessageType
    public var name: String
    /// `CTRL_ATTR_VERSION`.
    public var version: UInt32
    /// `CTRL_ATTR_MAXATTR`, 0 when absent.
    public var maximumAttribute: UInt32
    /// `CTRL_ATTR_MCAST_GROUPS`: group name → group id (for `NETLINK_ADD_MEMBERSHIP`).
    public var multicastGroups: [String: UInt32]

    public init(id: NetlinkMessageType, name: String, version: UInt32, maximumAttribute: UInt32, multicastGroups: [String: UInt32]) {
        self.id = id
        self.name = name
        self.version = version
        self.maximumAttribute = maximumAttribute
        self.multicastGroups = multicastGroups
    }

    /// The request `CTRL_CMD_GETFAMILY` with `CTRL_ATTR_FAMILY_NAME = name`, sent to `GENL_ID_CTRL`.
    public static func encodeRequest(name: String, sequence: UInt32) throws(NBDKernelError) -> ByteBuffer {
        guard !name.isEmpty, name.utf8.count <= GenericNetlinkController.maximumNameLength else {
            throw .invalidArgument("generic netlink family name must be 1...15 bytes")
        }
        return try GenericNetlinkMessage.encodeRequest(
            family: .genericController, command: GenericNetlinkController.commandGetFamily,
            version: GenericNetlinkController.version, flags: [.ack], sequence: sequence
        ) { (writer) throws(NBDKernelError) in
            try writer.write(type: GenericNetlinkController.attributeFamilyName, string: name)
        }
    }

    /// Decodes a controller reply. The family id and name are required; the multicast groups are a nest of
    /// entries (numbered 1, 2, ...) each holding `CTRL_ATTR_MCAST_GRP_NAME` and `CTRL_ATTR_MCAST_GRP_ID`.
    public init(reply: GenericNetlinkMessage) throws(NBDKernelError) {
        guard reply.family == .genericController else {
            throw .malformedReply("family reply comes from \(reply.family), not the controller")
        }
        guard reply.command == GenericNetlinkController.commandNewFamily else {
            throw .malformedReply("controller replied with command \(reply.command), expected CTRL_CMD_NEWFAMILY")
        }
        guard let idAttribute = reply.attributes.first(GenericNetlinkController.attributeFamilyID),
            let nameAttribute = reply.attributes.first(GenericNetlinkController.attributeFamilyName)
        else {
            throw .malformedReply("controller reply lacks the family id or name")
        }
        let id = try idAttribute.u16()
        guard id >= NetlinkMessageType.genericController.rawValue else {
            throw .malformedReply("family id \(id) is a reserved control type")
        }
        self.id = NetlinkMessageType(rawValue: id)
        self.name = try nameAttribute.string()
        self.version = try reply.attributes.first(GenericNetlinkController.attributeVersion)?.u32() ?? 0
        self.maximumAttribute = try reply.attributes.first(GenericNetlinkController.attributeMaxAttribute)?.u32() ?? 0
        var groups: [String: UInt32] = [:]
        if let list = reply.attributes.first(GenericNetlinkController.attributeMulticastGroups) {
            for entry in try list.nested() {
                let fields = try entry.nested()
                guard let groupName = try fields.first(GenericNetlinkController.multicastGroupName)?.string(),
                    let groupID = try fields.first(GenericNetlinkController.multicastGroupID)?.u32()
                else {
                    throw .malformedReply("multicast group entry \(entry.type) lacks a name or id")
                }
                groups[groupName] = groupID
            }
        }
        self.multicastGroups = groups
    }
}
