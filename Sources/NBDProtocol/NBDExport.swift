/// What the server offers: one export, reachable as the default export (empty name) and under its
/// canonical descriptive `name` (listed by NBD_OPT_LIST).
public struct NBDExport: Hashable, Sendable {
    /// Canonical name (e.g. target IQN + LUN). NBD_OPT_LIST shows it; GO/INFO/EXPORT_NAME accept it.
    public var name: String
    /// Human-readable description (NBD_INFO_DESCRIPTION and the details of NBD_REP_SERVER).
    public var description: String
    /// Size in bytes.
    public var size: UInt64
    /// Feature flags of the export. `hasFlags` and `sendDF` are added per connection
    /// (see `NBDTransmissionParameters.transmissionFlags`).
    public var flags: NBDTransmissionFlags
    /// nbd-proto.md "Size constraints": the minimum block size; a power of 2, at most 64 KiB.
    public var minimumBlockSize: UInt32
    /// Preferred block size: a power of 2, at least max(minimum, 512).
    public var preferredBlockSize: UInt32
    /// Maximum payload of one READ or WRITE, at least the preferred block size.
    public var maximumPayload: UInt32

    /// Creates an export description; block sizes are normalised to satisfy nbd-proto.md "Size constraints"
    /// (minimum a power of 2 in 1...65536, preferred a power of 2 ≥ max(minimum, 512), maximum ≥ preferred).
    public init(
        name: String, description: String, size: UInt64, flags: NBDTransmissionFlags,
        minimumBlockSize: UInt32, preferredBlockSize: UInt32, maximumPayload: UInt32
    ) {
        self.name = name
        self.description = description
        self.size = size
        self.flags = flags
        let minimum = Self.powerOfTwo(atLeast: min(max(minimumBlockSize, 1), 65536))
        let preferred = Self.powerOfTwo(atLeast: max(preferredBlockSize, minimum, 512))
        self.minimumBlockSize = minimum
        self.preferredBlockSize = preferred
        // Round the maximum down to a multiple of the minimum so a maximal aligned request is allowed.
        let maximum = max(maximumPayload, preferred)
        self.maximumPayload = maximum - maximum % minimum
    }

    /// Whether a client-supplied export name designates this export: the empty (default) name or the
    /// canonical name (nbd-proto.md `NBD_OPT_EXPORT_NAME`: an empty name is the default export).
    public func isNamed(_ requested: String) -> Bool {
        requested.isEmpty || requested == name
    }

    private static func powerOfTwo(atLeast value: UInt32) -> UInt32 {
        var p: UInt32 = 1
        while p < value && p < (1 << 31) { p <<= 1 }
        return p
    }
}

/// What was agreed for the transmission phase of one connection.
public struct NBDTransmissionParameters: Hashable, Sendable {
    public var export: NBDExport
    /// NBD_OPT_STRUCTURED_REPLY was acknowledged: READ replies are structured.
    public var structuredReplies: Bool

    public init(export: NBDExport, structuredReplies: Bool) {
        self.export = export
        self.structuredReplies = structuredReplies
    }

    /// The flags sent in NBD_INFO_EXPORT / the EXPORT_NAME reply. nbd-proto.md "Transmission flags":
    /// `NBD_FLAG_HAS_FLAGS` MUST always be 1; `NBD_FLAG_SEND_DF` is set exactly when structured replies are
    /// negotiated (we always answer a READ with a single content chunk, so DF is trivially honoured);
    /// `NBD_FLAG_SEND_FAST_ZERO` MUST be 0 when `NBD_FLAG_SEND_WRITE_ZEROES` is not set.
    public var transmissionFlags: NBDTransmissionFlags {
        var flags = export.flags
        flags.insert(.hasFlags)
        flags.remove(.sendDF)
        flags.remove(.sendCache)
        flags.remove(.sendResize)
        if structuredReplies { flags.insert(.sendDF) }
        if !flags.contains(.sendWriteZeroes) { flags.remove(.sendFastZero) }
        if flags.contains(.readOnly) {
            // Write-type features are pointless on a read-only export; keep flush (harmless) only.
            flags.subtract([.sendTrim, .sendWriteZeroes, .sendFastZero])
        }
        return flags
    }
}
