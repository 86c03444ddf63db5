// libFuzzer harness: iSNS PDU framing, message reassembly, attribute/response/request parsing and the
// DevAttrQry response interpretation. Built by scripts/fuzz/run.sh with the ISNS codec sources.
import NIOCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeBufferPointer(start: data, count: size)
    var buffer = ByteBuffer(bytes: input)
    var assembler = ISNSMessageAssembler(maximumMessageSize: 1 << 16)
    var count = 0
    while count < 64 {
        count += 1
        let pdu: (header: ISNSPDUHeader, payload: ByteBuffer)?
        do { pdu = try buffer.readISNSPDU() } catch { break }
        guard let pdu else { break }
        let message: ISNSMessage?
        do { message = try assembler.receive(header: pdu.header, payload: pdu.payload) } catch { break }
        guard let message else { continue }
        if let response = try? ISNSResponse(parsing: message) {
            _ = try? ISNSInitiatorMessages.targets(from: response)
            for a in response.messageKey + response.operating {
                _ = try? a.stringValue()
                _ = try? a.uint32Value()
                _ = try? a.ipAddressValue()
            }
        }
        _ = try? ISNSRequest(parsing: message)
    }
    return 0
}
