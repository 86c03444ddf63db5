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
    // Differential check: the receive path for PDUs spread over socket reads (frame + DataSegmentCollector,
    // fed in reads of `chunk` bytes) must give exactly the PDUs, and the error, that parse gives.
    let chunk = [1, 5, 48, 4096][Int(mode >> 5) & 3]
    let streamed = framedInReads(buffer, parser: parser, chunk: chunk, limit: 64)
    var parsed: [ISCSIPDU] = []
    var parseFailed = false
    var count = 0
    while count < 64 {
        count += 1
        let pdu: ISCSIPDU?
        do { pdu = try parser.parse(&buffer) } catch { parseFailed = true; break }
        guard let pdu else { break }
        parsed.append(pdu)
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
    precondition(streamed.pdus == parsed, "framing over reads of \(chunk) bytes disagrees with parse")
    precondition(streamed.failed == parseFailed, "framing over reads of \(chunk) bytes: error \(streamed.failed), parse: \(parseFailed)")
    return 0
}

/// What ISCSIConnectionHandler does with a stream cut into reads: the header segment group is gathered
/// (copied) until `frame` accepts it, then the data segment is collected as slices of the reads.
func framedInReads(_ stream: ByteBuffer, parser: PDUParser, chunk: Int, limit: Int) -> (pdus: [ISCSIPDU], failed: Bool) {
    var pending = stream
    var head = ByteBuffer()
    var collector: DataSegmentCollector?
    var pdus: [ISCSIPDU] = []
    do {
        while pending.readableBytes > 0, pdus.count < limit {
            var read = pending.readSlice(length: min(chunk, pending.readableBytes))!
            while read.readableBytes > 0, pdus.count < limit {
                if var gathering = collector {
                    collector = nil
                    if gathering.take(from: &read) {
                        var data = ByteBuffer()
                        for piece in try gathering.finish() { data.writeImmutableBuffer(piece) }
                        let frame = gathering.frame
                        pdus.append(ISCSIPDU(header: frame.header, additionalHeaderSegments: frame.additionalHeaderSegments, data: data))
                    } else {
                        collector = gathering
                    }
                    continue
                }
                var byte = read.readSlice(length: 1)!
                head.writeBuffer(&byte)
                if let frame = try parser.frame(head) {
                    head.moveReaderIndex(forwardBy: frame.headerGroupLength)
                    precondition(head.readableBytes == 0, "frame accepted a header group before its last byte")
                    head.clear()
                    var gathering = DataSegmentCollector(frame: frame)
                    var nothing = ByteBuffer()
                    if gathering.take(from: &nothing) {  // no data segment at all
                        pdus.append(ISCSIPDU(header: frame.header, additionalHeaderSegments: frame.additionalHeaderSegments))
                    } else {
                        collector = gathering
                    }
                }
            }
        }
    } catch {
        return (pdus, true)
    }
    return (pdus, false)
}
