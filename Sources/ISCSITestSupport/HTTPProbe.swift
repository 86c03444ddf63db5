import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A raw HTTP client for tests of the metrics endpoint: exact bytes out (malformed or oversized requests
/// too), whatever comes back until the server closes, with a deadline. Over TCP (IPv4) or a unix socket.
public struct HTTPProbe: Sendable {
    public enum Address: Sendable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    public let address: Address

    public init(_ address: Address) { self.address = address }

    /// Connects; the caller owns the descriptor.
    public func connect() throws -> Int32 {
        switch address {
        case .tcp(let host, let port):
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, host, &addr.sin_addr)
            return try Self.connect(family: AF_INET, to: &addr, "\(host):\(port)")
        case .unix(let path):
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
            return try Self.connect(family: AF_UNIX, to: &addr, path)
        }
    }

    private static func connect<Address>(family: Int32, to addr: inout Address, _ name: String) throws -> Int32 {
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<Address>.size)) }
        }
        guard rc == 0 else {
            close(fd)
            throw TestPeerError("connect \(name): errno \(errno)")
        }
        return fd
    }

    /// Sends `request` and reads until the server closes the connection (or `timeout` seconds pass: then
    /// what arrived so far, and `closed` false).
    public func exchange(_ request: [UInt8], timeout: Double = 10) throws -> (response: String, closed: Bool) {
        let fd = try connect()
        defer { close(fd) }
        var sent = 0
        while sent < request.count {
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { break }  // the server may close early (a request that is too large)
            sent += n
        }
        return Self.readUntilClosed(fd, timeout: timeout)
    }

    /// `METHOD PATH` with a Host header; the body of the response and its status line.
    public func request(_ method: String = "GET", _ path: String = "/metrics", timeout: Double = 10) throws -> (status: Int, body: String) {
        let (response, _) = try exchange(Array("\(method) \(path) HTTP/1.1\r\nHost: test\r\n\r\n".utf8), timeout: timeout)
        guard let end = response.range(of: "\r\n\r\n") else { throw TestPeerError("no HTTP response: \(response)") }
        let statusLine = response[..<end.lowerBound].split(separator: "\r\n").first ?? ""
        let status = statusLine.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        return (status, String(response[end.upperBound...]))
    }

    public static func readUntilClosed(_ fd: Int32, timeout: Double) -> (response: String, closed: Bool) {
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, 100)
            if ready <= 0 { continue }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return (String(decoding: data, as: UTF8.self), true) }
            data.append(contentsOf: buffer[0..<n])
        }
        return (String(decoding: data, as: UTF8.self), false)
    }
}

/// Samples of a Prometheus text exposition, by metric name and labels (a reader for test assertions; the
/// tests check the format itself with promtool and python3-prometheus-client).
public struct PrometheusSamples: Sendable {
    public struct Sample: Sendable {
        public var name: String
        public var labels: [String: String]
        public var value: Double
    }

    public let samples: [Sample]

    public init(_ text: String) {
        var out: [Sample] = []
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            let series = line[..<space]
            var labels: [String: String] = [:]
            var name = String(series)
            if let open = series.firstIndex(of: "{"), series.hasSuffix("}") {
                name = String(series[..<open])
                let body = series[series.index(after: open)..<series.index(before: series.endIndex)]
                // label="value" pairs; values here never contain a quote or a comma followed by a label.
                for pair in body.split(separator: ",") {
                    guard let eq = pair.firstIndex(of: "=") else { continue }
                    labels[String(pair[..<eq])] = String(pair[pair.index(after: eq)...]).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                }
            }
            out.append(Sample(name: name, labels: labels, value: value))
        }
        samples = out
    }

    /// The sum of the samples named `name` whose labels include `labels`.
    public func sum(_ name: String, _ labels: [String: String] = [:]) -> Double {
        samples.filter { s in s.name == name && labels.allSatisfy { s.labels[$0.key] == $0.value } }.reduce(0) { $0 + $1.value }
    }

    public func has(_ name: String) -> Bool { samples.contains { $0.name == name } }
}
