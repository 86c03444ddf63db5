import Testing

@testable import ISCSIConfig

@Suite struct ConfigKeysTests {
    @Test(arguments: [
        ("node.session.auth.authmethod", "CHAP"),
        ("node.session.auth.authmethod", "None"),
        ("node.session.auth.chap_algs", "SHA3-256,SHA256,SHA1,MD5"),
        ("node.session.auth.chap_algs", "MD5"),
        ("node.session.auth.chap_algs", "sha256, md5"),
        ("node.conn[0].iscsi.HeaderDigest", "CRC32C,None"),
        ("node.conn[0].iscsi.DataDigest", "None"),
        ("node.session.iscsi.InitialR2T", "Yes"),
        ("node.session.iscsi.ImmediateData", "no"),
        ("node.session.cmds_max", "2048"),
        ("node.session.cmds_max", "2"),
        ("node.session.queue_depth", "1024"),
        ("node.conn[0].iscsi.MaxRecvDataSegmentLength", "512"),
        ("node.session.iscsi.MaxBurstLength", "16777215"),
        ("node.startup", "onboot"),
        ("isns.port", "3205"),
        ("isns.address", "192.0.2.1"),
        ("node.conn[0].timeo.noop_out_interval", "0"),
        ("some.unknown.key", "anything at all"),
    ])
    func validValues(key: String, value: String) throws {
        try ConfigKeys.validate(key: key, value: value)
    }

    @Test(arguments: [
        ("node.session.auth.authmethod", "KRB5"),
        ("node.session.auth.chap_algs", "SHA512"),
        ("node.session.auth.chap_algs", "MD5,MD5"),
        ("node.session.auth.chap_algs", ""),
        ("node.conn[0].iscsi.HeaderDigest", "CRC32"),
        ("node.conn[0].iscsi.HeaderDigest", "CRC32C,"),
        ("node.session.iscsi.InitialR2T", "true"),
        ("node.session.cmds_max", "100"),
        ("node.session.cmds_max", "4096"),
        ("node.session.cmds_max", "1"),
        ("node.session.queue_depth", "0"),
        ("node.session.queue_depth", "1025"),
        ("node.conn[0].iscsi.MaxRecvDataSegmentLength", "511"),
        ("node.session.iscsi.FirstBurstLength", "16777216"),
        ("node.session.iscsi.MaxBurstLength", "12k"),
        ("node.startup", "sometimes"),
        ("isns.port", "0"),
        ("isns.port", "70000"),
        ("node.conn[0].timeo.login_timeout", "0"),
        ("node.conn[0].timeo.login_timeout", "-5"),
    ])
    func invalidValues(key: String, value: String) {
        #expect {
            try ConfigKeys.validate(key: key, value: value)
        } throws: { error in
            (error as? ISCSIConfigError)?.code == .invalidValue && (error as? ISCSIConfigError)?.key == key
        }
    }

    @Test func badValueInFileNamesFileAndLine() {
        let text = "# header\nnode.startup = manual\nnode.session.queue_depth = 5000\n"
        #expect {
            try ISCSIDConf.parse(text, file: "/cfg/iscsid.conf")
        } throws: { error in
            guard let e = error as? ISCSIConfigError else { return false }
            return e.code == .invalidValue && e.file == "/cfg/iscsid.conf" && e.line == 3
                && e.description.hasPrefix("/cfg/iscsid.conf:3: ")
        }
    }

    @Test func unknownKeysAreNeverErrors() throws {
        let doc = try ISCSIDConf.parse("node.session.xmit_thread_priority = -20\nfoo.bar = ???\n")
        #expect(ConfigKeys.unknownKeys(in: doc) == ["node.session.xmit_thread_priority", "foo.bar"])
    }

    @Test func secretValuesNeverAppearInErrors() {
        let secret = String(repeating: "s3cr3t!", count: 40)  // 280 bytes: too long
        do {
            try ConfigKeys.validate(key: ConfigKeys.password, value: secret)
            Issue.record("expected an error")
        } catch {
            #expect(!error.description.contains("s3cr3t"))
            #expect(error.description.contains(ConfigKeys.password))
        }
    }

    @Test func chapAlgorithmCodes() {
        #expect(CHAPAlgorithm.md5.chapA == 5)
        #expect(CHAPAlgorithm.sha1.chapA == 6)
        #expect(CHAPAlgorithm.sha256.chapA == 7)
        #expect(CHAPAlgorithm.sha3_256.chapA == 8)
    }
}
