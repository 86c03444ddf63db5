/// systemd socket activation (sd_listen_fds(3)) without libsystemd: systemd passes listening sockets
/// starting at fd 3 and sets LISTEN_PID (the receiving process), LISTEN_FDS (how many) and optionally
/// LISTEN_FDNAMES (colon-separated names).
enum SocketActivation {
    static let firstDescriptor: Int32 = 3
    /// More is a malformed environment, not a real unit (ours passes one).
    static let maximumDescriptors = 64

    struct Parsed: Hashable {
        var descriptors: [Int32]
        var names: [String]
    }

    /// The passed descriptors, or nil when the variables are absent or meant for another process.
    /// Throws when they are present for this process but malformed.
    static func parse(environment: [String: String], pid: Int32) throws(ControlProtocolError) -> Parsed? {
        guard let pidText = environment["LISTEN_PID"], let fdsText = environment["LISTEN_FDS"] else { return nil }
        guard let listenPID = Int32(pidText), listenPID > 0 else {
            throw ControlProtocolError("LISTEN_PID=\(pidText) is not a process id")
        }
        guard listenPID == pid else { return nil }
        guard let count = Int(fdsText), count >= 0 else { throw ControlProtocolError("LISTEN_FDS=\(fdsText) is not a count") }
        guard count <= maximumDescriptors else { throw ControlProtocolError("LISTEN_FDS=\(count) is more than \(maximumDescriptors)") }
        let descriptors = (0..<count).map { firstDescriptor + Int32($0) }
        var names = environment["LISTEN_FDNAMES"].map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
        if names.count != count { names = Array(repeating: "unknown", count: count) }
        return Parsed(descriptors: descriptors, names: names)
    }

    /// The variables to remove once consumed, so children do not inherit them (sd_listen_fds unset_environment).
    static let variables = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]
}
