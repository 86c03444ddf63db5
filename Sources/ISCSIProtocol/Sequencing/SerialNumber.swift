/// A 32-bit sequence number compared with serial number arithmetic (RFC 1982, SERIAL_BITS = 32), as
/// RFC 7143 §4.2.2.1 requires for CmdSN, ExpCmdSN, MaxCmdSN, StatSN, ExpStatSN, DataSN and R2TSN.
///
/// Never compare the raw values with `<`: `SerialNumber(0) > SerialNumber(0xFFFF_FFFF)`.
/// RFC 1982 §3.2 leaves the comparison of two numbers exactly 2^31 apart undefined; here both `<` and
/// `>` are false for such a pair (they are "incomparable", and `isDefinedComparison` says so).
public struct SerialNumber: RawRepresentable, Hashable, Sendable, Comparable, CustomStringConvertible {
    public var rawValue: UInt32

    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public init(_ value: UInt32) { self.rawValue = value }

    /// RFC 1982 §3.1: addition of a positive integer n <= 2^31 - 1, wrapping modulo 2^32.
    @inlinable
    public static func + (lhs: SerialNumber, rhs: UInt32) -> SerialNumber {
        precondition(rhs <= 0x7FFF_FFFF, "RFC 1982 §3.1: only 0...2^31-1 may be added")
        return SerialNumber(lhs.rawValue &+ rhs)
    }

    @inlinable
    public static func += (lhs: inout SerialNumber, rhs: UInt32) { lhs = lhs + rhs }

    /// The forward distance from `other` to `self` (mod 2^32), when `self` is not before `other`.
    /// `SerialNumber(2).distance(from: SerialNumber(0xFFFF_FFFF)) == 3`.
    @inlinable
    public func distance(from other: SerialNumber) -> UInt32 { rawValue &- other.rawValue }

    /// RFC 1982 §3.2: s1 < s2 iff (i1 < i2 and i2 - i1 < 2^31) or (i1 > i2 and i1 - i2 > 2^31).
    @inlinable
    public static func < (lhs: SerialNumber, rhs: SerialNumber) -> Bool {
        let a = lhs.rawValue
        let b = rhs.rawValue
        return (a < b && b &- a < 0x8000_0000) || (a > b && a &- b > 0x8000_0000)
    }

    @inlinable
    public static func > (lhs: SerialNumber, rhs: SerialNumber) -> Bool { rhs < lhs }
    @inlinable
    public static func <= (lhs: SerialNumber, rhs: SerialNumber) -> Bool { lhs == rhs || lhs < rhs }
    @inlinable
    public static func >= (lhs: SerialNumber, rhs: SerialNumber) -> Bool { lhs == rhs || rhs < lhs }

    /// False when the two numbers are exactly 2^31 apart (RFC 1982 §3.2: undefined).
    @inlinable
    public func isDefinedComparison(with other: SerialNumber) -> Bool {
        rawValue &- other.rawValue != 0x8000_0000
    }

    public var description: String { String(rawValue) }
}
