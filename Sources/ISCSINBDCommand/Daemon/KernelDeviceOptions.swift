import ArgumentParser

/// Options of a kernel device, shared by `attach` and `daemon`: its sockets (one per blk-mq hardware
/// queue), busy polling, the kernel's request timeout and the interface that sets it up.
struct KernelDeviceOptions: ParsableArguments {
    @Option(name: .long, help: "Sockets per /dev/nbdN, one per kernel hardware queue, each served on its own event loop (used when the LUN allows multi-conn).")
    var connections: Int = 1

    @OptionGroup var polling: PollOptions

    @Option(name: .long, help: "Per-request timeout of the kernel device in seconds (NBD_ATTR_TIMEOUT; 0 = kernel default).")
    var requestTimeout: Int = 30

    @Option(name: .long, help: "Kernel interface for /dev/nbdN: auto (netlink where the kernel has it), netlink, or ioctl.")
    var kernelInterface: KernelInterface = .auto

    func validate() throws {
        guard (1...16).contains(connections) else { throw ValidationError("--connections must be 1 to 16") }
        guard (0...3600).contains(requestTimeout) else { throw ValidationError("--request-timeout must be 0 to 3600") }
    }
}
