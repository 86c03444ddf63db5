// libFuzzer harness: the NBD server handshake state machine (option decoder included), then the
// transmission-phase request decoder and validator on whatever follows, fed in chunks whose sizes come
// from the input. Also the client-side option reply reader. Built by scripts/fuzz/run.sh.
import NIOCore

private let export = NBDExport(
    name: "iqn.2026-11.fuzz:disk/lun-0", description: "fuzz", size: 1 << 30,
    flags: [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .sendFastZero],
    minimumBlockSize: 512, preferredBlockSize: 4096, maximumPayload: 1 << 16)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 2 else { return 0 }
    let input = UnsafeBufferPointer(start: data, count: size)
    let chunk = Int(input[0]) + 1
    let mode = input[1]
    let stream = input.dropFirst(2)

    if mode & 0x80 != 0 {
        // Client side: option replies as a server would send them.
        var buffer = ByteBuffer(bytes: stream)
        while let _ = try? buffer.readNBDOptionReply(maximumLength: 1 << 16) {}
        return 0
    }

    var handshake = NBDServerHandshake(
        export: export, maximumOptionLength: mode & 1 != 0 ? 256 : 64 * 1024, tlsRequired: mode & 8 != 0)
    var transmission: NBDTransmissionParameters?
    var pending = ByteBuffer()
    var offset = stream.startIndex
    var decoder = NBDRequestDecoder(maximumBufferedPayload: export.maximumPayload)
    var validator: NBDRequestValidator?
    if mode & 2 != 0 {
        // Transmission only (the kernel's socket): no handshake.
        transmission = NBDTransmissionParameters(export: export, structuredReplies: mode & 4 != 0)
        validator = NBDRequestValidator(parameters: transmission!)
    }
    loop: while offset < stream.endIndex {
        let end = min(offset + chunk, stream.endIndex)
        pending.writeBytes(stream[offset..<end])
        offset = end
        if validator == nil {
            while true {
                let action: NBDHandshakeAction?
                do { action = try handshake.receive(&pending) } catch { break loop }
                guard let action else { break }
                var out = ByteBuffer()
                switch action {
                case .send(let messages), .sendAndStartTLS(let messages):
                    for m in messages { out.writeNBDHandshakeMessage(m) }
                case .sendAndClose(let messages):
                    for m in messages { out.writeNBDHandshakeMessage(m) }
                    break loop
                case .sendAndStartTransmission(let messages, let parameters):
                    for m in messages { out.writeNBDHandshakeMessage(m) }
                    transmission = parameters
                    validator = NBDRequestValidator(parameters: parameters)
                    decoder = NBDRequestDecoder(maximumBufferedPayload: parameters.export.maximumPayload)
                }
                if validator != nil { break }
            }
        }
        if let validator {
            while true {
                let request: NBDRequest?
                do { request = try decoder.decode(&pending) } catch { break loop }
                guard let request else { break }
                _ = validator.validate(request.header)
                if let payload = request.payload, payload.readableBytes != Int(request.header.length) {
                    fatalError("WRITE payload of \(payload.readableBytes) bytes for length \(request.header.length)")
                }
            }
            // Memory bound: never more than one maximum payload + one chunk buffered.
            if pending.readableBytes > Int(export.maximumPayload) + NBDRequestHeader.size + chunk {
                fatalError("decoder buffered \(pending.readableBytes) bytes")
            }
        }
        pending.discardReadBytes()
    }
    return 0
}
