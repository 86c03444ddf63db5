import NIOCore

/// Asks a kernel connection to stop at a request boundary, so that its socket can go on in another process
/// (a restarting daemon takes it from systemd's fd store): reads are withheld, requests already read are
/// served and answered, a request the last read cut short is completed with exactly the bytes it lacks
/// (`readExactly`, on the socket's other descriptor, while the channel does not read), and once nothing is
/// buffered, in flight or unsent the channel is closed in that same event-loop turn. `done` is true then;
/// false when the stream could not be left at a boundary (the socket must not be reused).
struct NBDPauseEvent: Sendable {
    var readExactly: @Sendable (Int) -> ByteBuffer?
    var done: EventLoopPromise<Bool>
}

extension NBDConnectionHandler {
    /// One step towards the boundary; called again by every event that can move it (a read, a completion,
    /// writability, a flushed reply).
    func continuePause(context: ChannelHandlerContext) {
        guard let event = pause else { return }
        guard case .transmission = phase, transmission != nil else {
            pause = nil
            event.done.succeed(false)
            return
        }
        if cumulation != nil, canTakeRequest(context: context) { processInbound(context: context) }
        // Read after taking requests (a copy taken before would be stale).
        guard case .transmission = phase, let transmission else { return }  // closed meanwhile: channelInactive answers
        // The tail of the buffer is one request cut short (everything before it was taken), unless the window
        // or the peer's reading holds requests back: then completions bring us back here.
        if transmission.isMidMessage(buffered: bufferedInboundBytes) {
            guard canTakeRequest(context: context) else { return }
            let missing = transmission.bytesNeeded(given: bufferedInboundBytes)
            guard missing > 0, let rest = event.readExactly(missing), rest.readableBytes == missing else {
                logger.warning("cannot stop at a request boundary: the rest of a request did not arrive", metadata: ["nbd.missing": "\(missing)"])
                pause = nil
                event.done.succeed(false)
                return
            }
            append(rest, context: context)
            continuePause(context: context)
            return
        }
        guard bufferedInboundBytes == 0, transmission.inFlight == 0 else { return }
        // Every reply is sent once this empty write completes (writes complete in order).
        if let out = smallReplies, out.readableBytes > 0 {
            smallReplies = nil
            context.write(wrapOutboundOut(out), promise: nil)
        }
        needsFlush = false
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0))).assumeIsolated().whenComplete { result in
            guard let event = self.pause, case .transmission = self.phase else { return }
            guard case .success = result else {
                self.pause = nil
                event.done.succeed(false)
                return
            }
            guard self.bufferedInboundBytes == 0, self.transmission?.inFlight == 0,
                  self.transmission?.isMidMessage(buffered: 0) == false, !self.needsFlush else {
                // A read that was already asked for brought more requests: serve them first.
                self.continuePause(context: context)
                return
            }
            // Closed in this turn: no read can take bytes off the socket after the boundary.
            self.pause = nil
            self.markClosed()
            context.close(promise: nil)
            event.done.succeed(true)
        }
    }
}
