import NIOCore

/// One `key=value` pair of an iSCSI text data segment (RFC 7143 §6.1).
public struct TextKeyValue: Sendable, Hashable {
    public var key: String
    public var value: String

    public init(key: String, value: String) {
        self.key = key
        self.value = value
    }
}

/// Limits applied while decoding a logical text data segment (LTDS).
///
/// RFC 7143 §6.1: "Any iSCSI target or initiator MUST support receiving at least 8192 bytes of
/// key=value data in a negotiation sequence. When proposing or accepting authentication methods that
/// explicitly require support for very long authentication items, the initiator and target MUST support
/// receiving at least 64 kilobytes of key=value data."
public struct TextLimits: Sendable, Hashable {
    /// Largest whole LTDS accepted (all PDUs of a C-bit series together).
    public var maxTotalBytes: Int
    /// Largest value that is not a binary constant (`0x…`/`0b…`). RFC 7143 §6.1 caps simple values
    /// at 255 bytes "if not otherwise specified"; aliases and lists are longer, so the cap is generous.
    public var maxValueBytes: Int
    /// Largest binary value (`0x…`/`0b…`), in characters of its encoded form.
    public var maxBinaryValueBytes: Int
    /// Maximum number of pairs.
    public var maxPairs: Int

    public init(maxTotalBytes: Int = 65536 + 4096, maxValueBytes: Int = 8192,
                maxBinaryValueBytes: Int = 65536, maxPairs: Int = 4096) {
        self.maxTotalBytes = maxTotalBytes
        self.maxValueBytes = maxValueBytes
        self.maxBinaryValueBytes = maxBinaryValueBytes
        self.maxPairs = maxPairs
    }

    public static let `default` = TextLimits()
}

/// How repeated keys are treated when decoding.
public enum TextDuplicatePolicy: Sendable, Hashable {
    /// RFC 7143 §6.3: "Neither the initiator nor the target should attempt to declare or negotiate a
    /// parameter more than once during login, except for responses to specific keys that explicitly allow
    /// repeated key declarations (e.g., TargetAddress)." Repeats of other keys are an error.
    case reject(allowing: Set<String>)
    /// SendTargets responses repeat `TargetName` and `TargetAddress` (RFC 7143 Appendix C).
    case allow

    /// Rejects repeats except `TargetAddress`.
    public static let login = TextDuplicatePolicy.reject(allowing: ["TargetAddress"])
}

/// A malformed text data segment.
public struct TextError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        case tooLong
        case tooManyPairs
        case missingEquals
        case invalidKey
        case valueTooLong
        case invalidUTF8
        case duplicateKey
        case emptyPair
    }

    public var kind: Kind
    /// The key involved, when it could be read (never a value: values may be CHAP material).
    public var key: String?
    public var description: String

    public init(_ kind: Kind, key: String? = nil, _ description: String) {
        self.kind = kind
        self.key = key
        self.description = description
    }
}

/// An ordered list of iSCSI `key=value` pairs (RFC 7143 §6.1), as carried in Login and Text PDUs.
///
/// Wire format: UTF-8 `key=value` pairs, each followed by one NUL byte. Order is preserved: it matters
/// for SendTargets responses, where each `TargetAddress` belongs to the preceding `TargetName`.
/// `description` redacts `CHAP_R` so that transcripts can be logged.
public struct TextKeyValues: Sendable, Hashable, RandomAccessCollection, ExpressibleByDictionaryLiteral,
    CustomStringConvertible
{
    public private(set) var pairs: [TextKeyValue]

    public init() { self.pairs = [] }

    public init(_ pairs: [TextKeyValue]) { self.pairs = pairs }

    public init(_ pairs: [(String, String)]) {
        self.pairs = pairs.map { TextKeyValue(key: $0.0, value: $0.1) }
    }

    /// Dictionary literal syntax, keeping the literal's order: `["HeaderDigest": "None"]`.
    public init(dictionaryLiteral elements: (String, String)...) {
        self.init(elements)
    }

    public var startIndex: Int { pairs.startIndex }
    public var endIndex: Int { pairs.endIndex }
    public subscript(position: Int) -> TextKeyValue { pairs[position] }

    /// The value of the first pair with `key`.
    public subscript(key: String) -> String? {
        pairs.first { $0.key == key }?.value
    }

    /// All values of `key`, in order.
    public func values(for key: String) -> [String] {
        pairs.filter { $0.key == key }.map(\.value)
    }

    public func contains(key: String) -> Bool { pairs.contains { $0.key == key } }

    public mutating func append(_ key: String, _ value: String) {
        pairs.append(TextKeyValue(key: key, value: value))
    }

    public mutating func append(contentsOf other: TextKeyValues) {
        pairs.append(contentsOf: other.pairs)
    }

    public var keys: [String] { pairs.map(\.key) }

    // MARK: Encoding

    /// Bytes `write(into:)` produces.
    public var encodedLength: Int {
        pairs.reduce(0) { $0 + $1.key.utf8.count + 1 + $1.value.utf8.count + 1 }
    }

    /// Appends `key=value\0` for every pair.
    @discardableResult
    public func write(into buffer: inout ByteBuffer) -> Int {
        var written = 0
        for pair in pairs {
            written += buffer.writeString(pair.key)
            written += buffer.writeInteger(UInt8(ascii: "="))
            written += buffer.writeString(pair.value)
            written += buffer.writeInteger(UInt8(0))
        }
        return written
    }

    /// The encoded data segment (unpadded).
    public func encoded(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: encodedLength)
        write(into: &buffer)
        return buffer
    }

    // MARK: Decoding

    /// Decodes a complete logical text data segment (the concatenated data segments of a C-bit series).
    ///
    /// RFC 7143 §6.1: "Every key=value pair, including the last or only pair in a LTDS, MUST be followed by
    /// one null (0x00) delimiter." A missing final NUL is tolerated (the meaning is unambiguous) and trailing
    /// NUL padding some targets add is skipped; an empty pair in the middle is an error. Keys must be
    /// standard-labels (or `X-`/`X#` extension names); values must be UTF-8 and within `limits`.
    public static func decode(_ buffer: ByteBuffer, limits: TextLimits = .default,
                              duplicates: TextDuplicatePolicy = .login) throws(TextError) -> TextKeyValues {
        let bytes = buffer.readableBytesView
        guard bytes.count <= limits.maxTotalBytes else {
            throw TextError(.tooLong, "text data of \(bytes.count) bytes exceeds the \(limits.maxTotalBytes) byte limit")
        }
        var result = TextKeyValues()
        var seen = Set<String>()
        var start = bytes.startIndex
        let end = bytes.endIndex
        while start < end {
            var stop = start
            while stop < end, bytes[stop] != 0 { stop += 1 }
            if stop == start {
                // An empty pair: only acceptable as trailing padding.
                if bytes[start..<end].allSatisfy({ $0 == 0 }) { break }
                throw TextError(.emptyPair, "empty key=value pair in text data")
            }
            let pair = bytes[start..<stop]
            guard let equals = pair.firstIndex(of: UInt8(ascii: "=")) else {
                let keyPreview = pair.count <= 64 && isValidKey(pair) ? String(decoding: pair, as: UTF8.self) : nil
                throw TextError(.missingEquals, key: keyPreview, "text pair without '='")
            }
            let keyBytes = pair[pair.startIndex..<equals]
            guard isValidKey(keyBytes) else {
                throw TextError(.invalidKey, "invalid text key (RFC 7143 §6.1 standard-label)")
            }
            let key = String(decoding: keyBytes, as: UTF8.self)
            let valueBytes = pair[(equals + 1)..<pair.endIndex]
            let isBinary = valueBytes.count >= 2 && valueBytes.first == UInt8(ascii: "0")
                && [UInt8(ascii: "x"), UInt8(ascii: "X"), UInt8(ascii: "b"), UInt8(ascii: "B")]
                    .contains(valueBytes[valueBytes.startIndex + 1])
            let cap = isBinary ? limits.maxBinaryValueBytes : limits.maxValueBytes
            guard valueBytes.count <= cap else {
                throw TextError(.valueTooLong, key: key, "value of \(key) is \(valueBytes.count) bytes (limit \(cap))")
            }
            guard isValidUTF8(valueBytes) else {
                throw TextError(.invalidUTF8, key: key, "value of \(key) is not valid UTF-8")
            }
            switch duplicates {
            case .allow:
                break
            case .reject(let allowed):
                if !allowed.contains(key) {
                    guard seen.insert(key).inserted else {
                        throw TextError(.duplicateKey, key: key, "key \(key) sent more than once (RFC 7143 §6.3)")
                    }
                }
            }
            guard result.pairs.count < limits.maxPairs else {
                throw TextError(.tooManyPairs, "more than \(limits.maxPairs) key=value pairs")
            }
            result.pairs.append(TextKeyValue(key: key, value: String(decoding: valueBytes, as: UTF8.self)))
            start = stop + 1
        }
        return result
    }

    /// RFC 7143 §6.1: a key-name is a standard-label: "A string of one or more characters that consists of
    /// letters, digits, dot, minus, plus, commercial at, or underscore. A standard-label MUST begin with a
    /// capital letter and must not exceed 63 characters." §13.22: private keys are `X-` followed by a
    /// standard-label; `X#` names (e.g. X#NodeArchitecture, §13.26) are also accepted.
    static func isValidKey<C: Collection>(_ key: C) -> Bool where C.Element == UInt8 {
        guard let first = key.first, first >= UInt8(ascii: "A"), first <= UInt8(ascii: "Z") else { return false }
        let count = key.count
        guard count <= 65 else { return false }
        var limit = 63
        for (position, byte) in key.enumerated() {
            if position == 1, first == UInt8(ascii: "X"), byte == UInt8(ascii: "#") || byte == UInt8(ascii: "-") {
                limit = 65
                continue
            }
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "+"),
                UInt8(ascii: "@"), UInt8(ascii: "_"):
                continue
            default:
                return false
            }
        }
        return count <= limit
    }

    static func isValidUTF8<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
        var iterator = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    /// Keys whose values are never printed.
    static let redactedKeys: Set<String> = ["CHAP_R"]

    public var description: String {
        "[" + pairs.map { pair in
            "\(pair.key)=\(Self.redactedKeys.contains(pair.key) ? "<redacted>" : pair.value)"
        }.joined(separator: ", ") + "]"
    }
}
