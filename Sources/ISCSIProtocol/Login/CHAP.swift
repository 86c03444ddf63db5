import Crypto

/// A CHAP hash algorithm, by its CHAP_A number.
///
/// RFC 7143 §12.1.3 only defines 5 (MD5, RFC 1994) and requires initiators to always offer it. 6, 7 and 8
/// follow the IANA "PPP Authentication Algorithms" registry as used by Linux (LIO target: CHAP_DIGEST_SHA1 6,
/// CHAP_DIGEST_SHA256 7, CHAP_DIGEST_SHA3_256 8, challenge length = digest size) and open-iscsi.
///
/// tgt quirk (facts from tgt's usr/iscsi/chap.c, tgt 1.0.85 installed here): tgt only knows "5" (MD5) and
/// "7", and treats 7 as **SHA-1** with a 20-byte digest (CHAP_DIGEST_ALG_SHA1 = 7, inherited from IET); it
/// picks the first of "5"/"7" in the initiator's CHAP_A list and sends a random challenge of 25 to 49 bytes
/// (hex). A response longer than its digest length is refused. So when a target answers CHAP_A=7 with a
/// challenge that is not 32 bytes long (LIO's SHA-256 challenges are exactly 32 bytes), the state machine
/// answers with SHA-1; if that guess is wrong the target fails the login and `LoginError.chapAlgorithmRejected`
/// tells the client to retry with MD5.
public enum CHAPAlgorithm: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case md5 = 5
    case sha1 = 6
    case sha256 = 7
    case sha3_256 = 8

    /// Digest length in bytes.
    public var digestLength: Int {
        switch self {
        case .md5: 16
        case .sha1: 20
        case .sha256, .sha3_256: 32
        }
    }

    /// Preference when offering: strongest first.
    var strength: Int {
        switch self {
        case .md5: 0
        case .sha1: 1
        case .sha256: 2
        case .sha3_256: 3
        }
    }

    public var description: String {
        switch self {
        case .md5: "MD5"
        case .sha1: "SHA-1"
        case .sha256: "SHA-256"
        case .sha3_256: "SHA3-256"
        }
    }

    /// Parses "MD5", "SHA1", "SHA256", "SHA3-256" (open-iscsi `node.session.auth.chap_algs` names) or a number.
    public init?(name: String) {
        switch name.uppercased().replacingDashes {
        case "MD5", "5": self = .md5
        case "SHA1", "6": self = .sha1
        case "SHA256", "7": self = .sha256
        case "SHA3256", "8": self = .sha3_256
        default: return nil
        }
    }
}

extension String {
    var replacingDashes: String { String(self.filter { $0 != "-" && $0 != "_" }) }
}

/// The hash actually computed for a CHAP exchange (distinct from the CHAP_A number because of tgt's "7").
enum CHAPHash: Sendable, Hashable {
    case md5, sha1, sha256, sha3_256

    init(_ algorithm: CHAPAlgorithm) {
        switch algorithm {
        case .md5: self = .md5
        case .sha1: self = .sha1
        case .sha256: self = .sha256
        case .sha3_256: self = .sha3_256
        }
    }

    var digestLength: Int {
        switch self {
        case .md5: 16
        case .sha1: 20
        case .sha256, .sha3_256: 32
        }
    }
}

/// CHAP credentials (RFC 7143 §12.1.3). `description`, `debugDescription` and the mirror never show secrets.
public struct CHAPCredentials: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    /// A name and secret pair.
    public struct Identity: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible,
        CustomReflectable
    {
        public var username: String
        public var secret: String

        public init(username: String, secret: String) {
            self.username = username
            self.secret = secret
        }

        public var description: String { "\(username) (secret redacted)" }
        public var debugDescription: String { description }
        public var customMirror: Mirror { Mirror(self, children: ["username": username, "secret": "<redacted>"]) }
    }

    /// The initiator's name and secret (open-iscsi `node.session.auth.username` / `password`).
    public var username: String
    public var secret: String
    /// For mutual CHAP: the name and secret the target must prove (`username_in` / `password_in`).
    public var mutual: Identity?

    public init(username: String, secret: String, mutual: Identity? = nil) {
        self.username = username
        self.secret = secret
        self.mutual = mutual
    }

    public var description: String {
        var text = "CHAP(user: \(username), secret: <redacted>"
        if let mutual { text += ", mutual user: \(mutual.username), mutual secret: <redacted>" }
        return text + ")"
    }

    public var debugDescription: String { description }

    public var customMirror: Mirror {
        Mirror(self, children: ["username": username, "secret": "<redacted>", "mutual": mutual as Any])
    }
}

/// Source of random CHAP identifiers and challenges (injectable for tests).
public struct CHAPRandomSource: Sendable {
    let bytes: @Sendable (Int) -> [UInt8]

    public init(_ bytes: @escaping @Sendable (Int) -> [UInt8]) {
        self.bytes = bytes
    }

    /// `SystemRandomNumberGenerator` (getrandom(2) on Linux).
    public static let system = CHAPRandomSource { count in
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }
}

/// CHAP computations (RFC 1994 §4.1).
public enum CHAP {
    /// RFC 1994 §4.1: "The Response Value is the one-way hash calculated over a stream of octets consisting of
    /// the Identifier, followed by (concatenated with) the "secret", followed by (concatenated with) the
    /// Challenge Value."
    public static func response(algorithm: CHAPAlgorithm, identifier: UInt8, secret: [UInt8],
                                challenge: [UInt8]) -> [UInt8] {
        response(hash: CHAPHash(algorithm), identifier: identifier, secret: secret, challenge: challenge)
    }

    static func response(hash: CHAPHash, identifier: UInt8, secret: [UInt8], challenge: [UInt8]) -> [UInt8] {
        func run<H: HashFunction>(_ type: H.Type) -> [UInt8] {
            var hasher = H()
            hasher.update(data: [identifier])
            hasher.update(data: secret)
            hasher.update(data: challenge)
            return Array(hasher.finalize())
        }
        switch hash {
        case .md5: return run(Insecure.MD5.self)
        case .sha1: return run(Insecure.SHA1.self)
        case .sha256: return run(SHA256.self)
        case .sha3_256: return run(SHA3_256.self)
        }
    }

    /// Compares two byte strings in time independent of where they differ (the lengths are not secret).
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }
}
