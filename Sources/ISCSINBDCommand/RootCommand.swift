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
        subcommands: [Admin.self, Serve.self, DaemonCommand.self, AttachCommand.self, DetachCommand.self],
        defaultSubcommand: Admin.self
    )

    public init() {}
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
