@testable import ISCSIClient
import ISCSIProtocol
import NIOCore

/// The target side of a scripted exchange: its sequence numbers and the PDUs it answers with. Shared by
/// the handler tests (FakeTargetHarness, over an EmbeddedChannel) and the state machine tests
/// (MachineDriver, no channel at all).
protocol ScriptedTarget: AnyObject {
    var statSN: SerialNumber { get set }
    var expCmdSN: SerialNumber { get set }
    var maxCmdSN: SerialNumber { get set }
    /// The operational keys of the final Login Response.
    var targetKeys: [(String, String)] { get }
}

extension ScriptedTarget {
    func stamp<T>(_ value: inout T, _ set: (inout T, SerialNumber, SerialNumber, SerialNumber) -> Void) {
        set(&value, statSN, expCmdSN, maxCmdSN)
    }

    /// The Login Response to `request`: its stages, TSIH 0x22, AuthMethod=None or `targetKeys`.
    func loginResponse(answering request: ISCSIPDU.LoginRequest) -> ISCSIMessage {
        var response = ISCSIPDU.LoginResponse()
        response.transit = request.transit
        response.currentStage = request.currentStage
        response.nextStage = request.nextStage
        response.isid = request.isid
        response.tsih = 0x22
        response.initiatorTaskTag = request.initiatorTaskTag
        response.statSN = statSN
        response.expCmdSN = expCmdSN
        response.maxCmdSN = maxCmdSN
        let keys = request.currentStage == 0 ? [("AuthMethod", "None")] : targetKeys
        response.data = TextKeyValues(keys).encoded()
        statSN += 1
        return .loginResponse(response)
    }

    func dataIn(itt: UInt32, dataSN: UInt32, offset: UInt32, data: ByteBuffer, status: UInt8? = nil) -> ISCSIMessage {
        var d = ISCSIPDU.DataIn()
        d.initiatorTaskTag = itt
        d.dataSN = SerialNumber(dataSN)
        d.bufferOffset = offset
        d.data = data
        d.expCmdSN = expCmdSN
        d.maxCmdSN = maxCmdSN
        if let status {
            d.final = true
            d.statusPresent = true
            d.status = status
            d.statSN = statSN
            statSN += 1
        }
        return .dataIn(d)
    }

    func response(itt: UInt32, status: UInt8 = 0, sense: [UInt8]? = nil) -> ISCSIMessage {
        var r = ISCSIPDU.SCSIResponse()
        r.initiatorTaskTag = itt
        r.status = status
        r.statSN = statSN
        statSN += 1
        r.expCmdSN = expCmdSN
        r.maxCmdSN = maxCmdSN
        if let sense {
            var data = ByteBuffer()
            data.writeInteger(UInt16(sense.count))
            data.writeBytes(sense)
            r.data = data
        }
        return .scsiResponse(r)
    }

    func r2t(itt: UInt32, ttt: UInt32, r2tSN: UInt32, offset: Int, length: Int) -> ISCSIMessage {
        var r2t = ISCSIPDU.ReadyToTransfer()
        r2t.initiatorTaskTag = itt
        r2t.targetTransferTag = ttt
        r2t.r2tSN = SerialNumber(r2tSN)
        r2t.bufferOffset = UInt32(offset)
        r2t.desiredDataTransferLength = UInt32(length)
        stamp(&r2t) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
        return .readyToTransfer(r2t)
    }

    func taskManagementResponse(_ response: UInt8) -> ISCSIMessage {
        var r = ISCSIPDU.TaskManagementResponse()
        r.response = response
        r.initiatorTaskTag = ConnectionStateMachine.taskManagementITT
        stamp(&r) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
        statSN += 1
        return .taskManagementResponse(r)
    }

    func asyncMessage(_ event: ISCSIPDU.AsyncMessage.Event, parameter2: UInt16 = 0) -> ISCSIMessage {
        var message = ISCSIPDU.AsyncMessage()
        message.event = event
        message.parameter2 = parameter2
        stamp(&message) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
        statSN += 1
        return .asyncMessage(message)
    }

    func logoutResponse(itt: UInt32, response code: UInt8 = 0) -> ISCSIMessage {
        var response = ISCSIPDU.LogoutResponse()
        response.initiatorTaskTag = itt
        response.response = code
        stamp(&response) { m, stat, exp, max in m.statSN = stat; m.expCmdSN = exp; m.maxCmdSN = max }
        statSN += 1
        return .logoutResponse(response)
    }
}

extension ISCSISessionConfiguration {
    /// The initiator side of the scripted exchanges: queue depth 8, TMF timeout 2 s, MaxRecvDataSegmentLength 64 KiB.
    static func scripted(noopOutInterval: TimeAmount?, commandTimeout: TimeAmount?) -> ISCSISessionConfiguration {
        var configuration = ISCSISessionConfiguration(
            host: "127.0.0.1", targetName: "iqn.2026-11.test:fake", initiatorName: "iqn.2026-11.test:init",
            queueDepth: 8, noopOutInterval: noopOutInterval
        )
        configuration.commandTimeout = commandTimeout
        configuration.taskManagementTimeout = .seconds(2)
        configuration.proposal.maxRecvDataSegmentLength = 65536
        return configuration
    }
}
