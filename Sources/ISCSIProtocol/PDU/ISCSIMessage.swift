import NIOCore

/// Every PDU kind as a typed value (RFC 7143 §11).
public enum ISCSIMessage: Sendable {
    case nopOut(ISCSIPDU.NOPOut)
    case scsiCommand(ISCSIPDU.SCSICommand)
    case taskManagementRequest(ISCSIPDU.TaskManagementRequest)
    case loginRequest(ISCSIPDU.LoginRequest)
    case textRequest(ISCSIPDU.TextRequest)
    case dataOut(ISCSIPDU.DataOut)
    case logoutRequest(ISCSIPDU.LogoutRequest)
    case snackRequest(ISCSIPDU.SNACKRequest)
    case nopIn(ISCSIPDU.NOPIn)
    case scsiResponse(ISCSIPDU.SCSIResponse)
    case taskManagementResponse(ISCSIPDU.TaskManagementResponse)
    case loginResponse(ISCSIPDU.LoginResponse)
    case textResponse(ISCSIPDU.TextResponse)
    case dataIn(ISCSIPDU.DataIn)
    case logoutResponse(ISCSIPDU.LogoutResponse)
    case readyToTransfer(ISCSIPDU.ReadyToTransfer)
    case asyncMessage(ISCSIPDU.AsyncMessage)
    case reject(ISCSIPDU.Reject)

    /// Interprets a framed PDU; throws for unknown opcodes and malformed fields.
    public init(_ pdu: ISCSIPDU) throws(ISCSIPDUError) {
        switch pdu.header.opcode {
        case .nopOut: self = .nopOut(try .init(pdu))
        case .scsiCommand: self = .scsiCommand(try .init(pdu))
        case .taskManagementRequest: self = .taskManagementRequest(try .init(pdu))
        case .loginRequest: self = .loginRequest(try .init(pdu))
        case .textRequest: self = .textRequest(try .init(pdu))
        case .dataOut: self = .dataOut(try .init(pdu))
        case .logoutRequest: self = .logoutRequest(try .init(pdu))
        case .snackRequest: self = .snackRequest(try .init(pdu))
        case .nopIn: self = .nopIn(try .init(pdu))
        case .scsiResponse: self = .scsiResponse(try .init(pdu))
        case .taskManagementResponse: self = .taskManagementResponse(try .init(pdu))
        case .loginResponse: self = .loginResponse(try .init(pdu))
        case .textResponse: self = .textResponse(try .init(pdu))
        case .dataIn: self = .dataIn(try .init(pdu))
        case .logoutResponse: self = .logoutResponse(try .init(pdu))
        case .readyToTransfer: self = .readyToTransfer(try .init(pdu))
        case .asyncMessage: self = .asyncMessage(try .init(pdu))
        case .reject: self = .reject(try .init(pdu))
        default: throw ISCSIPDUError.unknownOpcode(pdu.header.opcode.rawValue)
        }
    }

    public var pdu: ISCSIPDU {
        switch self {
        case .nopOut(let m): m.pdu
        case .scsiCommand(let m): m.pdu
        case .taskManagementRequest(let m): m.pdu
        case .loginRequest(let m): m.pdu
        case .textRequest(let m): m.pdu
        case .dataOut(let m): m.pdu
        case .logoutRequest(let m): m.pdu
        case .snackRequest(let m): m.pdu
        case .nopIn(let m): m.pdu
        case .scsiResponse(let m): m.pdu
        case .taskManagementResponse(let m): m.pdu
        case .loginResponse(let m): m.pdu
        case .textResponse(let m): m.pdu
        case .dataIn(let m): m.pdu
        case .logoutResponse(let m): m.pdu
        case .readyToTransfer(let m): m.pdu
        case .asyncMessage(let m): m.pdu
        case .reject(let m): m.pdu
        }
    }
}
