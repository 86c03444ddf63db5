#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The largest request /dev/nbdN builds (its request queue's `max_sectors_kb`), chosen from the export as
/// sd chooses it from a SCSI disk.
///
/// What the 6.1 nbd driver leaves (drivers/block/nbd.c `nbd_dev_add`): `max_hw_sectors` 65536 sectors
/// (32 MiB) and `max_sectors` 256 sectors (128 KiB), whatever the server can take, so a 1 MiB read
/// becomes 8 requests. Nothing in the NBD setup (netlink attributes, ioctls) sets them; the sysfs file
/// `queue/max_sectors_kb` is writable from `PAGE_SIZE` up to `max_hw_sectors_kb` (block/blk-sysfs.c
/// `queue_max_sectors_store`), and the value stays with the device until it is written again (disconnect
/// does not reset it), so it is set at every attach.
///
/// What cannot be set: `minimum_io_size` and `optimal_io_size` are read-only in sysfs (blk-sysfs.c,
/// `QUEUE_RO_ENTRY(queue_io_min)`, `QUEUE_RO_ENTRY(queue_io_opt)`), the nbd driver never sets `io_opt`, and it
/// sets `io_min` only through the block size (`blk_queue_physical_block_size`), which is also the logical
/// block size, so it stays the LUN's logical block length.
public struct NBDQueueLimits: Hashable, Sendable {
    /// `BLK_DEF_MAX_SECTORS` (include/linux/blkdev.h, 6.1): 2560 sectors, sd's cap when the LUN states no
    /// usable optimal transfer length.
    public static let defaultMaxKB: UInt32 = 1280

    /// `max_sectors_kb`: the largest request, in KiB.
    public var maxSectorsKB: UInt32

    public init(maxSectorsKB: UInt32) { self.maxSectorsKB = maxSectorsKB }

    /// sd's rule (drivers/scsi/sd.c `sd_revalidate_disk` and `sd_validate_opt_xfer_size`, 6.1): the optimal
    /// transfer length when the LUN states a usable one (not above the maximum transfer length, at least a
    /// page), else the maximum transfer length capped at `BLK_DEF_MAX_SECTORS`; never above the queue's
    /// `max_hw_sectors_kb`. Ours is also never above the NBD server's maximum payload (a longer request is
    /// refused with EINVAL), and a whole number of logical blocks and of KiB.
    ///
    /// - Parameters:
    ///   - maximumPayload: the export's maximum payload in bytes (the LUN's maximum transfer length).
    ///   - optimalTransfer: the LUN's optimal transfer length in bytes; 0 when it states none.
    ///   - logicalBlockSize: the export's logical block size.
    ///   - maxHardwareKB: the queue's `max_hw_sectors_kb`.
    ///   - pageSize: the kernel's page size (the smallest `max_sectors_kb` it accepts).
    /// - Returns: nil when no value fits (a maximum payload below one page).
    public static func choose(
        maximumPayload: UInt32, optimalTransfer: UInt32, logicalBlockSize: UInt32, maxHardwareKB: UInt32, pageSize: UInt32
    ) -> NBDQueueLimits? {
        let maximum = UInt64(maximumPayload)
        let optimal = UInt64(optimalTransfer)
        var bytes: UInt64
        if optimal >= UInt64(pageSize), optimal <= maximum {
            bytes = optimal
        } else {
            bytes = min(maximum, UInt64(defaultMaxKB) << 10)
        }
        bytes = min(bytes, UInt64(maxHardwareKB) << 10)
        // Whole KiB and whole logical blocks: round down to the larger of the two (both powers of two).
        let unit = UInt64(max(1024, logicalBlockSize))
        bytes -= bytes % unit
        guard bytes >= UInt64(pageSize) else { return nil }
        return NBDQueueLimits(maxSectorsKB: UInt32(bytes >> 10))
    }

    /// What /sys/block/nbdN/queue says now.
    public struct Current: Hashable, Sendable {
        public var maxSectorsKB: UInt32
        public var maxHardwareKB: UInt32
        public var minimumIOSize: UInt32?
        public var optimalIOSize: UInt32?
    }

    public static func current(index: Int, root: String = "/sys/block") -> Current? {
        let q = "\(root)/nbd\(index)/queue"
        guard let max = NBDSysfs.readLine("\(q)/max_sectors_kb").flatMap({ UInt32($0) }),
              let hw = NBDSysfs.readLine("\(q)/max_hw_sectors_kb").flatMap({ UInt32($0) })
        else { return nil }
        return Current(maxSectorsKB: max, maxHardwareKB: hw,
                       minimumIOSize: NBDSysfs.readLine("\(q)/minimum_io_size").flatMap { UInt32($0) },
                       optimalIOSize: NBDSysfs.readLine("\(q)/optimal_io_size").flatMap { UInt32($0) })
    }

    /// Writes `max_sectors_kb` of /dev/nbd<index>.
    public func apply(index: Int, root: String = "/sys/block") throws(NBDKernelError) {
        let path = "\(root)/nbd\(index)/queue/max_sectors_kb"
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .systemCall("open \(path)", errno: errno) }
        defer { close(fd) }
        let text = Array("\(maxSectorsKB)\n".utf8)
        let n = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard n == text.count else { throw .systemCall("write \(path)", errno: n < 0 ? errno : EIO) }
    }
}

/// Whether a kernel device may follow its LUN's size: it grows with the LUN, and never shrinks. The kernel
/// would shrink it as readily (`set_capacity_and_notify` takes any size), under a file system that still
/// counts on the blocks past the new end.
public enum NBDResize: Hashable, Sendable {
    /// Same size: nothing to tell the kernel.
    case unchanged
    /// The LUN is larger: the device grows to `bytes`.
    case grow(to: UInt64)
    /// The LUN is smaller than the device: refused (fail-stop); the device keeps its size.
    case refuseShrink(device: UInt64, lun: UInt64)

    /// `device`: the kernel device's size in bytes (nil or 0: unknown or not connected, left alone); `lun`:
    /// the LUN's.
    public static func decide(device: UInt64?, lun: UInt64) -> NBDResize {
        guard let device, device != 0, device != lun else { return .unchanged }
        return lun > device ? .grow(to: lun) : .refuseShrink(device: device, lun: lun)
    }
}
