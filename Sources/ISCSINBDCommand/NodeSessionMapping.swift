import ISCSIClient
import ISCSIConfig
import ISCSIProtocol
import NIOCore

/// Turns resolved open-iscsi settings (defaults < iscsid.conf < node record < command line) into what the
/// iSCSI client needs. The two modules name some types alike (CHAP credentials and algorithms); this is
/// the one place that converts between them.
extension ISCSISessionConfiguration {
    init(node id: NodeID, settings s: EffectiveNodeSettings, initiatorName: String, initiatorAlias: String?) {
        self.init(host: id.portal.host, port: id.portal.port, targetName: id.target,
                  initiatorName: initiatorName, initiatorAlias: initiatorAlias)
        apply(auth: s.auth)
        proposal.initialR2T = s.initialR2T
        proposal.immediateData = s.immediateData
        proposal.firstBurstLength = s.firstBurstLength
        proposal.maxBurstLength = s.maxBurstLength
        proposal.maxRecvDataSegmentLength = s.maxRecvDataSegmentLength
        proposal.headerDigests = s.headerDigest.map(ISCSIDigest.init)
        proposal.dataDigests = s.dataDigest.map(ISCSIDigest.init)
        queueDepth = max(1, min(s.cmdsMax, s.queueDepth))
        loginTimeout = TimeAmount(s.loginTimeout)
        logoutTimeout = TimeAmount(s.logoutTimeout)
        noopOutInterval = s.noopOutInterval > .zero ? TimeAmount(s.noopOutInterval) : nil
        noopOutTimeout = TimeAmount(s.noopOutTimeout)
        replacementTimeout = TimeAmount(s.replacementTimeout)
    }

    /// CHAP from resolved settings (`auth.method` already follows open-iscsi's rule: CHAP whenever a password is set).
    mutating func apply(auth: AuthSettings) {
        authNote = auth.note
        guard auth.method == .chap, let initiator = auth.initiator else {
            chap = nil
            return
        }
        chap = ISCSIProtocol.CHAPCredentials(
            username: initiator.username, secret: initiator.secret,
            mutual: auth.target.map { ISCSIProtocol.CHAPCredentials.Identity(username: $0.username, secret: $0.secret) })
        chapAlgorithms = auth.algorithms.compactMap { ISCSIProtocol.CHAPAlgorithm(rawValue: $0.chapA) }
        if chapAlgorithms.isEmpty { chapAlgorithms = [.md5] }
    }
}

extension ISCSISessionConfiguration {
    /// Where the session logs in, as the project writes portals (`Portal`: IPv6 in brackets).
    var portal: Portal { Portal(host: host, port: port) }
}

/// iscsiadm's own portal form in its messages: `HOST,PORT` (no brackets), as in
/// `Logging in to [iface: default, target: T, portal: 10.0.0.1,3260]`.
extension Portal {
    var iscsiadmForm: String { "\(host),\(port)" }
}

extension NodeID {
    /// `[iface: default, target: T, portal: HOST,PORT]`, iscsiadm's label of a node in login messages.
    var iscsiadmLabel: String { "[iface: \(iface), target: \(target), portal: \(portal.iscsiadmForm)]" }
}

extension ISCSIDigest {
    init(_ d: DigestType) {
        switch d {
        case .none: self = .none
        case .crc32c: self = .crc32c
        }
    }
}

extension TimeAmount {
    init(_ d: Duration) {
        let (seconds, attoseconds) = d.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
