import Testing

#if canImport(Glibc)
import Glibc
#endif

@testable import NBDKernel

/// Real round trips with the running kernel through `NetlinkSocket`. They need no privileges and no nbd
/// module: the generic netlink controller ("nlctrl") exists on every Linux kernel.
@Suite struct HostKernelTests {
    @Test func resolvesTheControllerFamily() throws {
        let family = try NBDKernelDevice(replyTimeout: .seconds(5)).resolveFamily(named: "nlctrl")
        #expect(family.id == .genericController)
        #expect(family.name == "nlctrl")
        #expect(family.multicastGroups["notify"] != nil)
    }

    @Test func unknownFamilyIsRejectedWithENOENT() throws {
        do {
            _ = try NBDKernelDevice(replyTimeout: .seconds(5)).resolveFamily(named: "no-such-family")
            Issue.record("resolving a non-existent family succeeded")
        } catch {
            #expect(error.code == .kernelRejected)
            #expect(error.errno == ENOENT)
        }
    }

    /// Without the nbd driver (this host's kernel has none) every NBD call ends in `.noDriver` with the
    /// modprobe failure; with it (the VM), status answers.
    @Test func statusOrNoDriver() throws {
        let hasDriver = access("/sys/module/nbd", F_OK) == 0
        do {
            let devices = try NBDKernelDevice(replyTimeout: .seconds(5)).status()
            #expect(hasDriver || access("/sys/module/nbd", F_OK) == 0, "status succeeded without an nbd module")
            _ = devices
        } catch {
            #expect(!hasDriver)
            #expect(error.code == .noDriver)
            #expect(error.description.hasPrefix("the kernel has no NBD driver (modprobe nbd failed: "))
        }
    }
}
