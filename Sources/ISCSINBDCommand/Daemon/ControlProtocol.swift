import Foundation

/// The daemon's control protocol: one JSON object per line over the unix socket
/// (/run/iscsi-nbd/control.sock, mode 0600, root only). The client sends one request line, the daemon
/// answers with one response line and closes. Secrets never travel: the daemon reads CHAP credentials
/// from the node records itself; the client sends target, portal and the configuration directory.
enum ControlProtocol {
    /// Default control socket path (the socket unit's ListenStream=).
    static let defaultSocketPath = "/run/iscsi-nbd/control.sock"
    /// Environment override for the path (tests, private daemons).
    static let socketEnvironmentKey = "ISCSI_NBD_CONTROL_SOCKET"
    /// Longest line accepted in either direction. Requests are small; a response lists sessions.
    static let maximumRequestLength = 16 * 1024
    static let maximumResponseLength = 4 * 1024 * 1024

    static func socketPath(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let p = environment[socketEnvironmentKey], !p.isEmpty { return p }
        return defaultSocketPath
    }

    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var bytes = Array(try encoder.encode(value))
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    static func decode<T: Decodable>(_ type: T.Type, line: some Collection<UInt8>) throws(ControlProtocolError) -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(line))
        } catch {
            throw ControlProtocolError("malformed \(T.self): \(error)")
        }
    }
}

struct ControlProtocolError: Error, Hashable, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Splits a byte stream into lines, bounded: `next()` returns nil while a line is incomplete and throws
/// when a line exceeds the limit (the peer is then dropped; nothing is allocated beyond the limit).
struct ControlLineDecoder {
    let limit: Int
    private var buffer: [UInt8] = []

    init(limit: Int) { self.limit = limit }

    mutating func append(_ bytes: some Sequence<UInt8>) { buffer.append(contentsOf: bytes) }

    mutating func next() throws(ControlProtocolError) -> [UInt8]? {
        if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
            guard newline <= limit else { throw ControlProtocolError("line of \(newline) bytes exceeds \(limit)") }
            let line = Array(buffer[..<newline])
            buffer.removeSubrange(...newline)
            return line
        }
        guard buffer.count <= limit else { throw ControlProtocolError("line longer than \(limit) bytes") }
        return nil
    }

    var pendingCount: Int { buffer.count }
}

/// What the CLI asks the daemon.
struct ControlRequest: Codable, Hashable, Sendable {
    enum Operation: String, Codable, Hashable, Sendable {
        case ping, login, logout, sessions
        /// `-m session -s`: the sessions with their counters (`ControlSession.stats`).
        case stats
    }
    var op: Operation
    /// Target IQN filter (nil = every record / session).
    var target: String?
    /// Portal filter, HOST:PORT.
    var portal: String?
    /// Where the node records live (the CLI's --config-dir); nil = the daemon's own.
    var configDir: String?
    /// `-r SID`: one session (sessions, stats); nil = every one.
    var sid: Int? = nil

    init(op: Operation, target: String? = nil, portal: String? = nil, configDir: String? = nil, sid: Int? = nil) {
        self.op = op
        self.target = target
        self.portal = portal
        self.configDir = configDir
        self.sid = sid
    }
}

/// One LUN of a session as a kernel device.
struct ControlLUN: Codable, Hashable, Sendable {
    var lun: UInt16
    /// "/dev/nbdN", nil while not attached.
    var device: String?
    /// "/dev/disk/by-path/ip-HOST:PORT-iscsi-IQN-lun-N"
    var byPath: String?
    var size: UInt64
    var blockSize: UInt32
    var backend: String?
    var state: String
    /// Whether the LUN's I/O flows, and how fast it was over the last minute (`-P 1`). Optional: a CLI and
    /// a daemon of different versions still understand each other.
    var health: ControlHealth? = nil
}

/// A LUN's health: LOGGED_IN, RECOVERING (since when, attempts, the last error) or FAILED, and the request
/// latency over the last minute.
struct ControlHealth: Codable, Hashable, Sendable {
    var state: String
    /// While recovering: when the connection was lost (seconds since 1970).
    var since: Double?
    var attempts: Int?
    var lastError: String?
    /// Requests answered over the last minute, and their p50 and p99 latencies in nanoseconds.
    var requests: UInt64
    var p50: UInt64?
    var p99: UInt64?
}

/// `-m session -s`: iscsiadm's "iSCSI SNMP" counters, in its order, and ours ("iSCSI Extended").
struct ControlStats: Codable, Hashable, Sendable {
    var snmp: [[String]]
    var extended: [[String]]
}

/// One session as the daemon reports it (`-m session`).
struct ControlSession: Codable, Hashable, Sendable {
    var id: Int
    var target: String
    var portal: String
    var tpgt: Int
    var state: String
    var initiatorName: String?
    var tsih: UInt16?
    var isid: String?
    var luns: [ControlLUN]
    /// Negotiated operational parameters, in print order (key, value).
    var negotiated: [[String]]
    /// Timeouts in effect (key, value), e.g. replacement_timeout.
    var timeouts: [[String]]
    /// The last error (login failure, connection loss), if any.
    var lastError: String?
    /// iscsiadm's CHAP section (key, value), secrets masked; first row: the method in use. Optional, so
    /// a CLI and a daemon of different versions still understand each other.
    var auth: [[String]]? = nil
    /// Counters, for the stats operation only.
    var stats: ControlStats? = nil
}

/// The daemon's answer.
struct ControlResponse: Codable, Hashable, Sendable {
    var ok: Bool
    /// iscsiadm-style exit status on failure (21 = no objects, 24 = login failure, ...).
    var code: Int32?
    var error: String?
    var sessions: [ControlSession]
    /// Per-node results of a login or logout, in order: human-readable lines.
    var messages: [String]

    static func success(sessions: [ControlSession] = [], messages: [String] = []) -> ControlResponse {
        ControlResponse(ok: true, code: nil, error: nil, sessions: sessions, messages: messages)
    }

    static func failure(_ status: ExitStatus, _ error: String, sessions: [ControlSession] = [], messages: [String] = []) -> ControlResponse {
        ControlResponse(ok: false, code: status.rawValue, error: error, sessions: sessions, messages: messages)
    }
}
