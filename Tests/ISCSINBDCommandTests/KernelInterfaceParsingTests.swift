import ArgumentParser
import Testing

@testable import ISCSINBDCommand

/// `--kernel-interface` on attach and daemon: the three words, auto by default, anything else refused.
@Suite struct KernelInterfaceParsingTests {
    @Test func attachTakesEachInterface() throws {
        let url = "iscsi://127.0.0.1/iqn.2026-12.test:t/1"
        for (word, expected) in [("auto", KernelInterface.auto), ("netlink", .netlink), ("ioctl", .ioctl)] {
            let command = try ISCSINBDRootCommand.parseAsRoot(["attach", url, "--kernel-interface", word])
            #expect((command as? AttachCommand)?.kernel.kernelInterface == expected)
        }
        let plain = try ISCSINBDRootCommand.parseAsRoot(["attach", url])
        #expect((plain as? AttachCommand)?.kernel.kernelInterface == .auto)
        #expect(throws: (any Error).self) { try ISCSINBDRootCommand.parseAsRoot(["attach", url, "--kernel-interface", "sysfs"]) }
    }

    @Test func daemonTakesTheInterface() throws {
        let command = try ISCSINBDRootCommand.parseAsRoot(["daemon", "--kernel-interface", "ioctl"])
        #expect((command as? DaemonCommand)?.kernel.kernelInterface == .ioctl)
        #expect(throws: (any Error).self) { try ISCSINBDRootCommand.parseAsRoot(["daemon", "--kernel-interface", ""]) }
    }
}
