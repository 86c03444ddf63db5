#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Errors of the kernel NBD path. `code` is what callers match on; `description` is the readable explanation
/// (errno translated for the NBD case, plus the kernel's extended-ack message when it sent one).
public struct NBDKernelError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case noDriver, kernelRejected, malformedReply, timedOut, invalidArgument, systemCall
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The running kernel has no NBD driver (the "nbd" generic netlink family is unknown even after modprobe).
        public static let noDriver = Code(.noDriver)
        /// The kernel answered the request with an errno (see `errno`).
        public static let kernelRejected = Code(.kernelRejected)
        /// A reply did not decode (length fields, missing attributes, wrong command).
        public static let malformedReply = Code(.malformedReply)
        /// No answer from the kernel within the timeout.
        public static let timedOut = Code(.timedOut)
        /// The request was refused before it was sent (bad block size, no sockets, ...).
        public static let invalidArgument = Code(.invalidArgument)
        /// A socket syscall failed (see `errno`).
        public static let systemCall = Code(.systemCall)

        public var description: String {
            switch base {
            case .noDriver: "noDriver"
            case .kernelRejected: "kernelRejected"
            case .malformedReply: "malformedReply"
            case .timedOut: "timedOut"
            case .invalidArgument: "invalidArgument"
            case .systemCall: "systemCall"
            }
        }
    }

    public let code: Code
    /// The positive errno for `.kernelRejected` and `.systemCall`.
    public let errno: Int32?
    private let message: String

    init(code: Code, errno: Int32? = nil, message: String) {
        self.code = code
        self.errno = errno
        self.message = message
    }

    public var description: String { message }

    @inline(never)
    static func malformedReply(_ detail: String) -> NBDKernelError {
        NBDKernelError(code: .malformedReply, message: "malformed netlink reply: \(detail)")
    }

    @inline(never)
    static func invalidArgument(_ detail: String) -> NBDKernelError {
        NBDKernelError(code: .invalidArgument, message: detail)
    }

    @inline(never)
    static func timedOut(_ what: String, seconds: Double) -> NBDKernelError {
        NBDKernelError(code: .timedOut, message: "no reply from the kernel to \(what) within \(seconds) s")
    }

    @inline(never)
    static func systemCall(_ call: String, errno: Int32) -> NBDKernelError {
        NBDKernelError(code: .systemCall, errno: errno, message: "\(call) failed: \(errnoName(errno)) (\(systemMessage(errno)))")
    }

    @inline(never)
    static func noDriver(modprobe: String) -> NBDKernelError {
        NBDKernelError(code: .noDriver, message: "the kernel has no NBD driver (modprobe nbd failed: \(modprobe))")
    }

    /// The kernel refused `command` with `errno`; `extendedMessage` is `NLMSGERR_ATTR_MSG` when present.
    @inline(never)
    static func kernelRejected(_ command: String, errno: Int32, extendedMessage: String? = nil) -> NBDKernelError {
        var text = "\(command): \(explain(errno: errno, command: command)) [\(errnoName(errno))]"
        if let extendedMessage, !extendedMessage.isEmpty { text += "; kernel says: \(extendedMessage)" }
        return NBDKernelError(code: .kernelRejected, errno: errno, message: text)
    }

    // MARK: - errno → readable message

    /// What `errno` means for an NBD netlink command (drivers/block/nbd.c return paths), total over errno:
    /// unknown codes fall back to strerror.
    static func explain(errno: Int32, command: String) -> String {
        switch errno {
        case EBUSY: "the device is in use (already connected, or still shutting down)"
        case EPERM, EACCES: "permission denied (needs CAP_SYS_ADMIN / CAP_NET_ADMIN: run as root)"
        case ENOENT: "no such NBD device"
        case EINVAL:
            "invalid argument (missing size or sockets, bad block size, unknown device index, or device not connected)"
        case ENOSPC: "no dead connection to replace (reconfigure only replaces connections that died)"
        case ENOTSOCK: "a descriptor passed as a socket is not a socket"
        case EBADF: "a socket descriptor is not open in this process"
        case ENOMEM: "the kernel is out of memory"
        case EEXIST: "a device with this index already exists"
        case ENODEV: "no such device"
        case ETIMEDOUT: "timed out"
        case EOPNOTSUPP: "operation not supported by this kernel's NBD driver"
        default: systemMessage(errno)
        }
    }

    static func systemMessage(_ errno: Int32) -> String {
        guard let text = strerror(errno) else { return "errno \(errno)" }
        return String(cString: text)
    }

    /// The symbolic name for the errnos this module explains, else "errno N".
    static func errnoName(_ errno: Int32) -> String {
        switch errno {
        case EBUSY: "EBUSY"
        case EPERM: "EPERM"
        case EACCES: "EACCES"
        case ENOENT: "ENOENT"
        case EINVAL: "EINVAL"
        case ENOSPC: "ENOSPC"
        case ENOTSOCK: "ENOTSOCK"
        case EBADF: "EBADF"
        case ENOMEM: "ENOMEM"
        case EEXIST: "EEXIST"
        case ENODEV: "ENODEV"
        case ETIMEDOUT: "ETIMEDOUT"
        case EOPNOTSUPP: "EOPNOTSUPP"
        case EAFNOSUPPORT: "EAFNOSUPPORT"
        case EPROTONOSUPPORT: "EPROTONOSUPPORT"
        default: "errno \(errno)"
        }
    }
}
