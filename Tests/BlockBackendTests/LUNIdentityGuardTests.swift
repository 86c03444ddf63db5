import BlockBackend
@testable import ISCSIBlockBackend
import SCSI
import Testing

/// Every "same logical unit?" verdict of the guard (pure).
struct LUNIdentityGuardTests {
    func identity(naa: [UInt8] = [0x60, 1, 2, 3, 4, 5, 6, 7], serial: String? = "beaf11", blocks: UInt64 = 1000,
                  blockLength: UInt32 = 512, product: String = "VIRTUAL-DISK") -> LUNIdentity {
        let d = Designator(type: .naa, value: naa)
        return LUNIdentity(designator: d, designators: [d], serialNumber: serial, vendor: "IET", product: product,
                           blockCount: blocks, blockLength: blockLength)
    }

    /// The identity changes the guard must never take for the same logical unit, with the word its reason names.
    var otherLogicalUnits: [(LUNIdentity, String)] {
        [
            (identity(naa: [0x60, 9, 9, 9, 9, 9, 9, 9]), "83h"),
            (identity(serial: "other"), "80h"),
            (identity(serial: nil), "80h"),
            (identity(product: "OTHER"), "INQUIRY"),
            (LUNIdentity(designator: nil, designators: [], serialNumber: "beaf11", vendor: "IET", product: "VIRTUAL-DISK",
                         blockCount: 1000, blockLength: 512), "83h"),
        ]
    }

    // MARK: After a re-login (session recovery, the daemon's re-attach)

    @Test func sameLUNIsSame() {
        #expect(LUNIdentityGuard(identity()).afterRelogin(identity()) == .same)
    }

    @Test func grownLUNPassesTheNewSizeOn() {
        #expect(LUNIdentityGuard(identity()).afterRelogin(identity(blocks: 4000)) == .grown(from: 1000, to: 4000))
    }

    @Test func everyIdentityChangeIsDifferent() {
        let base = LUNIdentityGuard(identity())
        let cases = otherLogicalUnits + [(identity(blockLength: 4096), "block length"), (identity(blocks: 999), "shrank")]
        for (now, why) in cases {
            guard case .different(let message) = base.afterRelogin(now) else {
                Issue.record("\(now) should differ (\(why))")
                continue
            }
            #expect(message.contains(why), "\(message)")
        }
    }

    @Test func reloginProbeFindingAnotherKindOfDeviceIsAMismatch() {
        let base = LUNIdentityGuard(identity())
        let cdrom = SCSIProbeError(.notDirectAccess, "LUN 1 is a CD/DVD (type 5), not a direct-access block device")
        #expect(base.afterRelogin(failedProbe: cdrom) == LUNIdentityMismatch(cdrom.message))
        // Not a verdict on the identity: the caller retries.
        #expect(base.afterRelogin(failedProbe: SCSIProbeError(.noLogicalUnit, "LUN 1: no logical unit")) == nil)
        #expect(base.afterRelogin(failedProbe: SCSIProbeError(.commandFailed, "LUN 1: INQUIRY failed")) == nil)
        #expect(base.afterRelogin(failedProbe: BlockDeviceError(.eio, "connection lost")) == nil)
    }

    // MARK: After a unit attention

    @Test func unitAttentionAcceptsGrowthAndStopsAtAShrink() {
        let base = LUNIdentityGuard(identity())
        #expect(base.afterUnitAttention(identity()) == .same)
        #expect(base.afterUnitAttention(identity(blocks: 4000)) == .same)
        #expect(base.afterUnitAttention(identity(blocks: 10)) == .shrunk(from: 1000, to: 10),
                "2A/09 announced the shrink, but the blocks past the new end are gone: fail-stop")
        #expect(base.afterUnitAttention(identity(blocks: 999)) == .shrunk(from: 1000, to: 999))
        #expect(base.afterRelogin(identity(blocks: 999)) == .different("capacity shrank from 1000 to 999 blocks"))
    }

    @Test func unitAttentionWithAnotherBlockLengthIsNotAnotherUnit() {
        #expect(LUNIdentityGuard(identity()).afterUnitAttention(identity(blockLength: 4096))
            == .blockLengthChanged(from: 512, to: 4096))
    }

    @Test func unitAttentionNamingAnotherUnitIsDifferent() {
        let base = LUNIdentityGuard(identity())
        for (now, why) in otherLogicalUnits {
            guard case .different(let message) = base.afterUnitAttention(now) else {
                Issue.record("\(now) should differ (\(why))")
                continue
            }
            #expect(message == "now names another logical unit (was \(base.identity), now \(now))")
        }
        // Another unit with another block length is another unit (fenced), not a geometry change.
        guard case .different = base.afterUnitAttention(identity(serial: "other", blockLength: 4096)) else {
            Issue.record("another unit with another block length must be different")
            return
        }
    }

    // MARK: At the first login

    @Test func identityIsTakenFromTheLogicalUnitsDesignators() {
        var p = SCSIDeviceProperties(inquiry: StandardInquiryData(vendor: "LIO-ORG", product: "disk0", revision: "4.0"),
                                     blockCount: 2048, blockLength: 4096)
        let port = Designator(type: .relativeTargetPort, association: .targetPort, value: [0, 0, 0, 1])
        let name = Designator(type: .scsiNameString, association: .targetDevice, codeSet: 3, value: Array("iqn.2003-01.org.x".utf8))
        let t10 = Designator(type: .t10VendorID, codeSet: 2, value: Array("LIO-ORG disk0".utf8))
        let naa = Designator(type: .naa, value: [0x60, 1, 0x40, 5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xA, 0xB, 0xC])
        p.deviceIdentification = DeviceIdentification(designators: [port, t10, name, naa])
        p.serialNumber = "0123"
        let judge = LUNIdentityGuard(serving: p)
        #expect(judge.identity.designators == [t10, naa], "only association 00b names the logical unit")
        #expect(judge.identity.designator == naa, "NAA first")
        #expect(judge.identity.serialNumber == "0123" && judge.identity.vendor == "LIO-ORG" && judge.identity.product == "disk0")
        #expect(judge.identity.blockCount == 2048 && judge.identity.blockLength == 4096)
        // A port designator that changes (another portal after a re-login) is not another logical unit.
        p.deviceIdentification = DeviceIdentification(designators: [t10, naa])
        #expect(judge.afterRelogin(LUNIdentity(properties: p)) == .same)
    }
}
