/// Matches received netlink messages to one request (pure; `NetlinkSocket` feeds it).
///
/// linux/netlink.h: with `NLM_F_ACK` the kernel answers every request with an `NLMSG_ERROR` carrying 0 (ACK)
/// or a negative errno, after any reply messages. Replies carry the request's sequence number and our port id
/// in `nlmsg_pid` (the socket layer checks that the datagram came from the kernel). Messages with another
/// sequence number or port id (a stale reply, or a multicast notification: sequence 0, port 0) are skipped.
struct NetlinkTransaction {
    enum Outcome: Equatable {
        /// Keep receiving.
        case needMore
        /// The ACK arrived; `replies` holds everything before it.
        case acknowledged
        /// The kernel refused the request.
        case rejected(NetlinkErrorMessage)
    }

    let sequence: UInt32
    let portID: UInt32
    private(set) var replies: [NetlinkMessage] = []

    init(sequence: UInt32, portID: UInt32) {
        self.sequence = sequence
        self.portID = portID
    }

    mutating func receive(_ message: NetlinkMessage) throws(NBDKernelError) -> Outcome {
        guard message.portID == portID, message.sequence == sequence else { return .needMore }
        switch message.type {
        case .error:
            let error = try NetlinkErrorMessage(message)
            guard error.requestSequence == sequence else {
                throw .malformedReply("NLMSG_ERROR with sequence \(sequence) echoes request \(error.requestSequence)")
            }
            return error.isAcknowledgement ? .acknowledged : .rejected(error)
        case .noop, .done:
            return .needMore
        case .overrun:
            throw .malformedReply("NLMSG_OVERRUN: the kernel lost messages")
        default:
            guard replies.count < 1024 else { throw .malformedReply("more than 1024 replies to one request") }
            replies.append(message)
            return .needMore
        }
    }
}
