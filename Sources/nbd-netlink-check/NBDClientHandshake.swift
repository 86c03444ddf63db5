#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What the handshake learned about the export.
struct ExportInfo {
    var size: UInt64
    var transmissionFlags: UInt16
    /// From NBD_INFO_BLOCK_SIZE (preferred), when the server sent it.
    var preferredBlockSize: UInt32?
}

struct HandshakeError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The client side of the fixed-newstyle NBD handshake over a blocking socket (nbd-proto.md "Fixed newstyle
/// negotiation"), enough for a dev check: NBD_OPT_GO for one export, falling back to NBD_OPT_EXPORT_NAME
/// when the server answers NBD_REP_ERR_UNSUP. No structured replies are negotiated: the kernel's
/// transmission phase uses simple replies only. All integers are big-endian on the wire.
enum NBDClientHandshake {
    static let nbdMagic: UInt64 = 0x4e42_444d_4147_4943  // "NBDMAGIC"
    static let optionMagic: UInt64 = 0x4948_4156_454F_5054  // "IHAVEOPT"
    static let replyMagic: UInt64 = 0x3_e889_0455_65a9
    static let flagFixedNewstyle: UInt16 = 1 << 0
    static let flagNoZeroes: UInt16 = 1 << 1
    static let optExportName: UInt32 = 1
    static let optGo: UInt32 = 7
    static let repAck: UInt32 = 1
    static let repInfo: UInt32 = 3
    static let repErrUnsupported: UInt32 = (1 << 31) + 1
    static let infoExport: UInt16 = 0
    static let infoBlockSize: UInt16 = 3
    /// Bound on an option reply we accept (strings are at most 4096 bytes; info replies are tiny).
    static let maximumReplyLength: UInt32 = 64 * 1024

    static func perform(fd: Int32, exportName: String) throws -> ExportInfo {
        var io = BlockingIO(fd: fd)
        guard try io.readU64() == nbdMagic else { throw HandshakeError("server did not send NBDMAGIC") }
        let second = try io.readU64()
        guard second == optionMagic else {
            throw HandshakeError("server speaks the oldstyle handshake (0x\(String(second, radix: 16))), not newstyle")
        }
        let serverFlags = try io.readU16()
        guard serverFlags & flagFixedNewstyle != 0 else { throw HandshakeError("server lacks NBD_FLAG_FIXED_NEWSTYLE") }
        let noZeroes = serverFlags & flagNoZeroes != 0
        var out = [UInt8]()
        out.appendBE(UInt32(flagFixedNewstyle | (noZeroes ? flagNoZeroes : 0)))
        try io.write(out)

        // NBD_OPT_GO: u32 name length, name, u16 number of info requests, u16 each.
        let name = Array(exportName.utf8)
        out = []
        out.appendBE(optionMagic)
        out.appendBE(optGo)
        out.appendBE(UInt32(4 + name.count + 2 + 2))
        out.appendBE(UInt32(name.count))
        out += name
        out.appendBE(UInt16(1))
        out.appendBE(infoBlockSize)
        try io.write(out)

        var info = ExportInfo(size: 0, transmissionFlags: 0, preferredBlockSize: nil)
        var haveExport = false
        while true {
            guard try io.readU64() == replyMagic else { throw HandshakeError("bad option reply magic") }
            let option = try io.readU32()
            let type = try io.readU32()
            let length = try io.readU32()
            guard option == optGo else { throw HandshakeError("reply to option \(option), expected NBD_OPT_GO") }
            guard length <= maximumReplyLength else { throw HandshakeError("option reply of \(length) bytes") }
            let data = try io.read(Int(length))
            switch type {
            case repAck:
                guard haveExport else { throw HandshakeError("NBD_REP_ACK without NBD_INFO_EXPORT") }
                return info
            case repInfo:
                guard data.count >= 2 else { throw HandshakeError("NBD_REP_INFO too short") }
                let infoType = UInt16(data[0]) << 8 | UInt16(data[1])
                if infoType == infoExport {
                    guard data.count == 12 else { throw HandshakeError("NBD_INFO_EXPORT of \(data.count) bytes") }
                    info.size = data[2..<10].reduce(0) { $0 << 8 | UInt64($1) }
                    info.transmissionFlags = UInt16(data[10]) << 8 | UInt16(data[11])
                    haveExport = true
                } else if infoType == infoBlockSize, data.count == 14 {
                    info.preferredBlockSize = data[6..<10].reduce(0) { $0 << 8 | UInt32($1) }
                }
            case repErrUnsupported:
                return try exportNameFallback(io: &io, name: name, noZeroes: noZeroes)
            default:
                let message = type & (1 << 31) != 0 ? String(decoding: data, as: UTF8.self) : ""
                throw HandshakeError("server refused NBD_OPT_GO: reply type 0x\(String(type, radix: 16)) \(message)")
            }
        }
    }

    /// NBD_OPT_EXPORT_NAME: the server answers u64 size, u16 flags and (without NO_ZEROES) 124 zero bytes.
    private static func exportNameFallback(io: inout BlockingIO, name: [UInt8], noZeroes: Bool) throws -> ExportInfo {
        var out = [UInt8]()
        out.appendBE(optionMagic)
        out.appendBE(optExportName)
        out.appendBE(UInt32(name.count))
        out += name
        try io.write(out)
        let size = try io.readU64()
        let flags = try io.readU16()
        if !noZeroes { _ = try io.read(124) }
        return ExportInfo(size: size, transmissionFlags: flags, preferredBlockSize: nil)
    }
}

/// Blocking exact reads and writes on a socket.
struct BlockingIO {
    let fd: Int32

    mutating func read(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + done, count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw HandshakeError(n == 0 ? "server closed the connection" : "read: \(String(cString: strerror(errno)))") }
            done += n
        }
        return bytes
    }

    mutating func readU16() throws -> UInt16 { try read(2).reduce(0) { $0 << 8 | UInt16($1) } }
    mutating func readU32() throws -> UInt32 { try read(4).reduce(0) { $0 << 8 | UInt32($1) } }
    mutating func readU64() throws -> UInt64 { try read(8).reduce(0) { $0 << 8 | UInt64($1) } }

    func write(_ bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, bytes.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw HandshakeError("write: \(String(cString: strerror(errno)))") }
            done += n
        }
    }
}

extension Array where Element == UInt8 {
    mutating func appendBE<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }
}

/// Connects a SOCK_STREAM unix socket to `path`.
func connectUnix(path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw HandshakeError("socket(AF_UNIX): \(String(cString: strerror(errno)))") }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    let capacity = MemoryLayout.size(ofValue: address.sun_path)
    guard bytes.count < capacity else {
        close(fd)
        throw HandshakeError("unix socket path longer than \(capacity - 1) bytes")
    }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard rc == 0 else {
        let message = String(cString: strerror(errno))
        close(fd)
        throw HandshakeError("connect(\(path)): \(message)")
    }
    return fd
}
