/// systemd socket activation (sd_listen_fds(3)) without libsystemd: systemd passes listening sockets
/// starting at fd 3 and sets LISTEN_PID (the receiving process), LISTEN_FDS (how many) and optionally
/// LISTEN_FDNAMES (colon-separated names). The same mechanism hands back what the daemon put in its fd
/// store (`SystemdNotify.store`): the kernel NBD sockets of a previous daemon, named `nbdN.K`.
enum SocketActivation {
    static let firstDescriptor: Int32 = 3
    /// More is a malformed environment, not a real unit (FileDescriptorStoreMax= is 1024 at most).
    static let maximumDescriptors = 1025

    struct Parsed: Hashable {
        var descriptors: [Int32]
        var names: [String]

        /// The control socket: the one named "control" (iscsi-nbd.socket's FileDescriptorName=), or the
        /// only one when systemd passed no names.
        var control: Int32? {
            if let i = names.firstIndex(of: "control") { return descriptors[i] }
            return descriptors.count == 1 && names == ["unknown"] ? descriptors[0] : nil
        }

        /// Kernel NBD sockets from the fd store, by device index, in connection order (`nbdN.K`).
        var storedDevices: [Int: [Int32]] {
            var byDevice: [Int: [(Int, Int32)]] = [:]
            for (fd, name) in zip(descriptors, names) {
                guard let (index, k) = SocketActivation.storeName(name) else { continue }
                byDevice[index, default: []].append((k, fd))
            }
            return byDevice.mapValues { $0.sorted { $0.0 < $1.0 }.map(\.1) }
        }

        /// Descriptors that are neither (a second "control" too): closed by the daemon, with a warning.
        var unexpected: [Int32] {
            zip(descriptors, names).filter { SocketActivation.storeName($0.1) == nil && $0.0 != control }.map(\.0)
        }

        /// The name systemd passed `fd` under.
        func name(of fd: Int32) -> String {
            descriptors.firstIndex(of: fd).map { names[$0] } ?? "?"
        }
    }

    /// The fd store name of connection `k` of /dev/nbd`index`.
    static func storeName(index: Int, connection k: Int) -> String { "nbd\(index).\(k)" }

    /// `nbdN.K` → (N, K).
    static func storeName(_ name: String) -> (index: Int, connection: Int)? {
        guard name.hasPrefix("nbd") else { return nil }
        let parts = name.dropFirst(3).split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isNumber } }),
              let index = Int(parts[0]), let k = Int(parts[1]), index < 1_000_000, k < 1024 else { return nil }
        return (index, k)
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
