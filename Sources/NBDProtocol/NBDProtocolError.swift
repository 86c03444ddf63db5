/// A connection-fatal protocol violation by the peer: the connection is closed (a hard disconnect,
/// nbd-proto.md "Termination of the session during option haggling" and "Terminating the transmission
/// phase"). Per-request failures are not errors of this type; they become error replies.
public struct NBDProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case badMagic, badClientFlags, optionTooLarge, exportNameRefused, unexpectedData, truncated, tlsRequired
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }
        /// A magic number was wrong (option or request header).
        public static let badMagic = Code(.badMagic)
        /// The client set flags we did not offer (nbd-proto.md "Client flags": the server MUST drop).
        public static let badClientFlags = Code(.badClientFlags)
        /// The option data length exceeds our bound.
        public static let optionTooLarge = Code(.optionTooLarge)
        /// NBD_OPT_EXPORT_NAME named an export we do not have: we MUST terminate the session.
        public static let exportNameRefused = Code(.exportNameRefused)
        /// The peer sent bytes where none may follow (after NBD_CMD_DISC or NBD_OPT_ABORT).
        public static let unexpectedData = Code(.unexpectedData)
        /// The connection ended in the middle of a message.
        public static let truncated = Code(.truncated)
        /// FORCEDTLS: the client tried to enter transmission with NBD_OPT_EXPORT_NAME before STARTTLS
        /// (nbd-proto.md "FORCEDTLS mode": the server MUST terminate the session).
        public static let tlsRequired = Code(.tlsRequired)

        public var description: String {
            switch base {
            case .badMagic: "bad magic"
            case .badClientFlags: "bad client flags"
            case .optionTooLarge: "option too large"
            case .exportNameRefused: "export name refused"
            case .unexpectedData: "unexpected data"
            case .truncated: "truncated message"
            case .tlsRequired: "TLS required"
            }
        }
    }

    public var code: Code
    /// Human-readable details (never contains secrets; NBD carries none).
    public var detail: String

    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    public var description: String { "NBD protocol error: \(code): \(detail)" }

    /// Errors compare by code only, never by detail.
    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }
}
