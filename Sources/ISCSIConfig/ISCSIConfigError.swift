/// Errors from reading, validating and writing open-iscsi style configuration.
///
/// Messages never contain CHAP secrets: a bad value for a secret-bearing key is reported
/// by key name only.
public struct ISCSIConfigError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong, as an extensible set of codes.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case malformedLine, invalidValue, invalidName, notFound, alreadyExists, io, invalidRecord
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// A line that is not `key = value`, a comment or blank (or has an empty key).
        public static let malformedLine = Code(.malformedLine)
        /// A known key with a value outside its type or range.
        public static let invalidValue = Code(.invalidValue)
        /// An iSCSI name that breaks RFC 7143 §4.2.7, or a name unusable as a record path.
        public static let invalidName = Code(.invalidName)
        /// A node record that does not exist.
        public static let notFound = Code(.notFound)
        /// A node record that already exists.
        public static let alreadyExists = Code(.alreadyExists)
        /// A file system operation failed.
        public static let io = Code(.io)
        /// A node record whose contents contradict its path or lack a required key.
        public static let invalidRecord = Code(.invalidRecord)

        public var description: String {
            switch base {
            case .malformedLine: "malformed line"
            case .invalidValue: "invalid value"
            case .invalidName: "invalid name"
            case .notFound: "not found"
            case .alreadyExists: "already exists"
            case .io: "I/O error"
            case .invalidRecord: "invalid record"
            }
        }
    }

    public var code: Code
    /// The file the problem is in, when it came from a file.
    public var file: String?
    /// 1-based line number, when the problem is on one line.
    public var line: Int?
    /// The key concerned, when there is one.
    public var key: String?
    /// Human readable detail (never a secret).
    public var message: String

    public init(_ code: Code, _ message: String, file: String? = nil, line: Int? = nil, key: String? = nil) {
        self.code = code
        self.message = message
        self.file = file
        self.line = line
        self.key = key
    }

    public var description: String {
        var location = ""
        if let file { location = file }
        if let line { location += (location.isEmpty ? "line " : ":") + String(line) }
        return location.isEmpty ? message : "\(location): \(message)"
    }

    func at(file: String?, line: Int?) -> ISCSIConfigError {
        var copy = self
        if copy.file == nil { copy.file = file }
        if copy.line == nil { copy.line = line }
        return copy
    }
}
