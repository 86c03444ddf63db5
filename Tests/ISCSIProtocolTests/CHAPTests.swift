import ISCSIProtocol
import Testing

/// Expected digests computed independently with Python's hashlib:
/// `hashlib.new(name, bytes([1]) + b"secretsecret" + bytes(range(16))).hexdigest()`.
@Suite struct CHAPTests {
    static let challenge = Array(UInt8(0)..<16)
    static let secret = Array("secretsecret".utf8)

    @Test(arguments: [
        (CHAPAlgorithm.md5, "0x226dc576c33f04ff9c3a200ffe35f442"),
        (.sha1, "0xae35ac1694de2cf7e68e790fbface9a28501fed7"),
        (.sha256, "0x024aef34e176668b34ec2bf7f5525e3bf7f0e94d7cec77cb07d08c3d5a8e23ca"),
        (.sha3_256, "0xe2bd0aba5f885a39aa4fbebccc63203c2f728f034cbaf009b44c2f0c5544f172"),
    ])
    func responseVectors(algorithm: CHAPAlgorithm, expected: String) {
        let response = CHAP.response(algorithm: algorithm, identifier: 1, secret: Self.secret, challenge: Self.challenge)
        #expect(TextValue.hexConstant(response) == expected)
        #expect(response.count == algorithm.digestLength)
    }

    @Test func constantTimeEqual() {
        #expect(CHAP.constantTimeEqual([1, 2, 3], [1, 2, 3]))
        #expect(!CHAP.constantTimeEqual([1, 2, 3], [1, 2, 4]))
        #expect(!CHAP.constantTimeEqual([1, 2, 3], [1, 2]))
        #expect(CHAP.constantTimeEqual([], []))
    }

    @Test func algorithmNumbersAndNames() {
        #expect(CHAPAlgorithm.md5.rawValue == 5)
        #expect(CHAPAlgorithm.sha1.rawValue == 6)
        #expect(CHAPAlgorithm.sha256.rawValue == 7)
        #expect(CHAPAlgorithm.sha3_256.rawValue == 8)
        #expect(CHAPAlgorithm(name: "SHA3-256") == .sha3_256)
        #expect(CHAPAlgorithm(name: "sha256") == .sha256)
        #expect(CHAPAlgorithm(name: "MD5") == .md5)
        #expect(CHAPAlgorithm(name: "SHA512") == nil)
    }

    @Test func credentialsNeverPrintSecrets() {
        let credentials = CHAPCredentials(username: "alice", secret: "very-secret-1",
                                          mutual: .init(username: "target", secret: "other-secret-2"))
        for text in [credentials.description, String(reflecting: credentials), "\(credentials)",
                     String(describing: [credentials]), dumped(credentials)] {
            #expect(!text.contains("very-secret-1"), "\(text)")
            #expect(!text.contains("other-secret-2"), "\(text)")
        }
        #expect(credentials.description.contains("alice"))
    }

    private func dumped<T>(_ value: T) -> String {
        var out = ""
        dump(value, to: &out)
        return out
    }
}
