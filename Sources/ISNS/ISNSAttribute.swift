import NIOCore

/// Errors from the iSNS codec and client.
public struct ISNSError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable { case malformed, status, unexpectedResponse, timeout, connectionClosed }
        private let base: Base
        private init(_ base: Base) { self.base = base }
        /// The server sent bytes that break RFC 4171 framing or TLV rules.
        public static let malformed = Code(.malformed)
        /// The server answered with a non-zero status (see ``ISNSError/status``).
        public static let status = Code(.status)
        /// A response of the wrong kind, or for no outstanding request.
        public static let unexpectedResponse = Code(.unexpectedResponse)
        /// No response within the timeout.
        public static let timeout = Code(.timeout)
        /// The connection closed with requests outstanding.
        public static let connectionClosed = Code(.connectionClosed)
        public var description: String {
            switch base {
            case .malformed: "malformed iSNS message"
            case .status: "iSNS error status"
            case .unexpectedResponse: "unexpected iSNS response"
            case .timeout: "iSNS request timed out"
            case .connectionClosed: "iSNS connection closed"
            }
        }
    }

    public var code: Code
    public var status: ISNSStatus?
    public var detail: String

    public init(_ code: Code, _ detail: String, status: ISNSStatus? = nil) {
        self.code = code
        self.detail = detail
        self.status = status
    }

    static func malformed(_ detail: String) -> ISNSError { ISNSError(.malformed, detail) }

    public var description: String {
        if let status { return "\(code): \(status): \(detail)" }
        return "\(code): \(detail)"
    }
}

/// One TLV attribute (RFC 4171 §5.3): 4-byte tag, 4-byte length, value padded to 4 bytes.
/// `value` is the value field exactly as on the wire (including padding).
public struct ISNSAttribute: Hashable, Sendable, CustomStringConvertible {
    public var tag: ISNSAttributeTag
    public var value: ByteBuffer

    public init(tag: ISNSAttributeTag, value: ByteBuffer) {
        self.tag = tag
        self.value = value
    }

    /// A zero-length TLV: the delimiter, or a requested tag in a query's operating attributes.
    public static func empty(_ tag: ISNSAttributeTag) -> ISNSAttribute {
        ISNSAttribute(tag: tag, value: ByteBuffer())
    }

    /// RFC 4171 §6.1: "Variable-length identifiers are NULL-terminated and 4-byte aligned (NULLs are
    /// included in the length)."
    public static func string(_ tag: ISNSAttributeTag, _ string: String) -> ISNSAttribute {
        let bytes = Array(string.utf8)
        let padded = (bytes.count + 1 + 3) & ~3
        var buffer = ByteBuffer()
        buffer.reserveCapacity(padded)
        buffer.writeBytes(bytes)
        buffer.writeRepeatingByte(0, count: padded - bytes.count)
        return ISNSAttribute(tag: tag, value: buffer)
    }

    public static func uint32(_ tag: ISNSAttributeTag, _ value: UInt32) -> ISNSAttribute {
        var buffer = ByteBuffer()
        buffer.writeInteger(value)
        return ISNSAttribute(tag: tag, value: buffer)
    }

    /// A 16-byte IP address (RFC 4171 §6.3.1: IPv4 as IPv4-mapped IPv6, ::ffff:a.b.c.d).
    public static func ipAddress(_ tag: ISNSAttributeTag, _ address: ISNSIPAddress) -> ISNSAttribute {
        var buffer = ByteBuffer()
        buffer.writeBytes(address.bytes)
        return ISNSAttribute(tag: tag, value: buffer)
    }

    /// The value as a NUL-terminated string (padding stripped). Throws if there is no NUL or the
    /// bytes are not UTF-8.
    public func stringValue() throws(ISNSError) -> String {
        guard let bytes = value.getBytes(at: value.readerIndex, length: value.readableBytes),
              let nul = bytes.firstIndex(of: 0) else {
            throw .malformed("\(tag) is not NUL-terminated")
        }
        guard let s = String(validating: bytes[..<nul], as: UTF8.self) else { throw .malformed("\(tag) is not UTF-8") }
        return s
    }

    public func uint32Value() throws(ISNSError) -> UInt32 {
        guard value.readableBytes == 4, let v = value.getInteger(at: value.readerIndex, as: UInt32.self) else {
            throw .malformed("\(tag) must be 4 bytes, got \(value.readableBytes)")
        }
        return v
    }

    public func ipAddressValue() throws(ISNSError) -> ISNSIPAddress {
        guard value.readableBytes == 16, let bytes = value.getBytes(at: value.readerIndex, length: 16) else {
            throw .malformed("\(tag) must be 16 bytes, got \(value.readableBytes)")
        }
        return ISNSIPAddress(bytes: bytes)
    }

    public var description: String { "\(tag)[\(value.readableBytes)]" }
}

/// A 16-byte iSNS IP address field.
public struct ISNSIPAddress: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    init(bytes: [UInt8]) { self.bytes = bytes }

    /// Parses dotted IPv4 (stored IPv4-mapped) or an IPv6 literal; nil for anything else.
    public init?(_ text: String) {
        if let v4 = Self.parseIPv4(text) {
            bytes = Array(repeating: 0, count: 10) + [0xFF, 0xFF] + v4
        } else if let v6 = Self.parseIPv6(text) {
            bytes = v6
        } else {
            return nil
        }
    }

    /// The IPv4 address if this is IPv4-mapped (::ffff:a.b.c.d) or IPv4-compatible (::a.b.c.d, non-zero).
    public var ipv4: [UInt8]? {
        let head = bytes[0..<10].allSatisfy { $0 == 0 }
        if head && bytes[10] == 0xFF && bytes[11] == 0xFF { return Array(bytes[12..<16]) }
        if head && bytes[10] == 0 && bytes[11] == 0 && bytes[12..<16].contains(where: { $0 != 0 })
            && !(bytes[12..<15].allSatisfy { $0 == 0 } && bytes[15] <= 1) {  // not :: or ::1
            return Array(bytes[12..<16])
        }
        return nil
    }

    /// Dotted IPv4 for IPv4-mapped addresses, otherwise IPv6 text (RFC 5952 style compression).
    public var description: String {
        if let v4 = ipv4 { return v4.map(String.init).joined(separator: ".") }
        var groups: [UInt16] = []
        for i in stride(from: 0, to: 16, by: 2) { groups.append(UInt16(bytes[i]) << 8 | UInt16(bytes[i + 1])) }
        // Longest run of >= 2 zero groups.
        var best = (start: -1, length: 0)
        var i = 0
        while i < 8 {
            if groups[i] == 0 {
                var j = i
                while j < 8 && groups[j] == 0 { j += 1 }
                if j - i > best.length && j - i >= 2 { best = (i, j - i) }
                i = j
            } else {
                i += 1
            }
        }
        let hex = groups.map { String($0, radix: 16) }
        if best.start < 0 { return hex.joined(separator: ":") }
        let left = hex[0..<best.start].joined(separator: ":")
        let right = hex[(best.start + best.length)...].joined(separator: ":")
        return "\(left)::\(right)"
    }

    static func parseIPv4(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.allSatisfy(\.isASCII), let n = UInt8(p) else { return nil }
            out.append(n)
        }
        return out
    }

    static func parseIPv6(_ text: String) -> [UInt8]? {
        guard text.contains(":"), text.count <= 45 else { return nil }
        let halves = text.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func groups(_ s: String) -> [UInt16]? {
            if s.isEmpty { return [] }
            var out: [UInt16] = []
            let parts = s.split(separator: ":", omittingEmptySubsequences: false)
            for (index, p) in parts.enumerated() {
                if index == parts.count - 1, p.contains("."), let v4 = parseIPv4(String(p)) {
                    out.append(UInt16(v4[0]) << 8 | UInt16(v4[1]))
                    out.append(UInt16(v4[2]) << 8 | UInt16(v4[3]))
                    continue
                }
                guard (1...4).contains(p.count), let g = UInt16(p, radix: 16) else { return nil }
                out.append(g)
            }
            return out
        }
        guard let head = groups(halves[0]) else { return nil }
        var all = head
        if halves.count == 2 {
            guard let tail = groups(halves[1]), head.count + tail.count <= 7 else { return nil }
            all += Array(repeating: 0, count: 8 - head.count - tail.count) + tail
        }
        guard all.count == 8 else { return nil }
        return all.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
    }
}

extension String {
    fileprivate func components(separatedBy separator: String) -> [String] {
        var result: [String] = []
        var rest = Substring(self)
        while let range = rest.range(of: separator) {
            result.append(String(rest[..<range.lowerBound]))
            rest = rest[range.upperBound...]
        }
        result.append(String(rest))
        return result
    }
}

extension Substring {
    fileprivate func range(of needle: String) -> Range<Substring.Index>? {
        guard !needle.isEmpty else { return nil }
        var i = startIndex
        while i < endIndex {
            if self[i...].hasPrefix(needle) { return i..<index(i, offsetBy: needle.count) }
            i = index(after: i)
        }
        return nil
    }
}
