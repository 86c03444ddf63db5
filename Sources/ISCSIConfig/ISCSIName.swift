/// A validated iSCSI name (RFC 7143 §4.2.7).
///
/// Accepted forms:
/// - `iqn.yyyy-mm.reversed.domain[:anything]` (§4.2.7.4): lowercase letters, digits, `-`, `.`, `:`,
///   and non-ASCII characters that are not uppercase (the output of the RFC 3722 stringprep profile;
///   ASCII punctuation other than `-`, `.`, `:` is prohibited there).
/// - `eui.` + 16 hexadecimal digits (§4.2.7.5).
/// - `naa.` + 16 or 32 hexadecimal digits (§4.2.7.6).
///
/// The RFC's own `eui.`/`naa.` examples use uppercase hex digits, so hex digits are accepted in
/// either case; the type prefix must be lowercase. The UTF-8 encoding is at most 223 bytes (§4.2.7.1).
public struct ISCSIName: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    /// RFC 7143 §4.2.7.1: "The UTF-8 encoding of the name is not larger than 223 bytes."
    public static let maximumLength = 223

    public init(validating name: String) throws(ISCSIConfigError) {
        try Self.validate(name)
        self.rawValue = name
    }

    public var description: String { rawValue }

    /// Checks `name` against RFC 7143 §4.2.7 and throws ``ISCSIConfigError/Code/invalidName`` saying why.
    public static func validate(_ name: String) throws(ISCSIConfigError) {
        func fail(_ why: String) -> ISCSIConfigError { ISCSIConfigError(.invalidName, "invalid iSCSI name '\(name.prefix(240))': \(why)") }
        guard !name.isEmpty else { throw fail("empty") }
        guard name.utf8.count <= maximumLength else { throw fail("longer than \(maximumLength) bytes") }
        if name.hasPrefix("iqn.") {
            try validateIQN(name, fail)
        } else if name.hasPrefix("eui.") {
            let hex = name.dropFirst(4)
            guard hex.count == 16, hex.allSatisfy(\.isHexDigit) else { throw fail("eui. must be followed by 16 hex digits") }
        } else if name.hasPrefix("naa.") {
            let hex = name.dropFirst(4)
            guard hex.count == 16 || hex.count == 32, hex.allSatisfy(\.isHexDigit) else {
                throw fail("naa. must be followed by 16 or 32 hex digits")
            }
        } else {
            throw fail("must start with iqn., eui. or naa. (lowercase)")
        }
    }

    private static func validateIQN(_ name: String, _ fail: (String) -> ISCSIConfigError) throws(ISCSIConfigError) {
        // iqn.yyyy-mm.<reversed domain>[:<unique>]
        let body = Array(name.utf8.dropFirst(4))
        guard body.count >= 8 else { throw fail("iqn. must be followed by a date yyyy-mm") }
        let isDigit = { (b: UInt8) in b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
        guard body[0..<4].allSatisfy(isDigit), body[4] == UInt8(ascii: "-"), body[5..<7].allSatisfy(isDigit) else {
            throw fail("iqn. must be followed by a date yyyy-mm")
        }
        let month = Int(body[5] - UInt8(ascii: "0")) * 10 + Int(body[6] - UInt8(ascii: "0"))
        guard (1...12).contains(month) else { throw fail("month \(month) out of range 01-12") }
        guard body.count > 8, body[7] == UInt8(ascii: ".") else {
            throw fail("the date must be followed by '.' and a reversed domain name")
        }
        let rest = String(decoding: body[8...], as: UTF8.self)
        let domain = rest.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)[0]
        guard !domain.isEmpty, !domain.hasPrefix("."), !domain.hasSuffix("."), !domain.contains("..") else {
            throw fail("missing or malformed reversed domain name")
        }
        for scalar in domain.unicodeScalars {
            guard scalar.isASCII, isLowerAlnum(scalar) || scalar == "-" || scalar == "." else {
                throw fail("domain part may only contain a-z, 0-9, '-' and '.'")
            }
        }
        for scalar in rest.unicodeScalars {
            if scalar.isASCII {
                guard isLowerAlnum(scalar) || scalar == "-" || scalar == "." || scalar == ":" else {
                    throw fail(scalar.properties.isUppercase ? "uppercase characters are prohibited"
                                                              : "character '\(scalar.escaped(asASCII: true))' is not allowed")
                }
            } else {
                guard !scalar.properties.isUppercase, !scalar.properties.isWhitespace,
                      scalar.properties.generalCategory != .control else {
                    throw fail("character '\(scalar.escaped(asASCII: true))' is not allowed")
                }
            }
        }
    }

    private static func isLowerAlnum(_ s: Unicode.Scalar) -> Bool {
        (s >= "a" && s <= "z") || (s >= "0" && s <= "9")
    }

    /// The prefix used by ``generate(prefix:)`` by default. It is the one open-iscsi's `iscsi-iname`
    /// uses, so a generated name looks like any Linux initiator's and target ACL tooling that expects
    /// that shape keeps working.
    public static let defaultGeneratedPrefix = "iqn.2005-03.org.open-iscsi"

    /// Generates a unique initiator name: `<prefix>:<12 random lowercase hex digits>` (48 random
    /// bits, like open-iscsi's `iscsi-iname`). `prefix` must itself be a valid `iqn.` name.
    public static func generate(prefix: String = defaultGeneratedPrefix) throws(ISCSIConfigError) -> ISCSIName {
        var generator = SystemRandomNumberGenerator()
        return try generate(prefix: prefix, using: &generator)
    }

    /// ``generate(prefix:)`` with an explicit random source (for tests).
    public static func generate<G: RandomNumberGenerator>(prefix: String, using generator: inout G) throws(ISCSIConfigError) -> ISCSIName {
        let random = UInt64.random(in: 0...0xFFFF_FFFF_FFFF, using: &generator)
        var hex = String(random, radix: 16)
        hex = String(repeating: "0", count: 12 - hex.count) + hex
        return try ISCSIName(validating: "\(prefix):\(hex)")
    }
}

/// The contents of `<configdir>/initiatorname.iscsi`: `InitiatorName=...`, optional
/// `InitiatorAlias=...`, `#` comments.
public struct InitiatorNameFile: Hashable, Sendable {
    public static let fileName = "initiatorname.iscsi"

    public var name: ISCSIName
    public var alias: String?

    public init(name: ISCSIName, alias: String? = nil) {
        self.name = name
        self.alias = alias
    }

    /// Parses the file. Other keys are ignored; a missing or invalid `InitiatorName` is an error.
    public static func parse(_ text: String, file: String? = nil) throws(ISCSIConfigError) -> InitiatorNameFile {
        let document = try ConfigDocument.parse(text, file: file)
        guard let entry = document.entry(for: "InitiatorName") else {
            throw ISCSIConfigError(.invalidName, "no InitiatorName= line", file: file)
        }
        let name: ISCSIName
        do { name = try ISCSIName(validating: entry.value) } catch { throw error.at(file: file, line: entry.lineNumber) }
        var alias = document["InitiatorAlias"]
        if alias?.isEmpty == true { alias = nil }
        if let a = alias, a.utf8.count > 255 {
            throw ISCSIConfigError(.invalidValue, "InitiatorAlias longer than 255 bytes",
                                   file: file, line: document.entry(for: "InitiatorAlias")?.lineNumber)
        }
        return InitiatorNameFile(name: name, alias: alias)
    }

    /// The text written when the file is generated.
    public func render() -> String {
        var text = """
            ## Generated by iscsi-nbd. This is the iSCSI initiator name (RFC 7143 §4.2.7) used in
            ## logins and iSNS registration; targets' access lists refer to it. Changing it may
            ## lock this host out of targets that only admit the old name.
            InitiatorName=\(name.rawValue)

            """
        if let alias { text += "InitiatorAlias=\(alias)\n" }
        return text
    }
}
