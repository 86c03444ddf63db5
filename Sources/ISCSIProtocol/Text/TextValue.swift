/// Parsing and formatting of RFC 7143 §6.1 value types.
public enum TextValue {
    /// The reserved constants of RFC 7143 §6.2: "The constants "None", "Reject", "Irrelevant", and
    /// "NotUnderstood" are reserved and MUST ONLY be used as described here."
    public static let reject = "Reject"
    public static let irrelevant = "Irrelevant"
    public static let notUnderstood = "NotUnderstood"
    public static let none = "None"

    /// A numerical-value: a decimal-constant or a hex-constant (`0x`/`0X`), below 2^64.
    /// Returns nil for anything else (including overflow and empty strings).
    public static func parseNumber(_ text: String) -> UInt64? {
        let utf8 = Array(text.utf8)
        guard !utf8.isEmpty else { return nil }
        if utf8.count > 2, utf8[0] == UInt8(ascii: "0"), utf8[1] == UInt8(ascii: "x") || utf8[1] == UInt8(ascii: "X") {
            var value: UInt64 = 0
            for byte in utf8[2...] {
                guard let digit = hexDigit(byte) else { return nil }
                let (shifted, overflow) = value.multipliedReportingOverflow(by: 16)
                guard !overflow else { return nil }
                value = shifted | UInt64(digit)
            }
            return value
        }
        guard utf8.count <= 20 else { return nil }
        var value: UInt64 = 0
        for byte in utf8 {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            let (multiplied, o1) = value.multipliedReportingOverflow(by: 10)
            let (added, o2) = multiplied.addingReportingOverflow(UInt64(byte - UInt8(ascii: "0")))
            guard !o1, !o2 else { return nil }
            value = added
        }
        return value
    }

    /// A boolean-value: exactly "Yes" or "No".
    public static func parseBoolean(_ text: String) -> Bool? {
        switch text {
        case "Yes": return true
        case "No": return false
        default: return nil
        }
    }

    public static func format(_ value: Bool) -> String { value ? "Yes" : "No" }

    /// A list-of-values: comma separated.
    public static func parseList(_ text: String) -> [String] {
        text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
    }

    // MARK: Binary values

    /// Decodes a binary value: a hex-constant (`0x…`, implicit byte-length (n + 1) / 2, so an odd digit
    /// count gets a leading zero nibble) or a base64-constant (`0b…`, RFC 4648 with padding).
    /// Decimal-constants are not accepted: they only encode binary strings of an explicitly specified
    /// length, which no key used here has. `maxBytes` bounds the decoded size before anything is allocated.
    public static func decodeBinary(_ text: String, maxBytes: Int = 1024) -> [UInt8]? {
        let utf8 = text.utf8
        guard utf8.count > 2 else { return nil }
        var iterator = utf8.makeIterator()
        guard iterator.next() == UInt8(ascii: "0"), let format = iterator.next() else { return nil }
        switch format {
        case UInt8(ascii: "x"), UInt8(ascii: "X"):
            let digits = utf8.count - 2
            guard (digits + 1) / 2 <= maxBytes else { return nil }
            var out = [UInt8]()
            out.reserveCapacity((digits + 1) / 2)
            var pending: UInt8? = digits % 2 == 1 ? 0 : nil
            while let byte = iterator.next() {
                guard let nibble = hexDigit(byte) else { return nil }
                if let high = pending {
                    out.append(high << 4 | nibble)
                    pending = nil
                } else {
                    pending = nibble
                }
            }
            return out
        case UInt8(ascii: "b"), UInt8(ascii: "B"):
            let chars = utf8.count - 2
            guard chars % 4 == 0, chars / 4 * 3 <= maxBytes + 2 else { return nil }
            var out = [UInt8]()
            out.reserveCapacity(chars / 4 * 3)
            var quad = [UInt8](repeating: 0, count: 4)
            var filled = 0
            var padding = 0
            while let byte = iterator.next() {
                if byte == UInt8(ascii: "=") {
                    padding += 1
                    quad[filled] = 0
                } else {
                    guard padding == 0, let v = base64Digit(byte) else { return nil }
                    quad[filled] = v
                }
                filled += 1
                if filled == 4 {
                    guard padding <= 2 else { return nil }
                    out.append(quad[0] << 2 | quad[1] >> 4)
                    if padding < 2 { out.append(quad[1] << 4 | quad[2] >> 2) }
                    if padding < 1 { out.append(quad[2] << 6 | quad[3]) }
                    filled = 0
                    // Padding is only allowed in the final quantum.
                    if padding > 0, iterator.next() != nil { return nil }
                }
            }
            guard !out.isEmpty, out.count <= maxBytes else { return nil }
            return out
        default:
            return nil
        }
    }

    /// Formats bytes as a hex-constant, lower case: `0x0a1b…`.
    public static func hexConstant<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var out = [UInt8](arrayLiteral: UInt8(ascii: "0"), UInt8(ascii: "x"))
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Formats bytes as a base64-constant: `0b…`.
    public static func base64Constant(_ bytes: [UInt8]) -> String {
        let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out = [UInt8](arrayLiteral: UInt8(ascii: "0"), UInt8(ascii: "b"))
        var index = 0
        while index < bytes.count {
            let b0 = bytes[index]
            let b1: UInt8 = index + 1 < bytes.count ? bytes[index + 1] : 0
            let b2: UInt8 = index + 2 < bytes.count ? bytes[index + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(index + 1 < bytes.count ? alphabet[Int((b1 & 0x0f) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(index + 2 < bytes.count ? alphabet[Int(b2 & 0x3f)] : UInt8(ascii: "="))
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func hexDigit(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    private static func base64Digit(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return byte - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return byte - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0") + 52
        case UInt8(ascii: "+"): return 62
        case UInt8(ascii: "/"): return 63
        default: return nil
        }
    }
}
