import NBDProtocol
import NIOCore
import Testing

/// FORCEDTLS mode of the server handshake (nbd-proto.md "TLS support", "FORCEDTLS mode").
@Suite struct NBDTLSHandshakeTests {
    func forcedTLS() throws -> NBDServerHandshake {
        var h = NBDServerHandshake(export: testExport, tlsRequired: true)
        var b = ByteBuffer()
        b.writeInteger(NBDClientFlags([.fixedNewstyle, .noZeroes]).rawValue)
        #expect(try h.receive(&b) == nil)
        return h
    }

    @Test func everyOptionButStartTLSAndAbortIsRefusedWithTLSReqd() throws {
        for option in [NBDOption.go, .info, .list, .structuredReply, .setMetaContext, .listMetaContext, NBDOption(rawValue: 999)] {
            var h = try forcedTLS()
            var b = ByteBuffer.option(option, option == .go || option == .info ? .infoData(name: "") : ByteBuffer())
            let r = replies(try h.receive(&b))
            #expect(r.map(\.type) == [.errTLSReqd], "\(option)")
            #expect(!h.isFinished)
        }
    }

    @Test func exportNameBeforeStartTLSIsAHardDisconnect() throws {
        var h = try forcedTLS()
        var b = ByteBuffer.option(.exportName)
        #expect(throws: NBDProtocolError(.tlsRequired, "")) { try h.receive(&b) }
    }

    @Test func abortBeforeStartTLSIsAcknowledged() throws {
        var h = try forcedTLS()
        var b = ByteBuffer.option(.abort)
        #expect(try h.receive(&b) == .sendAndClose([.optionReply(.ack(.abort))]))
    }

    @Test func startTLSIsAcknowledgedThenGoWorksAndASecondStartTLSIsInvalid() throws {
        var h = try forcedTLS()
        var b = ByteBuffer.option(.startTLS)
        #expect(try h.receive(&b) == .sendAndStartTLS([.optionReply(.ack(.startTLS))]))
        var again = ByteBuffer.option(.startTLS)
        #expect(replies(try h.receive(&again)).map(\.type) == [.errInvalid])
        var go = ByteBuffer.option(.go, .infoData(name: ""))
        guard case .sendAndStartTransmission(let messages, _)? = try h.receive(&go) else {
            Issue.record("GO after STARTTLS did not start transmission")
            return
        }
        #expect(messages.last == .optionReply(.ack(.go)))
    }

    @Test func startTLSWithDataIsInvalid() throws {
        var h = try forcedTLS()
        var data = ByteBuffer()
        data.writeInteger(UInt32(1))
        var b = ByteBuffer.option(.startTLS, data)
        #expect(replies(try h.receive(&b)).map(\.type) == [.errInvalid])
    }

    @Test func withoutTLSConfiguredStartTLSIsRefusedByPolicyAndNothingSaysTLSReqd() throws {
        var h = try haggling()
        var b = ByteBuffer.option(.startTLS)
        #expect(replies(try h.receive(&b)).map(\.type) == [.errPolicy])
        var go = ByteBuffer.option(.go, .infoData(name: ""))
        #expect(!replies(try h.receive(&go)).map(\.type).contains(.errTLSReqd))
    }
}
