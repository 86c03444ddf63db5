import ISCSIProtocol
import NIOCore
import Testing

/// `|` stands for the NUL separator.
private func buffer(_ string: String) -> ByteBuffer {
    ByteBuffer(bytes: Array(string.utf8).map { $0 == UInt8(ascii: "|") ? 0 : $0 })
}

@Suite struct TextKeyValuesTests {
    @Test func roundTripPreservesOrderAndBytes() throws {
        let keys: TextKeyValues = ["InitiatorName": "iqn.2026-01.test:host", "SessionType": "Normal",
                                   "TargetAlias": "Bob-s Disk é", "X-com.example.key": ""]
        let encoded = keys.encoded()
        #expect(encoded.readableBytes == keys.encodedLength)
        #expect(Array(encoded.readableBytesView) ==
            Array("InitiatorName=iqn.2026-01.test:host\0SessionType=Normal\0TargetAlias=Bob-s Disk é\0X-com.example.key=\0".utf8))
        let decoded = try TextKeyValues.decode(encoded)
        #expect(decoded == keys)
        #expect(decoded["SessionType"] == "Normal")
        #expect(decoded["Missing"] == nil)
    }

    @Test func valueIsEverythingAfterFirstEquals() throws {
        let decoded = try TextKeyValues.decode(buffer("X-a=b=c|"))
        #expect(decoded["X-a"] == "b=c")
    }

    @Test func toleratesMissingFinalNulAndTrailingPadding() throws {
        #expect(try TextKeyValues.decode(buffer("A=1|B=2")).keys == ["A", "B"])
        #expect(try TextKeyValues.decode(buffer("A=1|||")).keys == ["A"])
        #expect(try TextKeyValues.decode(ByteBuffer()).isEmpty)
    }

    @Test(arguments: [
        ("A=1||B=2|", TextError.Kind.emptyPair),
        ("NoEquals|", .missingEquals),
        ("lowercase=1|", .invalidKey),
        ("=1|", .invalidKey),
        ("Bad Key=1|", .invalidKey),
        ("Bad/Key=1|", .invalidKey),
        ("A=1|A=2|", .duplicateKey),
    ])
    func rejectsMalformed(input: String, kind: TextError.Kind) {
        #expect(throws: TextError.self) { try TextKeyValues.decode(buffer(input)) }
        do {
            _ = try TextKeyValues.decode(buffer(input))
        } catch {
            #expect(error.kind == kind)
        }
    }

    @Test func keyLengthLimits() throws {
        let key63 = "K" + String(repeating: "a", count: 62)
        #expect(try TextKeyValues.decode(buffer("\(key63)=1|")).keys == [key63])
        #expect(throws: TextError.self) { try TextKeyValues.decode(buffer("\(key63)a=1|")) }
        // X- and X# extension names get the two prefix characters on top.
        let xKey = "X-" + String(repeating: "a", count: 63)
        #expect(try TextKeyValues.decode(buffer("\(xKey)=1|")).keys == [xKey])
        #expect(try TextKeyValues.decode(buffer("X#NodeArchitecture=Linux|"))["X#NodeArchitecture"] == "Linux")
        #expect(throws: TextError.self) { try TextKeyValues.decode(buffer("A#B=1|")) }
    }

    @Test func invalidUTF8Rejected() {
        var bytes = ByteBuffer(bytes: Array("TargetAlias=".utf8))
        bytes.writeBytes([0xff, 0xfe, 0])
        #expect(throws: TextError.self) { try TextKeyValues.decode(bytes) }
    }

    @Test func valueAndTotalLimits() throws {
        let long = String(repeating: "a", count: 8193)
        #expect(throws: TextError.self) { try TextKeyValues.decode(buffer("TargetAlias=\(long)|")) }
        // Binary values may be longer than the plain-value limit.
        let binary = "0x" + String(repeating: "ab", count: 5000)
        #expect(try TextKeyValues.decode(buffer("CHAP_C=\(binary)|"))["CHAP_C"] == binary)
        let limits = TextLimits(maxTotalBytes: 16)
        #expect(throws: TextError.self) { try TextKeyValues.decode(buffer("TargetAlias=12345678|"), limits: limits) }
        let fewPairs = TextLimits(maxPairs: 2)
        #expect(throws: TextError.self) { try TextKeyValues.decode(buffer("A=1|B=2|C=3|"), limits: fewPairs) }
    }

    @Test func duplicatePolicies() throws {
        let text = buffer("TargetName=a|TargetAddress=1.2.3.4,1|TargetAddress=5.6.7.8,1|TargetName=b|")
        #expect(throws: TextError.self) { try TextKeyValues.decode(text) }
        let all = try TextKeyValues.decode(text, duplicates: .allow)
        #expect(all.values(for: "TargetName") == ["a", "b"])
        let login = try TextKeyValues.decode(buffer("TargetAddress=a|TargetAddress=b|"))
        #expect(login.values(for: "TargetAddress") == ["a", "b"])
    }

    @Test func descriptionRedactsCHAPResponse() {
        let keys: TextKeyValues = ["CHAP_N": "user", "CHAP_R": "0x0123456789abcdef"]
        #expect(!keys.description.contains("0123456789abcdef"))
        #expect(keys.description.contains("CHAP_N=user"))
    }
}

@Suite struct TextValueTests {
    @Test func numbers() {
        #expect(TextValue.parseNumber("0") == 0)
        #expect(TextValue.parseNumber("262144") == 262144)
        #expect(TextValue.parseNumber("0x10") == 16)
        #expect(TextValue.parseNumber("0XfF") == 255)
        #expect(TextValue.parseNumber("18446744073709551615") == UInt64.max)
        #expect(TextValue.parseNumber("18446744073709551616") == nil)
        #expect(TextValue.parseNumber("0x10000000000000000") == nil)
        #expect(TextValue.parseNumber("") == nil)
        #expect(TextValue.parseNumber("0x") == nil)
        #expect(TextValue.parseNumber("-1") == nil)
        #expect(TextValue.parseNumber("12a") == nil)
        #expect(TextValue.parseNumber("Reject") == nil)
    }

    @Test func booleans() {
        #expect(TextValue.parseBoolean("Yes") == true)
        #expect(TextValue.parseBoolean("No") == false)
        #expect(TextValue.parseBoolean("yes") == nil)
        #expect(TextValue.format(true) == "Yes")
    }

    @Test func hexBinary() {
        #expect(TextValue.decodeBinary("0x00ff10") == [0x00, 0xff, 0x10])
        #expect(TextValue.decodeBinary("0XABc") == [0x0a, 0xbc])  // odd digits: implicit leading zero nibble
        #expect(TextValue.decodeBinary("0x") == nil)
        #expect(TextValue.decodeBinary("0xzz") == nil)
        #expect(TextValue.decodeBinary("1234") == nil)
        #expect(TextValue.decodeBinary("0x" + String(repeating: "00", count: 1025)) == nil)
        #expect(TextValue.decodeBinary("0x" + String(repeating: "00", count: 1024))?.count == 1024)
        #expect(TextValue.hexConstant([0x00, 0xab, 0x0f]) == "0x00ab0f")
    }

    @Test func base64Binary() {
        // Vectors from python3 base64.b64encode.
        #expect(TextValue.decodeBinary("0bAAECAwQFBgcICQoLDA0ODw==") == Array(0..<16))
        #expect(TextValue.decodeBinary("0BYWI=") == Array("ab".utf8))
        #expect(TextValue.decodeBinary("0bYWI") == nil)  // not a multiple of 4
        #expect(TextValue.decodeBinary("0bY===") == nil)
        #expect(TextValue.decodeBinary("0bYW=I") == nil)
        #expect(TextValue.decodeBinary("0bYWI=YWI=") == nil)  // padding before the end
        #expect(TextValue.decodeBinary("0bYW*=") == nil)
        #expect(TextValue.base64Constant(Array(0..<16)) == "0bAAECAwQFBgcICQoLDA0ODw==")
        #expect(TextValue.base64Constant(Array("ab".utf8)) == "0bYWI=")
        for length in 1..<10 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            #expect(TextValue.decodeBinary(TextValue.base64Constant(bytes)) == bytes)
            #expect(TextValue.decodeBinary(TextValue.hexConstant(bytes)) == bytes)
        }
    }
}
