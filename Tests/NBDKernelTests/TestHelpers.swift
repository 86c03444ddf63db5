import NIOCore

@testable import NBDKernel

/// Hex helpers for byte-exact fixtures (whitespace ignored).
func hexBytes(_ hex: String) -> [UInt8] {
    let digits = hex.filter { !$0.isWhitespace }
    precondition(digits.count % 2 == 0, "odd hex fixture")
    var result: [UInt8] = []
    var index = digits.startIndex
    while index < digits.endIndex {
        let next = digits.index(index, offsetBy: 2)
        result.append(UInt8(digits[index..<next], radix: 16)!)  // test fixtures only
        index = next
    }
    return result
}

func buffer(_ hex: String) -> ByteBuffer { ByteBuffer(bytes: hexBytes(hex)) }

func hex(_ buffer: ByteBuffer) -> String {
    buffer.readableBytesView.map { byte in
        let digits = String(byte, radix: 16)
        return digits.count == 1 ? "0" + digits : digits
    }.joined()
}

func writer(_ body: (inout NetlinkAttributeWriter) throws -> Void) rethrows -> ByteBuffer {
    var writer = NetlinkAttributeWriter(buffer: ByteBuffer())
    try body(&writer)
    return writer.buffer
}
