import NBDProtocol
import Testing

struct ValidationCase: Sendable, CustomTestStringConvertible {
    var name: String
    var header: NBDRequestHeader
    var expected: NBDErrorCode?
    var readOnly = false
    var structured = false
    var exportFlags: NBDTransmissionFlags = [.sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes]
    var testDescription: String { name }
}

private func h(_ command: NBDCommand, _ offset: UInt64, _ length: UInt32, _ flags: NBDCommandFlags = []) -> NBDRequestHeader {
    NBDRequestHeader(flags: flags, command: command, cookie: 1, offset: offset, length: length)
}

let size: UInt64 = 1 << 20  // 1 MiB export, 512-byte blocks, 64 KiB maximum payload

let validationCases: [ValidationCase] = [
    .init(name: "read ok", header: h(.read, 0, 4096), expected: nil),
    .init(name: "read last block", header: h(.read, size - 512, 512), expected: nil),
    .init(name: "write ok with FUA", header: h(.write, 512, 512, .fua), expected: nil),
    .init(name: "flush ok", header: h(.flush, 0, 0), expected: nil),
    .init(name: "trim ok", header: h(.trim, 0, 1 << 20), expected: nil),
    .init(name: "trim longer than max payload ok", header: h(.trim, 0, UInt32(size)), expected: nil),
    .init(name: "zeroes ok with NO_HOLE|FUA", header: h(.writeZeroes, 0, 512, [.noHole, .fua]), expected: nil),
    .init(name: "cache ok", header: h(.cache, 0, 512), expected: nil),
    .init(name: "disconnect ok", header: h(.disconnect, 0, 0), expected: nil),
    .init(name: "FUA on read accepted when advertised", header: h(.read, 0, 512, .fua), expected: nil),
    .init(name: "zero-length read accepted", header: h(.read, 0, 0), expected: nil),
    .init(name: "zero-length write at end accepted", header: h(.write, size, 0), expected: nil),
    .init(name: "unknown command", header: h(NBDCommand(rawValue: 99), 0, 0), expected: .einval),
    .init(name: "block status without contexts", header: h(.blockStatus, 0, 512), expected: .einval),
    .init(name: "resize", header: h(.resize, 0, 0), expected: .einval),
    .init(name: "unknown flag bit 15", header: h(.read, 0, 512, NBDCommandFlags(rawValue: 0x8000)), expected: .einval),
    .init(name: "NO_HOLE on write", header: h(.write, 0, 512, .noHole), expected: .einval),
    .init(name: "REQ_ONE on read", header: h(.read, 0, 512, .reqOne), expected: .einval),
    .init(name: "DF without structured replies", header: h(.read, 0, 512, .dontFragment), expected: .einval),
    .init(name: "DF with structured replies", header: h(.read, 0, 512, .dontFragment), expected: nil, structured: true),
    .init(name: "FAST_ZERO not advertised", header: h(.writeZeroes, 0, 512, .fastZero), expected: .einval),
    .init(name: "FAST_ZERO advertised", header: h(.writeZeroes, 0, 512, .fastZero), expected: nil,
          exportFlags: [.sendWriteZeroes, .sendFastZero]),
    .init(name: "FUA not advertised", header: h(.write, 0, 512, .fua), expected: .einval, exportFlags: [.sendFlush]),
    .init(name: "flush not advertised", header: h(.flush, 0, 0), expected: .einval, exportFlags: []),
    .init(name: "trim not advertised", header: h(.trim, 0, 512), expected: .einval, exportFlags: []),
    .init(name: "zeroes not advertised", header: h(.writeZeroes, 0, 512), expected: .einval, exportFlags: []),
    .init(name: "flush with offset", header: h(.flush, 512, 0), expected: .einval),
    .init(name: "flush with length", header: h(.flush, 0, 512), expected: .einval),
    .init(name: "write on read-only", header: h(.write, 0, 512), expected: .eperm, readOnly: true),
    .init(name: "trim on read-only", header: h(.trim, 0, 512), expected: .eperm, readOnly: true),
    .init(name: "zeroes on read-only", header: h(.writeZeroes, 0, 512), expected: .eperm, readOnly: true),
    .init(name: "read on read-only ok", header: h(.read, 0, 512), expected: nil, readOnly: true),
    .init(name: "read past end", header: h(.read, size, 512), expected: .einval),
    .init(name: "read straddling end", header: h(.read, size - 512, 1024), expected: .einval),
    .init(name: "write past end", header: h(.write, size, 512), expected: .enospc),
    .init(name: "zeroes past end", header: h(.writeZeroes, size - 512, 1024), expected: .enospc),
    .init(name: "trim past end", header: h(.trim, size, 512), expected: .einval),
    .init(name: "cache past end", header: h(.cache, size, 512), expected: .einval),
    .init(name: "offset+length overflow", header: h(.read, UInt64.max - 511, 1024), expected: .einval),
    .init(name: "write offset+length overflow", header: h(.write, UInt64.max - 511, 1024), expected: .enospc),
    .init(name: "read larger than max payload", header: h(.read, 0, 128 * 1024), expected: .einval),
    .init(name: "read larger than max payload, structured", header: h(.read, 0, 128 * 1024), expected: .eoverflow, structured: true),
    .init(name: "write larger than max payload", header: h(.write, 0, 128 * 1024), expected: .einval),
    .init(name: "write 4 GiB header", header: h(.write, 0, UInt32.max), expected: .einval),
    .init(name: "unaligned offset", header: h(.read, 100, 512), expected: .einval),
    .init(name: "unaligned length", header: h(.read, 0, 100), expected: .einval),
    .init(name: "unaligned trim", header: h(.trim, 512, 1), expected: .einval),
    .init(name: "unaligned write", header: h(.write, 1, 512), expected: .einval),
]

@Suite struct NBDRequestValidatorTests {
    @Test(arguments: validationCases)
    func validate(_ c: ValidationCase) {
        var flags = c.exportFlags
        if c.readOnly { flags.insert(.readOnly) }
        let export = NBDExport(name: "e", description: "", size: size, flags: flags, minimumBlockSize: 512, preferredBlockSize: 4096, maximumPayload: 64 * 1024)
        let validator = NBDRequestValidator(parameters: NBDTransmissionParameters(export: export, structuredReplies: c.structured))
        let result = validator.validate(c.header)
        #expect(result?.code == c.expected, "\(c.name): \(result.map { "\($0)" } ?? "accepted")")
    }
}
