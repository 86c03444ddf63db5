/// Receives the kernel's `NBD_CMD_LINK_DEAD` notifications (multicast group `nbd_mc_group`,
/// linux/nbd-netlink.h): the kernel sends one when a connection of a device fails. A supervisor can then
/// reconnect and hand new sockets over with `NBDKernelDevice.reconfigure`, within the device's dead
/// connection timeout.
///
/// Blocking; use one monitor from one thread.
public final class NBDLinkMonitor {
    private let socket: NetlinkSocket
    private let family: GenericNetlinkFamily
    private var pending: [Int] = []

    /// Opens a netlink socket, resolves the nbd family (loading the module if needed) and joins its group.
    public init(replyTimeout: Duration = .seconds(10)) throws(NBDKernelError) {
        let (socket, family) = try NBDKernelDevice(replyTimeout: replyTimeout).openResolved()
        guard let group = family.multicastGroups[NBDNetlinkFamily.multicastGroupName] else {
            throw .malformedReply("the nbd family has no multicast group \(NBDNetlinkFamily.multicastGroupName)")
        }
        try socket.joinMulticastGroup(group)
        self.socket = socket
        self.family = family
    }

    /// The index of the next device whose link died, or nil when nothing arrived within `timeout`.
    public func next(timeout: Duration) throws(NBDKernelError) -> Int? {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while pending.isEmpty {
            guard let messages = try socket.receive(until: deadline) else { return nil }
            for message in messages where message.type == family.id && message.sequence == 0 {
                if let index = try NBDNetlinkMessages.parseLinkDead(GenericNetlinkMessage(message)) {
                    pending.append(index)
                }
            }
        }
        return pending.removeFirst()
    }
}

@available(*, unavailable)
extension NBDLinkMonitor: Sendable {}
