// libFuzzer harness: the NBD server handshake state machine (option decoder included), then the transmission
// machine (request decoder, validator, write budget decisions, replies, drain) on whatever follows, fed in chunks
// whose sizes come from the input; device requests complete (or fail) in an order the input picks. Also the
// client-side option reply reader. Built by scripts/fuzz/run.sh.
import NIOCore

private let export = NBDExport(
    name: "iqn.2026-11.fuzz:disk/lun-0", description: "fuzz", size: 1 << 30,
    flags: [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .sendFastZero],
    minimumBlockSize: 512, preferredBlockSize: 4096, maximumPayload: 1 << 16)

/// mode bits: 0x80 option reply reader; 1 small option limit; 2 transmission only (no handshake); 4 structured
/// replies (with 2); 8 FORCEDTLS; 0x10 the write budget refuses arriving payloads; 0x20 a small in-flight window,
/// completions newest first; 0x40 the device fails requests.
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
    var pending = ByteBuffer()
    var offset = stream.startIndex
    var transmission: NBDTransmission?
    let window = mode & 0x20 != 0 ? (2, 8192) : (64, 1 << 20)
    func start(_ parameters: NBDTransmissionParameters) {
        transmission = NBDTransmission(parameters: parameters, maximumInFlight: window.0, maximumInFlightBytes: window.1)
    }
    if mode & 2 != 0 {
        // Transmission only (the kernel's socket): no handshake.
        start(NBDTransmissionParameters(export: export, structuredReplies: mode & 4 != 0))
    }
    var inFlight: [NBDRequestHeader] = []
    var scratch = ByteBuffer()
    loop: while offset < stream.endIndex {
        let end = min(offset + chunk, stream.endIndex)
        pending.writeBytes(stream[offset..<end])
        offset = end
        while transmission == nil {
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
                start(parameters)
            }
        }
        if var machine = transmission {
            defer { transmission = machine }
            // Until the buffer holds no more requests to take: take them, then the device answers.
            drive: while true {
                requests: while true {
                    let action: NBDTransmission.OnReceive
                    do { action = try machine.receive(&pending) } catch { break loop }
                    switch action {
                    case .noRequest:
                        break requests
                    case .payloadArriving(let buffered, let length):
                        precondition(buffered <= Int(length) && length <= export.maximumPayload)
                        if mode & 0x10 != 0 { machine.refusePayload(in: &pending) }
                        break requests
                    case .execute(let request):
                        if case .write(let header, let payload, _) = request {
                            precondition(payload.readableBytes == Int(header.length), "WRITE payload of \(payload.readableBytes) bytes")
                        }
                        inFlight.append(request.header)
                    case .reply(let reply):
                        scratch.writeNBDReply(reply)
                    case .drain(.closeNow):
                        precondition(inFlight.isEmpty, "closed with \(inFlight.count) requests in flight")
                        break loop
                    case .drain(.awaitInFlight):
                        precondition(!inFlight.isEmpty)
                    }
                    precondition(machine.inFlight == inFlight.count && inFlight.count <= window.0, "window \(machine.inFlight)")
                }
                if inFlight.isEmpty { break drive }
                // The device answers what is in flight, in the order the mode picks.
                while let header = mode & 0x20 != 0 ? inFlight.popLast() : (inFlight.isEmpty ? nil : inFlight.removeFirst()) {
                    let data = header.command == .read ? [ByteBuffer(repeating: 0, count: Int(header.length))] : []
                    let result: NBDDeviceResult =
                        mode & 0x40 != 0 ? .failure(errno: UInt32(header.cookie & 0xFF), message: "fuzz") : .success(data: data)
                    switch machine.deviceCompleted(header, result) {
                    case .reply(let reply):
                        precondition(reply.cookie == header.cookie)
                        scratch.writeNBDReply(reply)
                    case .replyAndClose(let reply):
                        precondition(reply.cookie == header.cookie && inFlight.isEmpty, "closed with requests in flight")
                        break loop
                    case .ignored:
                        preconditionFailure("a completion ignored while open")
                    }
                }
            }
            scratch.clear()
            // Memory bound: never more than one maximum payload + one chunk buffered.
            if pending.readableBytes > Int(export.maximumPayload) + NBDRequestHeader.size + chunk {
                fatalError("decoder buffered \(pending.readableBytes) bytes")
            }
        }
        pending.discardReadBytes()
    }
    return 0
}
