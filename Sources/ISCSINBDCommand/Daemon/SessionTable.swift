import ISCSIConfig

/// The daemon's bookkeeping of sessions, as a value: which node (target + portal) has which session id
/// and in which state. IO lives elsewhere (DaemonCore); every transition is decided here and unit-tested.
struct SessionTable: Sendable {
    struct Key: Hashable, Sendable, CustomStringConvertible {
        var target: String
        var portal: Portal
        var description: String { "\(target) at \(portal)" }
    }

    enum State: String, Sendable, Hashable {
        /// A login is under way (first attempt or a retry).
        case loggingIn = "LOGGING_IN"
        /// Logged in, devices attached.
        case loggedIn = "LOGGED_IN"
        /// The last attempt failed; the daemon retries in the background (automatic nodes at boot).
        case retrying = "FAILED_RETRYING"
        /// The connection dropped: devices wait (dead-connection timeout = replacement_timeout) while the
        /// daemon logs in again and hands the kernel fresh sockets (iscsiadm shows FAILED here too).
        case recovering = "FAILED"
        /// Flushing, detaching and logging out.
        case loggingOut = "LOGGING_OUT"
        /// The target refused the login in a way retrying cannot fix (a wrong secret, no such target): not
        /// retried; the entry stays so that `-m session` says why, until the next --login or a logout.
        case refused = "LOGIN_REFUSED"
    }

    struct Entry: Sendable, Hashable {
        var id: Int
        var key: Key
        var state: State
        var attempts: Int = 0
        var lastError: String?
    }

    private(set) var entries: [Int: Entry] = [:]
    private var nextID = 1

    enum BeginResult: Equatable {
        case started(id: Int)
        /// A session for this node exists (iscsiadm: ISCSI_ERR_SESS_EXISTS, 15).
        case alreadyPresent(id: Int, state: State)
    }

    /// Claims `key` for a login. Only one entry per node.
    mutating func beginLogin(_ key: Key) -> BeginResult {
        if let existing = entries.values.first(where: { $0.key == key }) {
            guard existing.state == .refused else { return .alreadyPresent(id: existing.id, state: existing.state) }
            entries[existing.id]?.state = .loggingIn
            entries[existing.id]?.attempts += 1
            return .started(id: existing.id)
        }
        let id = nextID
        nextID += 1
        entries[id] = Entry(id: id, key: key, state: .loggingIn, attempts: 1)
        return .started(id: id)
    }

    mutating func loggedIn(_ id: Int) {
        entries[id]?.state = .loggedIn
        entries[id]?.lastError = nil
    }

    /// The connection of a logged-in session dropped; false when the session was not live (logout under way).
    mutating func connectionLost(_ id: Int, error: String) -> Bool {
        guard entries[id]?.state == .loggedIn else { return false }
        entries[id]?.state = .recovering
        entries[id]?.lastError = error
        return true
    }

    /// What becomes of a node after a failed login attempt.
    enum AfterFailure: Sendable {
        /// Tried again in the background (automatic logins, re-adoption).
        case retry
        /// Kept, not retried: the target refused it for good (`-m session` shows why).
        case refused
        /// Forgotten (an interactive --login: the caller saw the error).
        case forget
    }

    mutating func loginFailed(_ id: Int, error: String, then next: AfterFailure) {
        switch next {
        case .retry:
            entries[id]?.state = .retrying
            entries[id]?.lastError = error
        case .refused:
            entries[id]?.state = .refused
            entries[id]?.lastError = error
        case .forget:
            entries[id] = nil
        }
    }

    /// A retry starts; false when the entry went away (logout) meanwhile.
    mutating func retryStarts(_ id: Int) -> Bool {
        guard let e = entries[id], e.state == .retrying else { return false }
        entries[id]?.state = .loggingIn
        entries[id]?.attempts += 1
        return true
    }

    /// Marks the matching entries as logging out and returns their ids (sorted). Entries already logging
    /// out are not returned twice.
    mutating func beginLogout(target: String?, host: String?, port: Int?) -> [Int] {
        let ids = matching(target: target, host: host, port: port).filter { entries[$0]?.state != .loggingOut }
        for id in ids { entries[id]?.state = .loggingOut }
        return ids
    }

    mutating func remove(_ id: Int) { entries[id] = nil }

    mutating func noteError(_ id: Int, _ error: String) { entries[id]?.lastError = error }

    func matching(target: String?, host: String?, port: Int?) -> [Int] {
        entries.values.filter { e in
            (target == nil || e.key.target == target) && (host == nil || e.key.portal.host == host) && (port == nil || e.key.portal.port == port)
        }.map(\.id).sorted()
    }

    /// Backoff before retry number `attempt` (1-based): 2, 4, 8, 16, then every 20 s: a target that comes up
    /// late is found within 20 s, at the cost of one refused TCP connection per record every 20 s meanwhile.
    static func retryDelay(attempt: Int) -> Duration {
        let exponent = min(max(attempt, 1), 5)
        return .seconds(min(20, 1 << exponent))
    }
}
