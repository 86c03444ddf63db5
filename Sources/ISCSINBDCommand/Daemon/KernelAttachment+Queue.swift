import BlockBackend
import Logging
import NBDKernel
import NBDProtocol
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// What the kernel device is told besides its sockets: its request sizes, and its size when the LUN grew.
extension KernelAttachment {
    /// Sets the largest request of /dev/nbd<index> (`max_sectors_kb`) from the LUN, as sd would for the same
    /// LUN (`NBDQueueLimits`): right after every attach, re-attach and re-adoption, since the nbd driver
    /// leaves 128 KiB and a previous user's value stays with the device. A failure is logged, not fatal: the
    /// device works with smaller requests.
    static func setQueueLimits(index: Int, export: NBDExport, info: BlockDeviceInfo, logger: Logger,
                               sysfs: String = "/sys/block") {
        let device = "/dev/nbd\(index)"
        guard let before = NBDQueueLimits.current(index: index, root: sysfs) else {
            logger.warning("cannot read the queue limits of \(device); requests stay at the kernel's size")
            return
        }
        guard let limits = NBDQueueLimits.choose(
            maximumPayload: export.maximumPayload, optimalTransfer: info.optimalTransferLength,
            logicalBlockSize: export.minimumBlockSize, maxHardwareKB: before.maxHardwareKB,
            pageSize: UInt32(sysconf(Int32(_SC_PAGESIZE))))
        else { return }
        var metadata: Logger.Metadata = [
            "device": "\(device)", "max_sectors_kb": "\(limits.maxSectorsKB)", "max_sectors_kb.before": "\(before.maxSectorsKB)",
            "max_hw_sectors_kb": "\(before.maxHardwareKB)", "lun.maxTransfer": "\(export.maximumPayload)",
            "lun.optimalTransfer": "\(info.optimalTransferLength)",
        ]
        if let io = before.optimalIOSize { metadata["optimal_io_size"] = "\(io) (read-only in sysfs)" }
        guard limits.maxSectorsKB != before.maxSectorsKB else {
            logger.info("queue limits", metadata: metadata)
            return
        }
        do {
            try limits.apply(index: index, root: sysfs)
            logger.info("queue limits set", metadata: metadata)
        } catch {
            logger.warning("cannot set max_sectors_kb of \(device): \(error); requests stay at \(before.maxSectorsKB) KiB")
        }
    }

    /// Before an existing device gets fresh or resumed sockets for a LUN (re-login, re-adoption): the LUN must
    /// hold every block the device has (a smaller one is refused, fail-stop, before the kernel gets a socket),
    /// and a larger one makes the device grow. Returns the size to tell the kernel, nil when it keeps its own.
    static func sizeOnReattach(index: Int, lunSize: UInt64, sysfs: String = "/sys/block") throws -> UInt64? {
        let device = NBDSysfs.sectors(index: index, root: sysfs).map { $0 * 512 }
        switch NBDResize.decide(device: device, lun: lunSize) {
        case .unchanged:
            return nil
        case .grow(let bytes):
            return bytes
        case .refuseShrink(let device, let lun):
            throw CommandFailure("/dev/nbd\(index) is \(device) bytes but the LUN is now \(lun): it shrank, and the device is not shrunk under its users nor given to a LUN that lacks its last \(device - lun) bytes (fail-stop; detach it, check the LUN, grow it back or attach it afresh)")
        }
    }

    /// The LUN grew (CAPACITY DATA HAS CHANGED, or found larger at re-login): our connections accept the new
    /// range first, then the kernel is told, NBD_SET_SIZE on an ioctl device, NBD_CMD_RECONFIGURE with
    /// NBD_ATTR_SIZE_BYTES on a netlink one (`set_capacity_and_notify`: the size changes while mounted, and
    /// `resize2fs`/`xfs_growfs` can follow). A smaller size never reaches the kernel (`NBDResize`): the
    /// SCSI device fences itself when its LUN shrinks, so this only logs.
    func grow(to size: UInt64) async {
        let before = NBDSysfs.sectors(index: index).map { $0 * 512 }
        switch NBDResize.decide(device: before, lun: size) {
        case .unchanged:
            return
        case .refuseShrink(let device, let lun):
            logger.critical("the LUN shrank from \(device) to \(lun) bytes: \(devicePath) keeps its size (never shrunk under its users)")
            return
        case .grow(let bytes):
            for c in served.withLockedValue({ $0 }) { try? await c.exportGrew(to: bytes).get() }
            let index = self.index, backend = backendIdentifier
            do {
                if let ioctlDevice {
                    try await NIOThreadPool.singleton.runIfActive { () throws -> Void in try ioctlDevice.resize(to: bytes) }
                } else {
                    try await NIOThreadPool.singleton.runIfActive { () throws -> Void in
                        try NBDKernelDevice().reconfigure(index: index, backendIdentifier: backend, size: bytes)
                    }
                }
                logger.notice("resized", metadata: [
                    "device": "\(devicePath)", "size": "\(bytes)", "size.before": "\(before ?? 0)",
                    "interface": "\(ioctlDevice == nil ? "netlink" : "ioctl")",
                ])
            } catch {
                logger.error("cannot resize \(devicePath) to \(bytes) bytes: \(error)")
            }
        }
    }
}
