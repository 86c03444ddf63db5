import NIOCore

/// Parameter data or sense data from a target that cannot be decoded: too short, internally
/// inconsistent, or of an unexpected format. Never thrown for our own bugs; always for peer data.
public struct SCSIParseError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong. Open: new kinds may be added.
    public struct Kind: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Fewer bytes than the structure needs (see `requiredLength`).
        public static let truncated = Kind(rawValue: 1)
        /// A length or count field contradicts another field or the data.
        public static let inconsistent = Kind(rawValue: 2)
        /// A format or response code we do not understand.
        public static let unsupportedFormat = Kind(rawValue: 3)
        /// A VPD page or mode page other than the one asked for.
        public static let unexpectedPage = Kind(rawValue: 4)
        /// A field holds a value that cannot be right (e.g. a zero block length).
        public static let invalidValue = Kind(rawValue: 5)

        public var description: String {
            switch self {
            case .truncated: "truncated"
            case .inconsistent: "inconsistent"
            case .unsupportedFormat: "unsupported format"
            case .unexpectedPage: "unexpected page"
            case .invalidValue: "invalid value"
            default: "kind \(rawValue)"
            }
        }
    }

    public var kind: Kind
    /// What was being parsed, e.g. "standard INQUIRY data".
    public var context: String
    public var detail: String
    /// For `.truncated`: how many bytes the complete structure has, when the data says so. A caller
    /// that asked with a smaller allocation length can re-issue the command with this length.
    public var requiredLength: Int?

    public init(_ kind: Kind, _ context: String, _ detail: String, requiredLength: Int? = nil) {
        self.kind = kind
        self.context = context
        self.detail = detail
        self.requiredLength = requiredLength
    }

    public var description: String { "\(context): \(kind): \(detail)" }

    @inline(never)
    static func truncated(_ context: String, have: Int, need: Int, total: Int? = nil) -> SCSIParseError {
        SCSIParseError(.truncated, context, "\(have) bytes, need \(need)", requiredLength: total)
    }
}

// MARK: - Bounds-checked big-endian reads relative to the reader index

extension ByteBuffer {
    /// Big-endian integer at `offset` bytes past the reader index, or nil when out of bounds.
    @inlinable
    func scsiInteger<T: FixedWidthInteger>(at offset: Int, as: T.Type = T.self) -> T? {
        guard offset >= 0, offset + MemoryLayout<T>.size <= readableBytes else { return nil }
        return getInteger(at: readerIndex + offset, endianness: .big, as: T.self)
    }

    /// `count` bytes at `offset` past the reader index, or nil when out of bounds.
    func scsiBytes(at offset: Int, count: Int) -> [UInt8]? {
        guard offset >= 0, count >= 0, offset + count <= readableBytes else { return nil }
        return getBytes(at: readerIndex + offset, length: count)
    }

    /// Requires at least `count` readable bytes.
    func scsiRequire(_ count: Int, _ context: String, total: Int? = nil) throws(SCSIParseError) {
        if readableBytes < count {
            throw SCSIParseError.truncated(context, have: readableBytes, need: count, total: total)
        }
    }
}

/// ASCII text from a fixed-width space-padded field: trailing/leading spaces and NULs trimmed,
/// non-printable bytes replaced by "?" (peer data ends up in logs and descriptions).
func scsiASCII(_ bytes: [UInt8]) -> String {
    var scalars = bytes.map { b -> Character in
        (0x20...0x7E).contains(b) ? Character(Unicode.Scalar(b)) : (b == 0 ? " " : "?")
    }
    while scalars.last == " " { scalars.removeLast() }
    while scalars.first == " " { scalars.removeFirst() }
    return String(scalars)
}

func hex2(_ v: UInt8) -> String {
    let s = String(v, radix: 16, uppercase: true)
    return s.count < 2 ? "0" + s : s
}
