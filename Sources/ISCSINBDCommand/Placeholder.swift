import ArgumentParser

public struct ISCSINBDRootCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "iscsi-nbd")
    public init() {}
    public func run() async throws {}
}
