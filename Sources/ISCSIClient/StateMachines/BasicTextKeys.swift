import NIOCore

/// Minimal key=value text codec (RFC 7143 §6.1) for the client's own login and discovery exchanges.
/// TODO(pdu-client): replace with ISCSIProtocol.TextKeyValues from the login branch.
struct BasicTextKeys: Sendable {
    var pairs: [(key: String, value: String)] = []

    init(_ pairs: [(String, String)] = []) { self.pairs = pairs.map { (key: $0.0, value: $0.1) } }

    subscript(key: String) -> String? { pairs.first { $0.key == key }?.value }

    func all(_ key: String) -> [String] { pairs.filter { $0.key == key }.map(\.value) }

    func encode(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 256)
        for (k, v) in pairs {
            buffer.writeString(k)
            buffer.writeInteger(UInt8(ascii: "="))
            buffer.writeString(v)
            buffer.writeInteger(UInt8(0))
        }
        return buffer
    }

    /// Parses NUL-separated key=value pairs; a missing final NUL is tolerated.
    static func parse(_ data: ByteBuffer) throws(ISCSISessionError) -> BasicTextKeys {
        var result = BasicTextKeys()
        let bytes = data.readableBytesView
        for record in bytes.split(separator: 0, omittingEmptySubsequences: true) {
            guard let eq = record.firstIndex(of: UInt8(ascii: "=")) else {
                throw ISCSISessionError.protocolViolation("text record without '='")
            }
            let key = String(decoding: record[record.startIndex..<eq], as: UTF8.self)
            let value = String(decoding: record[record.index(after: eq)...], as: UTF8.self)
            result.pairs.append((key: key, value: value))
        }
        return result
    }
}
