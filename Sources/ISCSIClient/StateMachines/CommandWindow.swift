import ISCSIProtocol

/// The session's command numbering (RFC 7143 §4.2.2.1, §4.2.2.2): the next CmdSN to assign, the
/// target's ExpCmdSN/MaxCmdSN window, and the next StatSN we expect (sent as ExpStatSN).
public struct CommandWindow: Hashable, Sendable {
    /// The CmdSN the next non-immediate command gets.
    public private(set) var cmdSN: SerialNumber
    public private(set) var expCmdSN: SerialNumber
    public private(set) var maxCmdSN: SerialNumber
    /// The StatSN we expect next, acknowledging all before it (RFC 7143 §4.2.2.2, ExpStatSN).
    public private(set) var expStatSN: SerialNumber

    public init(cmdSN: SerialNumber, expCmdSN: SerialNumber, maxCmdSN: SerialNumber, expStatSN: SerialNumber) {
        self.cmdSN = cmdSN
        self.expCmdSN = expCmdSN
        self.maxCmdSN = maxCmdSN
        self.expStatSN = expStatSN
    }

    /// RFC 7143 §4.2.2.1: a non-immediate command may be sent when its CmdSN is within
    /// [ExpCmdSN, MaxCmdSN]. MaxCmdSN = ExpCmdSN - 1 closes the window.
    public var isOpen: Bool { cmdSN <= maxCmdSN }

    /// How many non-immediate commands could go out now.
    public var available: Int {
        guard isOpen else { return 0 }
        return Int(maxCmdSN.distance(from: cmdSN)) + 1
    }

    /// Takes the CmdSN for a non-immediate command; the caller checked `isOpen`.
    public mutating func assignCmdSN() -> SerialNumber {
        precondition(isOpen, "command window closed")
        let sn = cmdSN
        cmdSN += 1
        return sn
    }

    /// The CmdSN an immediate command carries (RFC 7143 §4.2.2.1: it does not advance CmdSN).
    public var immediateCmdSN: SerialNumber { cmdSN }

    /// Applies ExpCmdSN/MaxCmdSN from a target PDU.
    ///
    /// RFC 7143 §4.2.2.1: "If the PDU MaxCmdSN is less than the PDU ExpCmdSN-1 (in Serial Arithmetic
    /// Sense), both MaxCmdSN and ExpCmdSN fields are ignored"; otherwise the initiator keeps the larger
    /// values it has seen (PDUs can arrive on other connections or be reordered).
    /// Returns true when the window may have opened.
    @discardableResult
    public mutating func update(expCmdSN newExp: SerialNumber, maxCmdSN newMax: SerialNumber) -> Bool {
        if newMax < SerialNumber(newExp.rawValue &- 1) { return false }
        var opened = false
        if newExp > expCmdSN { expCmdSN = newExp }
        if newMax > maxCmdSN {
            maxCmdSN = newMax
            opened = true
        }
        // ExpCmdSN beyond what we sent means the target is confused; keep our own counter.
        return opened
    }

    /// Records a StatSN from a response (RFC 7143 §4.2.2.2). Returns false when it is not the one
    /// expected (older: a duplicate; newer: a gap, which ErrorRecoveryLevel 0 treats as fatal upstream).
    @discardableResult
    public mutating func receiveStatSN(_ statSN: SerialNumber) -> Bool {
        if statSN == expStatSN {
            expStatSN += 1
            return true
        }
        if statSN > expStatSN {
            // A gap: acknowledge up to it anyway so the target can free resources.
            expStatSN = statSN + 1
        }
        return false
    }
}
