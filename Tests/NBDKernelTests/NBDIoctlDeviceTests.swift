import CLinuxNBD
import Foundation
import Testing

@testable import NBDKernel

/// The ioctl path's pure parts: the request numbers (from linux/nbd.h through the shim), device choice over
/// a sysfs snapshot, sysfs parsing on a fixture tree, and argument checks that need no kernel. The ioctls
/// themselves run against the real driver in the VM (scripts/vm/scenario-resize.sh).
@Suite struct NBDIoctlDeviceTests {
    @Test func requestNumbersAreTheKernelsIO0xAB() {
        // _IO(0xab, nr): no direction, no size.
        #expect(iscsi_nbd_ioctl_set_sock == 0xAB00)
        #expect(iscsi_nbd_ioctl_set_blksize == 0xAB01)
        #expect(iscsi_nbd_ioctl_set_size == 0xAB02)
        #expect(iscsi_nbd_ioctl_do_it == 0xAB03)
        #expect(iscsi_nbd_ioctl_clear_sock == 0xAB04)
        #expect(iscsi_nbd_ioctl_clear_que == 0xAB05)
        #expect(iscsi_nbd_ioctl_disconnect == 0xAB08)
        #expect(iscsi_nbd_ioctl_set_timeout == 0xAB09)
        #expect(iscsi_nbd_ioctl_set_flags == 0xAB0A)
    }

    @Test func firstFreeSkipsConnectedAndServedDevices() {
        let d = NBDSysfs.Device.init(index:sectors:pid:)
        #expect(NBDIoctlDevice.firstFree(among: []) == nil)
        #expect(NBDIoctlDevice.firstFree(among: [d(0, 0, nil), d(1, 0, nil)]) == 0)
        // nbd0 connected (size), nbd1 being set up (pid, no size yet), nbd2 free.
        #expect(NBDIoctlDevice.firstFree(among: [d(0, 2048, 77), d(1, 0, 78), d(2, 0, nil), d(3, 0, nil)]) == 2)
        #expect(NBDIoctlDevice.firstFree(among: [d(10, 0, nil), d(2, 0, nil)]) == 2, "lowest index, whatever the order")
        #expect(NBDIoctlDevice.firstFree(among: [d(0, 8, nil), d(1, 0, 5)]) == nil)
    }

    @Test func sysfsTreeIsParsed() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("sysfs-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        func device(_ name: String, size: String, pid: String?) throws {
            try FileManager.default.createDirectory(atPath: "\(root)/\(name)", withIntermediateDirectories: true)
            try size.write(toFile: "\(root)/\(name)/size", atomically: false, encoding: .utf8)
            if let pid { try pid.write(toFile: "\(root)/\(name)/pid", atomically: false, encoding: .utf8) }
        }
        try device("nbd10", size: "0\n", pid: nil)
        try device("nbd2", size: "131072\n", pid: "4242\n")
        try device("nbd0", size: "0\n", pid: nil)
        try device("sda", size: "100\n", pid: nil)
        try device("nbdx", size: "0\n", pid: nil)
        let devices = NBDSysfs.devices(root: root)
        #expect(devices == [
            NBDSysfs.Device(index: 0, sectors: 0, pid: nil), NBDSysfs.Device(index: 2, sectors: 131072, pid: 4242),
            NBDSysfs.Device(index: 10, sectors: 0, pid: nil),
        ])
        #expect(NBDSysfs.sectors(index: 2, root: root) == 131072)
        #expect(NBDSysfs.pid(index: 0, root: root) == nil)
        #expect(NBDSysfs.devices(root: root + "/missing").isEmpty)
    }

    @Test func badSetupsAreRefusedBeforeTheKernel() {
        func refused(_ setup: NBDIoctlDevice.Setup) -> NBDKernelError? {
            do { _ = try NBDIoctlDevice.start(setup); return nil } catch { return error }
        }
        #expect(refused(.init(sockets: [], size: 1 << 20, blockSize: 512, serverFlags: 1, index: 0))?.code == .invalidArgument)
        #expect(refused(.init(sockets: [-1], size: 1 << 20, blockSize: 512, serverFlags: 1, index: 0))?.code == .invalidArgument)
        #expect(refused(.init(sockets: [3], size: 1 << 20, blockSize: 1000, serverFlags: 1, index: 0))?.code == .invalidArgument)
        #expect(refused(.init(sockets: [3], size: 1 << 20, blockSize: 256, serverFlags: 1, index: 0))?.code == .invalidArgument)
        #expect(refused(.init(sockets: [3], size: 0, blockSize: 512, serverFlags: 1, index: 0))?.code == .invalidArgument)
    }
}
