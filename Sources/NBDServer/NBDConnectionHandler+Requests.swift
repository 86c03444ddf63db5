import BlockBackend
import NBDProtocol
import NIOCore

// MARK: - Requests

extension NBDConnectionHandler {
    /// Asks the device; the reply comes from the machine once the device answered. With an observer, the
    /// request's start is stamped here (one clock read) and its end in `completed`.
    func execute(_ request: NBDDeviceRequest, context: ChannelHandlerContext) {
        // A WRITE over the payload budget never reaches the device: a refusal, not a request in flight.
        if case .write(let header, let payload, _) = request, !admitPayload(payload.readableBytes) {
            observer?.requestRefused()
            finish(transmission?.refuseWrite(header), context: context)
            return
        }
        let start: UInt64
        if let observer {
            observer.requestStarted()
            start = NIODeadline.now().uptimeNanoseconds
        } else {
            start = 0
        }
        switch request {
        case .read(let header):
            track(device.readSegments(offset: header.offset, length: header.length), header, start, context: context)
        case .write(let header, let payload, let flags):
            let write = device.write(offset: header.offset, data: payload, flags: BlockWriteFlags(flags))
            if let payloadBudget {
                let reserved = payload.readableBytes
                write.whenComplete { _ in payloadBudget.release(reserved) }
            }
            track(write, header, start, context: context)
        case .flush(let header):
            track(device.flush(), header, start, context: context)
        case .trim(let header, let flags):
            let trim = device.trim(offset: header.offset, length: header.length, flags: BlockWriteFlags(flags))
            track(trim, header, start, context: context)
        case .writeZeroes(let header, let flags):
            let zeroes = device.writeZeroes(offset: header.offset, length: header.length, flags: BlockWriteFlags(flags))
            track(zeroes, header, start, context: context)
        }
    }

    /// A READ's completion, on this channel's loop.
    private func track(
        _ future: EventLoopFuture<[ByteBuffer]>, _ header: NBDRequestHeader, _ start: UInt64, context: ChannelHandlerContext
    ) {
        future.hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
            self.completed(header, result.map { .success(data: $0) }, start, context: context)
        }
    }

    /// Any other request's completion, on this channel's loop.
    private func track(
        _ future: EventLoopFuture<Void>, _ header: NBDRequestHeader, _ start: UInt64, context: ChannelHandlerContext
    ) {
        future.hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
            self.completed(header, result.map { .success(data: []) }, start, context: context)
        }
    }

    /// Tells the observer how a started request ended.
    private func observe(_ header: NBDRequestHeader, succeeded: Bool, _ start: UInt64) {
        guard let observer else { return }
        let bytes = succeeded && (header.command == .read || header.command == .write) ? header.length : 0
        observer.requestFinished(
            header.command, bytes: bytes, start: start, end: NIODeadline.now().uptimeNanoseconds, succeeded: succeeded)
    }

    private func completed(
        _ header: NBDRequestHeader, _ result: Result<NBDDeviceResult, any Error>, _ start: UInt64,
        context: ChannelHandlerContext
    ) {
        guard case .transmission = phase else {
            observe(header, succeeded: (try? result.get()) != nil, start)
            return
        }
        let outcome: NBDDeviceResult
        switch result {
        case .success(let success):
            outcome = success
        case .failure(let error):
            logger.debug(
                "request failed",
                metadata: ["nbd.cookie": "\(header.cookie)", "nbd.command": "\(header.command)", "error": "\(error)"])
            // BlockDevice contract: errors are BlockDeviceError (an errno); anything else is an IO error.
            outcome =
                if let error = error as? BlockDeviceError {
                    .failure(errno: error.code.rawValue, message: error.message)
                } else {
                    .failure(errno: nil, message: "\(error)")
                }
        }
        let action = transmission?.deviceCompleted(header, outcome)
        if observer != nil {
            // What the client is told decides: a READ whose data came back short is answered EIO.
            observe(header, succeeded: action?.reply.map { $0.rejection == nil } ?? ((try? result.get()) != nil), start)
        }
        finish(action, context: context)
    }

    func finish(_ action: NBDTransmission.OnCompletion?, context: ChannelHandlerContext) {
        switch action {
        case .reply(let reply):
            send(reply, context: context)
            resumeIfPossible(context: context)
        case .replyAndClose(let reply):
            send(reply, context: context)
            closeDrained(context: context)
        case .ignored, nil:
            break
        }
    }
}
