import BlockBackend
import ISCSIBlockBackend
import SCSI
import Testing

/// The identity comparison after a re-login (pure).
struct ReloginIdentityTests {
    func identity(naa: [UInt8] = [0x60, 1, 2, 3, 4, 5, 6, 7], serial: String? = "beaf11", blocks: UInt64 = 1000,
                  blockLength: UInt32 = 512, product: String = "VIRTUAL-DISK") -> LUNIdentity {
        let d = Designator(type: .naa, value: naa)
        return LUNIdentity(designator: d, designators: [d], serialNumber: serial, vendor: "IET", product: product,
                           blockCount: blocks, blockLength: blockLength)
    }

    @Test func sameLUNIsSame() {
        #expect(identity().verdictAfterRelogin(identity()) == .same)
    }

    @Test func grownLUNPassesTheNewSizeOn() {
        #expect(identity().verdictAfterRelogin(identity(blocks: 4000)) == .grown(from: 1000, to: 4000))
    }

    @Test func everyIdentityChangeIsDifferent() {
        let base = identity()
        let cases: [(LUNIdentity, String)] = [
            (identity(naa: [0x60, 9, 9, 9, 9, 9, 9, 9]), "83h"),
            (identity(serial: "other"), "80h"),
            (identity(serial: nil), "80h"),
            (identity(product: "OTHER"), "INQUIRY"),
            (identity(blockLength: 4096), "block length"),
            (identity(blocks: 999), "shrank"),
            (LUNIdentity(designator: nil, designators: [], serialNumber: "beaf11", vendor: "IET", product: "VIRTUAL-DISK",
                         blockCount: 1000, blockLength: 512), "83h"),
        ]
        for (now, why) in cases {
            guard case .different(let message) = base.verdictAfterRelogin(now) else {
                Issue.record("\(now) should differ (\(why))")
                continue
            }
            #expect(message.contains(why), "\(message)")
        }
    }
}
