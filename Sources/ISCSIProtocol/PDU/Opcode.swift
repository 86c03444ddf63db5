/// An iSCSI opcode (RFC 7143 §11.2.1.2), the low 6 bits of BHS byte 0. Open: unknown values survive
/// for logging, and the decoder rejects them.
public struct Opcode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue & 0x3F }

    // Initiator opcodes.
    public static let nopOut = Opcode(rawValue: 0x00)
    public static let scsiCommand = Opcode(rawValue: 0x01)
    public static let taskManagementRequest = Opcode(rawValue: 0x02)
    public static let loginRequest = Opcode(rawValue: 0x03)
    public static let textRequest = Opcode(rawValue: 0x04)
    public static let dataOut = Opcode(rawValue: 0x05)
    public static let logoutRequest = Opcode(rawValue: 0x06)
    public static let snackRequest = Opcode(rawValue: 0x10)

    // Target opcodes.
    public static let nopIn = Opcode(rawValue: 0x20)
    public static let scsiResponse = Opcode(rawValue: 0x21)
    public static let taskManagementResponse = Opcode(rawValue: 0x22)
    public static let loginResponse = Opcode(rawValue: 0x23)
    public static let textResponse = Opcode(rawValue: 0x24)
    public static let dataIn = Opcode(rawValue: 0x25)
    public static let logoutResponse = Opcode(rawValue: 0x26)
    public static let readyToTransfer = Opcode(rawValue: 0x31)
    public static let asyncMessage = Opcode(rawValue: 0x32)
    public static let reject = Opcode(rawValue: 0x3F)

    /// RFC 7143 §11.2.1.2: initiator opcodes are below 0x20.
    public var isInitiatorOpcode: Bool { rawValue < 0x20 }

    /// Whether this specification defines the opcode (vendor-specific and unassigned codes are not).
    public var isDefined: Bool { Opcode.names[Int(rawValue)] != nil }

    private static let names: [Int: String] = [
        0x00: "NOP-Out", 0x01: "SCSI Command", 0x02: "Task Management Request", 0x03: "Login Request",
        0x04: "Text Request", 0x05: "SCSI Data-Out", 0x06: "Logout Request", 0x10: "SNACK Request",
        0x20: "NOP-In", 0x21: "SCSI Response", 0x22: "Task Management Response", 0x23: "Login Response",
        0x24: "Text Response", 0x25: "SCSI Data-In", 0x26: "Logout Response", 0x31: "R2T",
        0x32: "Async Message", 0x3F: "Reject",
    ]

    public var description: String {
        Opcode.names[Int(rawValue)] ?? "opcode 0x\(String(rawValue, radix: 16))"
    }
}

/// Which side sends a PDU stream, so the decoder can reject opcodes of the wrong direction
/// (RFC 7143 §11.2.1.2: "Initiators MUST NOT use target Opcodes, and targets MUST NOT use initiator Opcodes").
public enum PDUDirection: Sendable, Hashable {
    case initiatorToTarget
    case targetToInitiator
}
