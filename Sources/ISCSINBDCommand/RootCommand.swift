import ArgumentParser
import Logging

/// `iscsi-nbd`: a userspace iSCSI initiator that serves LUNs over NBD.
public struct ISCSINBDRootCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "iscsi-nbd",
        abstract: "A userspace iSCSI initiator that serves LUNs over NBD (sockets and /dev/nbdN).",
        discussion: """
            Serve a LUN to NBD clients:
              iscsi-nbd serve iscsi://HOST[:PORT]/TARGET-IQN/LUN --socket /run/lun.sock
            CHAP credentials come from --chap-username/--chap-secret-file, the environment
            (ISCSI_NBD_CHAP_USERNAME, ISCSI_NBD_CHAP_SECRET) or the URL (user%secret@host).
            """,
        version: ISCSINBDVersion.current,
        subcommands: [Admin.self, Serve.self, DaemonCommand.self, AttachCommand.self, DetachCommand.self, UdevIDCommand.self],
        defaultSubcommand: Admin.self
    )

    public init() {}
}

/// `--poll-us`, shared by the commands that hold an iSCSI session (serve, attach, daemon).
struct PollOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Busy-poll up to this many microseconds before the event loop sleeps (0: never). Lowers queue-depth-1 latency; costs CPU while polling.",
        discussion: "The window adapts like QEMU's poll-max-ns: it grows while answers arrive just after it ends and shrinks to nothing when they do not. Polling covers the connections on the iSCSI session's event loop (all of them with --threads 1)."))
    var pollUs: Int = 0

    func validate() throws {
        guard (0...10_000).contains(pollUs) else { throw ValidationError("--poll-us must be 0 to 10000 microseconds") }
    }
}

/// Options shared by commands that log.
struct LoggingOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    @Flag(name: [.short, .long], help: "Shorthand for --log-level debug.")
    var verbose = false

    func makeLogger(label: String) -> Logger {
        var logger = Logger(label: label)
        logger.logLevel = verbose ? .debug : logLevel
        return logger
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

extension ISCSINBDRootCommand {
    /// The program's entry point: parse, run (async when the subcommand is), exit with ArgumentParser's
    /// conventions. (Calling `main()` from a top-level main.swift can pick the synchronous overload.)
    public static func runMain(_ arguments: [String]? = nil) async {
        do {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
