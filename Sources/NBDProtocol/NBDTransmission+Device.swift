import NIOCore

// What the transmission machine asks of a block device and what it is told back, in NBDProtocol's own types:
// the connection translates them to its device's calls (NBDProtocol does not know BlockBackend).

extension NBDCommandFlags {
    /// Of a validated request's flags (so only flags valid for `command` are set), those its device request
    /// carries, the ones that ask something of the device (nbd-proto.md "Command flags"):
    /// - WRITE, TRIM: FUA ("MUST NOT send its reply ... until all write operations ... persisted").
    /// - WRITE_ZEROES: FUA, NO_HOLE, FAST_ZERO.
    /// - READ, FLUSH, CACHE: none. FUA writes no data there ("the server MAY ignore this bit"), a FLUSH
    ///   persists everything anyway, and DF is honoured by construction (a READ gets one data chunk).
    public func deviceFlags(for command: NBDCommand) -> NBDCommandFlags {
        switch command {
        case .write, .trim: intersection(.fua)
        case .writeZeroes: intersection([.fua, .noHole, .fastZero])
        default: []
        }
    }
}

/// One request for the block device, made from an admitted NBD request; its flags are those of
/// `NBDCommandFlags.deviceFlags(for:)`. The header comes along so that the completion
/// (`NBDTransmission.deviceCompleted`) can be matched to its request.
public enum NBDDeviceRequest: Hashable, Sendable {
    case read(NBDRequestHeader)
    /// `payload` is the zero-copy slice of the receive buffer.
    case write(NBDRequestHeader, payload: ByteBuffer, flags: NBDCommandFlags)
    case flush(NBDRequestHeader)
    case trim(NBDRequestHeader, flags: NBDCommandFlags)
    case writeZeroes(NBDRequestHeader, flags: NBDCommandFlags)

    public var header: NBDRequestHeader {
        switch self {
        case .read(let header), .write(let header, _, _), .flush(let header), .trim(let header, _),
            .writeZeroes(let header, _):
            header
        }
    }
}

/// How the block device finished a request.
public enum NBDDeviceResult: Hashable, Sendable {
    /// Done. For a READ, `data` holds the bytes read as consecutive pieces (sent as they are, no copy); empty
    /// for every other request.
    case success(data: [ByteBuffer])
    /// Failed with an errno value; `nil` for a failure that carries none (answered EIO).
    case failure(errno: UInt32?, message: String)
}

// MARK: - errno → NBD error

extension NBDErrorCode {
    /// Maps an errno to one of the values the spec allows on the wire (nbd-proto.md "Error values": "SHOULD
    /// map the EDQUOT and EFBIG errors to NBD_ENOSPC"; EROFS and EACCES are the write refusals EPERM stands
    /// for; anything else is EIO).
    public init(errno: UInt32) {
        switch errno {
        case 1, 5, 12, 22, 28, 75, 95, 108: self.init(rawValue: errno)
        case 122 /* EDQUOT */, 27 /* EFBIG */: self = .enospc
        case 30 /* EROFS */, 13 /* EACCES */: self = .eperm
        default: self = .eio
        }
    }
}
