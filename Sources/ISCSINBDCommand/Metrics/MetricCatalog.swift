import Prometheus

/// Every metric iscsi-nbd exports, with its type, labels and help text: the one list that the code registers
/// from, that docs/metrics.md describes and that the dashboard test checks names against.
enum MetricCatalog {
    enum Kind: String, Sendable { case counter, gauge, histogram }

    struct Family: Sendable, Hashable {
        var name: String
        var kind: Kind
        var labels: [String]
        var help: String

        var descriptor: MetricNameDescriptor {
            MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
        }
    }

    /// A LUN: its session's target and portal, the LUN number, and the kernel device or the export name.
    static let lunLabels = ["target", "portal", "lun", "device"]
    static let sessionLabels = ["target", "portal"]

    // MARK: NBD requests of a LUN

    static let requests = Family(
        name: "iscsi_nbd_requests_total", kind: .counter, labels: lunLabels + ["command", "result"],
        help: "NBD requests the device answered, by command (read, write, flush, trim, write_zeroes) and result (ok, error).")
    static let requestsRefused = Family(
        name: "iscsi_nbd_requests_refused_total", kind: .counter, labels: lunLabels,
        help: "NBD requests answered with an error without reaching the device (out of range, misaligned, read-only).")
    static let readBytes = Family(
        name: "iscsi_nbd_read_bytes_total", kind: .counter, labels: lunLabels,
        help: "Bytes of successful NBD reads.")
    static let writtenBytes = Family(
        name: "iscsi_nbd_written_bytes_total", kind: .counter, labels: lunLabels,
        help: "Bytes of successful NBD writes.")
    static let requestsInFlight = Family(
        name: "iscsi_nbd_requests_in_flight", kind: .gauge, labels: lunLabels,
        help: "NBD requests handed to the device and not answered yet.")
    static let requestDuration = Family(
        name: "iscsi_nbd_request_duration_seconds", kind: .histogram, labels: lunLabels + ["command"],
        help: "Time from an NBD request's arrival at the device to its answer, by command.")
    static let nbdConnections = Family(
        name: "iscsi_nbd_nbd_connections", kind: .gauge, labels: lunLabels,
        help: "NBD connections open to the LUN (clients of serve, or the kernel's sockets of /dev/nbdN).")

    // MARK: SCSI commands of a LUN

    static let scsiCommands = Family(
        name: "iscsi_nbd_scsi_commands_total", kind: .counter, labels: lunLabels + ["opcode", "status"],
        help: "SCSI commands answered with a status, by opcode and status (every attempt, retries included).")
    static let senseKeys = Family(
        name: "iscsi_nbd_scsi_sense_keys_total", kind: .counter, labels: lunLabels + ["sense_key"],
        help: "Sense keys of CHECK CONDITION answers.")
    static let scsiRetries = Family(
        name: "iscsi_nbd_scsi_retries_total", kind: .counter, labels: lunLabels + ["cause"],
        help: "SCSI commands re-issued, by cause (busy, task_set_full, unit_attention, not_ready, aborted_command, task_aborted, other).")
    static let scsiTransportFailures = Family(
        name: "iscsi_nbd_scsi_transport_failures_total", kind: .counter, labels: lunLabels,
        help: "SCSI commands that got no status (the session failed them: closed, or not recovered within the replacement timeout).")

    // MARK: iSCSI session

    static let pdus = Family(
        name: "iscsi_nbd_iscsi_pdus_total", kind: .counter, labels: sessionLabels + ["direction", "opcode"],
        help: "iSCSI PDUs sent (tx) and received (rx), by opcode.")
    static let dataBytes = Family(
        name: "iscsi_nbd_iscsi_data_bytes_total", kind: .counter, labels: sessionLabels + ["direction"],
        help: "iSCSI data segment bytes sent (tx) and received (rx): iscsiadm's txdata_octets and rxdata_octets.")
    static let digestErrors = Family(
        name: "iscsi_nbd_iscsi_digest_errors_total", kind: .counter, labels: sessionLabels,
        help: "PDUs received with a header or data digest that did not match.")
    static let timeouts = Family(
        name: "iscsi_nbd_iscsi_timeouts_total", kind: .counter, labels: sessionLabels,
        help: "Timeouts that failed a login, a logout, a NOP-Out ping or a command.")
    static let sessionState = Family(
        name: "iscsi_nbd_session_state", kind: .gauge, labels: sessionLabels + ["state"],
        help: "1 for the session's state (LOGGED_IN, RECOVERING, FAILED), 0 for the others.")
    static let recoveries = Family(
        name: "iscsi_nbd_session_recoveries_total", kind: .counter, labels: sessionLabels,
        help: "Lost connections the session recovered from (a new login, commands re-issued).")
    static let recoveryDuration = Family(
        name: "iscsi_nbd_session_recovery_duration_seconds", kind: .histogram, labels: sessionLabels,
        help: "Time from a lost connection to the recovered session.")
    static let reloginAttempts = Family(
        name: "iscsi_nbd_session_relogin_attempts_total", kind: .counter, labels: sessionLabels,
        help: "Logins attempted while recovering, successful or not.")
    static let loginFailures = Family(
        name: "iscsi_nbd_login_failures_total", kind: .counter, labels: sessionLabels + ["reason"],
        help: "Failed logins by reason (authentication, authorization, target_not_found, target_unavailable, refused, timeout, connection, redirects, protocol).")
    static let identityMismatches = Family(
        name: "iscsi_nbd_identity_mismatches_total", kind: .counter, labels: sessionLabels,
        help: "Re-logins after which a LUN answered with another identity (the session stopped).")
    static let queueDepth = Family(
        name: "iscsi_nbd_session_queue_depth", kind: .gauge, labels: sessionLabels,
        help: "Commands the initiator lets in flight at once now (lowered on TASK SET FULL and BUSY).")
    static let cmdSNWindow = Family(
        name: "iscsi_nbd_session_cmdsn_window", kind: .gauge, labels: sessionLabels,
        help: "Commands the target accepts now: MaxCmdSN - CmdSN + 1.")
    static let commandsOutstanding = Family(
        name: "iscsi_nbd_session_commands_outstanding", kind: .gauge, labels: sessionLabels,
        help: "SCSI commands sent to the target and not answered yet.")

    // MARK: Process

    static let residentMemory = Family(
        name: "iscsi_nbd_process_resident_memory_bytes", kind: .gauge, labels: [],
        help: "Resident memory of the iscsi-nbd process.")
    static let openFDs = Family(
        name: "iscsi_nbd_process_open_fds", kind: .gauge, labels: [],
        help: "File descriptors the iscsi-nbd process has open.")
    static let openConnections = Family(
        name: "iscsi_nbd_open_connections", kind: .gauge, labels: ["kind"],
        help: "Connections open, by kind (nbd: NBD clients and kernel sockets, iscsi: sessions logged in, metrics: scrapers).")

    static let all: [Family] = [
        requests, requestsRefused, readBytes, writtenBytes, requestsInFlight, requestDuration, nbdConnections,
        scsiCommands, senseKeys, scsiRetries, scsiTransportFailures,
        pdus, dataBytes, digestErrors, timeouts, sessionState, recoveries, recoveryDuration, reloginAttempts,
        loginFailures, identityMismatches, queueDepth, cmdSNWindow, commandsOutstanding,
        residentMemory, openFDs, openConnections,
    ]

    /// Request latency buckets in seconds: 20 µs to 10 s, 1-2-5 per decade. Histograms of seconds as `Double`
    /// (swift-prometheus' ValueHistogram): a Double per bucket compares and adds in one instruction, where a
    /// `Duration` took 128-bit arithmetic (measured: 750 of the 1,100 instructions metrics added per request).
    static let latencyBuckets: [Double] = [
        0.000_02, 0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10,
    ]
    /// Recovery duration buckets in seconds: 100 ms to 10 minutes.
    static let recoveryBuckets: [Double] = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600]

    /// A label value from a name such as "READ(16)" or "CHECK CONDITION": lower case, runs of anything but
    /// letters and digits as one underscore.
    static func labelValue(_ text: String) -> String {
        var out = ""
        var pendingUnderscore = false
        for c in text.lowercased() {
            if c.isASCII && (c.isLetter || c.isNumber) {
                if pendingUnderscore && !out.isEmpty { out.append("_") }
                pendingUnderscore = false
                out.append(c)
            } else {
                pendingUnderscore = true
            }
        }
        return out.isEmpty ? "unknown" : out
    }
}
