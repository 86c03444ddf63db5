import ISCSIProtocol
import NIOCore
import SCSI

/// What `ConnectionStateMachine` asks its channel handler to do, in order. The machine queues these; the
/// handler takes them with `nextAction()` and carries them out (writes, promises, timers, closing). Cases
/// seen once per connection are `indirect`, so the ones of every command keep the enum small.
enum ConnectionAction {
    /// Write one PDU (not flushed).
    case send(OutboundPDU)
    /// Write the Data-Out PDUs of one burst (unsolicited, or answering an R2T), one after the other.
    case sendDataOut(DataOutBurst)
    /// Flush what was written.
    case flush
    /// Flush once at the end of this event-loop tick (commands submitted outside a read coalesce).
    case scheduleFlush
    /// Start (or restart) a timer; when it fires, call `timerFired(_:now:)`.
    case armTimer(ConnectionTimer, TimeAmount)
    case cancelTimer(ConnectionTimer)
    case cancelAllTimers
    /// The Login Phase is over: the framing uses the negotiated digests and MaxRecvDataSegmentLength from the
    /// next PDU on (RFC 7143 §13.1, §13.12).
    indirect case enterFullFeature(SessionParameters)
    case succeedCommand(EventLoopPromise<SCSICommandResult>, SCSICommandResult)
    case failCommand(EventLoopPromise<SCSICommandResult>, ISCSISessionError)
    indirect case completeLogin(EventLoopPromise<LoginOutcome>, Result<LoginOutcome, ISCSISessionError>)
    case completeText(EventLoopPromise<ByteBuffer>, Result<ByteBuffer, ISCSISessionError>)
    case completeLogout(EventLoopPromise<Void>, Result<Void, ISCSISessionError>)
    /// A second logout request while one is under way completes with the first.
    case cascadeLogout(from: EventLoopPromise<Void>, to: EventLoopPromise<Void>)
    /// Give the session the commands to re-issue on a new connection (RFC 7143 §7.1.4.4 session recovery).
    indirect case handBack(ConnectionLostSink, ISCSISessionError, [PendingCommand], time2Wait: TimeAmount?)
    /// Close the channel; `connectionClosed()` follows when it is down.
    case close
}

/// The machine's timers. Keep-alive and command timeouts tick periodically while commands flow.
enum ConnectionTimer: Int, CaseIterable {
    case login
    case logout
    case keepAlive
    case commandTimeout
}

extension TimeAmount {
    /// The period of a timer that watches two deadlines: the shorter one cut in `parts`, at least 10 ms.
    static func tickInterval(_ a: TimeAmount, _ b: TimeAmount, parts: Int64) -> TimeAmount {
        .nanoseconds(max(Swift.min(a.nanoseconds, b.nanoseconds) / parts, 10_000_000))
    }
}

/// One PDU to write: the header (lengths are filled in by the encoder), the AHS and the data segment,
/// which goes out as a slice of the caller's buffer.
struct OutboundPDU {
    var header: BasicHeaderSegment
    var additionalHeaderSegments: ByteBuffer?
    var data: ByteBuffer?

    init(header: BasicHeaderSegment, additionalHeaderSegments: ByteBuffer? = nil, data: ByteBuffer? = nil) {
        self.header = header
        self.additionalHeaderSegments = additionalHeaderSegments
        self.data = data
    }

    init(_ pdu: ISCSIPDU) {
        self.init(header: pdu.header, data: pdu.data)
    }
}

/// The Data-Out PDUs answering one range of a write: an R2T, or the unsolicited burst with TTT
/// 0xffffffff (RFC 7143 §11.7, §13.10). Built one at a time as the handler writes them: no array per burst,
/// and every payload is a slice of the command's buffer.
struct DataOutBurst: IteratorProtocol {
    let initiatorTaskTag: UInt32
    let lun: UInt64
    /// ExpStatSN when the burst was due; every PDU of the burst carries it.
    let expStatSN: SerialNumber
    let payload: ByteBuffer
    /// The segments not written yet.
    var segments: DataOutSequence

    mutating func next() -> OutboundPDU? {
        guard let segment = segments.next() else { return nil }
        var out = ISCSIPDU.DataOut()
        out.final = segment.final
        out.lun = lun
        out.initiatorTaskTag = initiatorTaskTag
        out.targetTransferTag = segment.targetTransferTag
        out.expStatSN = expStatSN
        out.dataSN = SerialNumber(segment.dataSN)
        out.bufferOffset = UInt32(segment.bufferOffset)
        let slice = payload.getSlice(at: payload.readerIndex + segment.bufferOffset, length: segment.length)
        return OutboundPDU(header: out.header, data: slice)
    }
}
