/// Why a request fails (refused by validation or the write budget, or failed by the device): the error value
/// to send and a message for structured error chunks and logs.
public struct NBDRequestRejection: Hashable, Sendable, CustomStringConvertible {
    public var code: NBDErrorCode
    public var message: String

    public init(_ code: NBDErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}

/// Pure validation of transmission-phase requests against what was negotiated, so that a `BlockDevice`
/// only ever sees valid, aligned, in-range requests. Every refusal is an error reply; the connection
/// stays up (nbd-proto.md: the server "SHOULD NOT disconnect" on these).
///
/// Checks, in order:
/// 1. Unknown command (including NBD_CMD_BLOCK_STATUS, since no metadata context is ever selected, and
///    NBD_CMD_RESIZE) → `EINVAL` (nbd-proto.md "Error values": "SHOULD return NBD_EINVAL if it receives an
///    unknown command").
/// 2. A flag not valid for the command → `EINVAL` ("SHOULD return NBD_EINVAL if it receives an unknown command
///    flag ... or a flag not explicitly documented as applicable"). FUA is accepted on every command when
///    `NBD_FLAG_SEND_FUA` was advertised ("the server MUST accept all commands with this bit set");
///    NO_HOLE on WRITE_ZEROES; FAST_ZERO on WRITE_ZEROES only when `NBD_FLAG_SEND_FAST_ZERO` was advertised;
///    DF on READ only with structured replies (`NBD_FLAG_SEND_DF`).
/// 3. WRITE, TRIM, WRITE_ZEROES on a read-only export → `EPERM` ("SHOULD return NBD_EPERM if it receives a
///    write or trim request on a read-only export").
/// 4. FLUSH, TRIM, WRITE_ZEROES not advertised → `EINVAL`.
/// 5. FLUSH with a nonzero offset or length → `EINVAL` (they "MUST be set to all-zero").
/// 6. READ or WRITE longer than the maximum payload → `EINVAL`; for READ with structured replies `EOVERFLOW`
///    (nbd-proto.md `NBD_CMD_READ`: "the server is also permitted to reject large read requests up front with
///    NBD_EOVERFLOW"). A WRITE whose payload was discarded always lands here. TRIM and WRITE_ZEROES carry
///    no payload, so their length is only bounded by the export size (the device splits as it needs).
/// 7. Policy: offset and length not multiples of the advertised minimum block size → `EINVAL` (nbd-proto.md
///    "Size constraints": the server "SHOULD report an NBD_EINVAL error if the client's request is not
///    aligned to advertised minimum block size boundaries"). We always advertise the device's logical block
///    size as the minimum and never do read-modify-write, even for clients that did not ask for
///    NBD_INFO_BLOCK_SIZE (they get clean errors, as the spec requires).
/// 8. offset + length overflowing 64 bits or beyond the export size → `ENOSPC` for WRITE and WRITE_ZEROES,
///    `EINVAL` for the others ("Error values": ENOSPC "if it receives a write request including one or more
///    sectors beyond the size of the device", EINVAL for read or trim).
/// 9. Length 0 (READ, WRITE, TRIM, WRITE_ZEROES, CACHE): the spec leaves it unspecified ("SHOULD NOT
///    disconnect"); it passes validation and the server answers success without touching the device.
///
/// NBD_CMD_CACHE is accepted (range checked, FUA only) and answered as a no-op success although
/// `NBD_FLAG_SEND_CACHE` is not advertised: clients exist that send it unadvertised.
/// NBD_CMD_DISC is always accepted (it has no reply).
public struct NBDRequestValidator: Hashable, Sendable {
    public private(set) var size: UInt64
    public let flags: NBDTransmissionFlags
    public let structuredReplies: Bool
    public let minimumBlockSize: UInt32
    public let maximumPayload: UInt32

    public init(parameters: NBDTransmissionParameters) {
        self.size = parameters.export.size
        self.flags = parameters.transmissionFlags
        self.structuredReplies = parameters.structuredReplies
        self.minimumBlockSize = parameters.export.minimumBlockSize
        self.maximumPayload = parameters.export.maximumPayload
    }

    /// The export grew while the connection stays (online resize of a kernel device, where the kernel is
    /// told the new size with NBD_SET_SIZE). Never shrinks: requests the client may already have queued
    /// for the old range stay valid.
    public mutating func grow(to newSize: UInt64) {
        if newSize > size { size = newSize }
    }

    /// Returns `nil` when the request may be executed, otherwise the error to reply with.
    @inlinable
    public func validate(_ header: NBDRequestHeader) -> NBDRequestRejection? {
        let command = header.command
        // 1 + 2: known command and the flags it accepts.
        var allowed: NBDCommandFlags = flags.contains(.sendFUA) ? .fua : []
        switch command {
        case .read:
            if flags.contains(.sendDF) { allowed.insert(.dontFragment) }
        case .writeZeroes:
            allowed.insert(.noHole)
            if flags.contains(.sendFastZero) { allowed.insert(.fastZero) }
        case .write, .flush, .trim, .cache:
            break
        case .disconnect:
            return nil
        default:
            return Self.reject(.einval, "unknown command \(command)")
        }
        if !header.flags.isSubset(of: allowed) {
            return Self.reject(.einval, "flags 0x\(String(header.flags.rawValue, radix: 16)) invalid for \(command)")
        }
        // 3 + 4: write permission and advertised support.
        switch command {
        case .write, .trim, .writeZeroes:
            if flags.contains(.readOnly) { return Self.reject(.eperm, "export is read-only") }
            if command == .trim && !flags.contains(.sendTrim) { return Self.reject(.einval, "trim not supported") }
            if command == .writeZeroes && !flags.contains(.sendWriteZeroes) {
                return Self.reject(.einval, "write zeroes not supported")
            }
        case .flush:
            if !flags.contains(.sendFlush) { return Self.reject(.einval, "flush not supported") }
            // 5.
            if header.offset != 0 || header.length != 0 { return Self.reject(.einval, "flush offset and length must be 0") }
            return nil
        default:
            break
        }
        // 6: payload bound.
        if header.length > maximumPayload && (command == .read || command == .write) {
            if command == .read && structuredReplies {
                return Self.reject(.eoverflow, "read length \(header.length) exceeds maximum payload \(maximumPayload)")
            }
            return Self.reject(.einval, "length \(header.length) exceeds maximum payload \(maximumPayload)")
        }
        // 7: alignment (minimumBlockSize is a power of 2).
        let mask = UInt64(minimumBlockSize - 1)
        if (header.offset | UInt64(header.length)) & mask != 0 {
            return Self.reject(.einval, "request not aligned to \(minimumBlockSize) bytes")
        }
        // 8: range.
        let (end, overflow) = header.offset.addingReportingOverflow(UInt64(header.length))
        if overflow || end > size {
            let code: NBDErrorCode = (command == .write || command == .writeZeroes) ? .enospc : .einval
            return Self.reject(code, "range \(header.offset)+\(header.length) beyond export size \(size)")
        }
        return nil
    }

    @usableFromInline
    @inline(never)
    static func reject(_ code: NBDErrorCode, _ message: String) -> NBDRequestRejection {
        NBDRequestRejection(code, message)
    }
}
