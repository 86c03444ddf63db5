// libFuzzer harness: iSCSI PDU framing (PDUParser) and message decoding (ISCSIMessage), plus the text
// key=value decoder and SendTargets on the data segments. Built by scripts/fuzz/run.sh together with the
// ISCSIProtocol sources; not part of the SwiftPM package.
import NIOCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let input = UnsafeBufferPointer(start: data, count: size)
    // First byte picks the parser settings, the rest is the stream.
    let mode = input[0]
    let digests = DigestSettings(header: mode & 1 != 0, data: mode & 2 != 0)
    let direction: PDUDirection? = mode & 4 != 0 ? .targetToInitiator : (mode & 8 != 0 ? .initiatorToTarget : nil)
    let limit = mode & 16 != 0 ? 512 : 262_144
    let parser = PDUParser(digests: digests, maxDataSegmentLength: limit, direction: direction)
    var buffer = ByteBuffer(bytes: input.dropFirst())
    var count = 0
    while count < 64 {
        count += 1
        let pdu: ISCSIPDU?
        do { pdu = try parser.parse(&buffer) } catch { break }
        guard let pdu else { break }
        if let message = try? ISCSIMessage(pdu) {
            // Round trip what decoded: the encoder must accept every decoded message.
            var out = ByteBuffer()
            PDUEncoder(digests: digests).encode(message.pdu, into: &out)
        }
        if pdu.data.readableBytes > 0 {
            _ = try? TextKeyValues.decode(pdu.data)
            _ = try? SendTargets.parse(pdu.data)
        }
    }
    return 0
}
