/// A lossless model of an open-iscsi style `key = value` file (iscsid.conf, node records).
///
/// Every line is kept in order: blank lines, `#` comments and entries, with the original text of
/// each untouched line, so a document that is parsed, edited and rendered again differs from the
/// input only in the entries that were changed. Unknown keys are kept like any other entry; the
/// syntax layer does not know which keys exist (see ``ConfigKeys`` for validation).
public struct ConfigDocument: Hashable, Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// One line of the file.
    public enum Line: Hashable, Sendable {
        /// An empty or whitespace-only line, with its original text.
        case blank(String)
        /// A line whose first non-blank character is `#`, with its original text.
        case comment(String)
        /// A `key = value` line.
        case entry(Entry)
    }

    /// A `key = value` line. `original` is the text as read, used verbatim while the entry is unchanged.
    public struct Entry: Hashable, Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
        public var key: String
        public var value: String
        /// 1-based line number in the file it was read from (nil for entries added in memory).
        public var lineNumber: Int?
        var original: String?

        public init(key: String, value: String) {
            self.key = key
            self.value = value
            self.lineNumber = nil
            self.original = nil
        }

        /// The text written for this entry.
        public var rendered: String { original ?? "\(key) = \(value)" }

        /// `key = value`, with the value of a secret-bearing key masked.
        public var description: String {
            ConfigKeys.isSecret(key) && !value.isEmpty ? "\(key) = \(NodeRecord.masked)" : "\(key) = \(value)"
        }
        public var debugDescription: String { description }
        /// Keeps secrets out of `dump()` and reflection-based logging.
        public var customMirror: Mirror { Mirror(self, children: ["entry": description]) }
    }

    public var lines: [Line]
    /// Whether the rendered text ends with a newline (kept from the input; true for new documents).
    public var endsWithNewline: Bool

    public init(lines: [Line] = [], endsWithNewline: Bool = true) {
        self.lines = lines
        self.endsWithNewline = endsWithNewline
    }

    /// The entries with secrets masked (never the raw text, which may hold CHAP secrets).
    public var description: String { "ConfigDocument(" + entries.map(\.description).joined(separator: "; ") + ")" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["entries": entries.map(\.description)]) }

    /// Upper bound on the size of a configuration file we accept (open-iscsi files are a few KiB).
    public static let maximumSize = 1 << 20

    /// Parses `text`. Lines are `key = value` (whitespace around both trimmed; the value is the rest
    /// of the line and may contain spaces or further `=`), `#` comments, or blank.
    /// - Throws: ``ISCSIConfigError/Code/malformedLine`` naming `file` and the line number for a line
    ///   without `=`, with an empty key, or with whitespace or control characters inside the key.
    public static func parse(_ text: String, file: String? = nil) throws(ISCSIConfigError) -> ConfigDocument {
        guard text.utf8.count <= maximumSize else {
            throw ISCSIConfigError(.malformedLine, "file larger than \(maximumSize) bytes", file: file)
        }
        // Split on U+000A scalars (a String would treat "\r\n" as one Character).
        var rawLines = text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false)
            .map { String(String.UnicodeScalarView($0)) }
        let endsWithNewline = text.isEmpty || text.utf8.last == UInt8(ascii: "\n")
        if endsWithNewline { rawLines.removeLast() }
        var lines: [Line] = []
        lines.reserveCapacity(rawLines.count)
        for (index, raw) in rawLines.enumerated() {
            let lineNumber = index + 1
            // Tolerate CRLF files: the \r is kept in `original` and dropped from key/value.
            let content = raw.hasSuffix("\r") ? String(raw.dropLast()) : raw
            let trimmed = content.trimmingConfigWhitespace()
            if trimmed.isEmpty {
                lines.append(.blank(raw))
                continue
            }
            if trimmed.hasPrefix("#") {
                lines.append(.comment(raw))
                continue
            }
            guard let equals = trimmed.firstIndex(of: "=") else {
                throw ISCSIConfigError(.malformedLine, "expected 'key = value'", file: file, line: lineNumber)
            }
            let key = String(trimmed[..<equals]).trimmingConfigWhitespace()
            let value = String(trimmed[trimmed.index(after: equals)...]).trimmingConfigWhitespace()
            guard !key.isEmpty else {
                throw ISCSIConfigError(.malformedLine, "empty key before '='", file: file, line: lineNumber)
            }
            guard key.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7F }) else {
                throw ISCSIConfigError(.malformedLine, "key contains whitespace or control characters",
                                       file: file, line: lineNumber)
            }
            guard !value.unicodeScalars.contains(where: { $0.value < 0x20 && $0 != "\t" }) else {
                throw ISCSIConfigError(.malformedLine, "value of '\(key)' contains control characters",
                                       file: file, line: lineNumber, key: key)
            }
            var entry = Entry(key: key, value: value)
            entry.lineNumber = lineNumber
            entry.original = raw
            lines.append(.entry(entry))
        }
        return ConfigDocument(lines: lines, endsWithNewline: endsWithNewline)
    }

    /// The file text: untouched lines verbatim, changed or added entries as `key = value`.
    public func render() -> String {
        var out = ""
        for (index, line) in lines.enumerated() {
            switch line {
            case .blank(let raw), .comment(let raw): out += raw
            case .entry(let entry): out += entry.rendered
            }
            if index < lines.count - 1 || endsWithNewline { out += "\n" }
        }
        return out
    }

    /// All entries in file order (a key may appear more than once; the last one wins).
    public var entries: [Entry] {
        lines.compactMap { if case .entry(let e) = $0 { e } else { nil } }
    }

    /// The effective value of `key` (its last occurrence), or nil.
    public subscript(key: String) -> String? {
        for line in lines.reversed() {
            if case .entry(let e) = line, e.key == key { return e.value }
        }
        return nil
    }

    /// The last entry for `key`, with its line number.
    public func entry(for key: String) -> Entry? {
        for line in lines.reversed() {
            if case .entry(let e) = line, e.key == key { return e }
        }
        return nil
    }

    /// Sets `key`: the last occurrence is changed in place (keeping its position), or a new entry
    /// is appended (before a trailing `# END RECORD` marker if there is one).
    public mutating func set(_ key: String, to value: String) {
        for index in lines.indices.reversed() {
            if case .entry(var e) = lines[index], e.key == key {
                if e.value != value {
                    e.value = value
                    e.original = nil
                    lines[index] = .entry(e)
                }
                return
            }
        }
        let newLine = Line.entry(Entry(key: key, value: value))
        if let end = lines.lastIndex(where: { if case .comment(let c) = $0 { c.trimmingConfigWhitespace() == NodeRecord.endMarker } else { false } }) {
            lines.insert(newLine, at: end)
        } else {
            lines.append(newLine)
        }
    }

    /// Removes every occurrence of `key`. Returns whether anything was removed.
    @discardableResult
    public mutating func remove(_ key: String) -> Bool {
        let before = lines.count
        lines.removeAll { if case .entry(let e) = $0 { e.key == key } else { false } }
        return lines.count != before
    }
}

extension String {
    func trimmingConfigWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first == " " || first == "\t" || first == "\r" { scalars.removeFirst() }
        while let last = scalars.last, last == " " || last == "\t" || last == "\r" { scalars.removeLast() }
        return String(scalars)
    }
}
