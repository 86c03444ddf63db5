import BlockBackend
import SCSI

/// What a re-login found compared with the LUN first opened (pure; tested on its own).
public enum ReloginIdentityVerdict: Sendable, Hashable {
    /// Same logical unit, same geometry.
    case same
    /// Same logical unit, more blocks (online resize): pass the new size on.
    case grown(from: UInt64, to: UInt64)
    /// A different logical unit answers, or one that cannot hold what was written (fail-stop).
    case different(String)
}

/// The LUN found after a re-login is not the LUN first opened: the session must stop (never write to a
/// different LUN).
public struct LUNIdentityMismatch: Error, Hashable, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension LUNIdentity {
    /// Compares the identity found after a re-login (`now`) with this one (the first login's): VPD 83h
    /// designators, VPD 80h serial, vendor/product, block length and capacity. A grown LUN is the same LUN
    /// resized; a shrunk one, or another block length, is treated as a different LUN (blocks the client
    /// knows about would be gone).
    public func verdictAfterRelogin(_ now: LUNIdentity) -> ReloginIdentityVerdict {
        if designators != now.designators {
            return .different("VPD 83h designators changed from \(describe(designators)) to \(describe(now.designators))")
        }
        if serialNumber != now.serialNumber {
            return .different("VPD 80h serial changed from \(serialNumber ?? "none") to \(now.serialNumber ?? "none")")
        }
        if vendor != now.vendor || product != now.product {
            return .different("INQUIRY changed from \(vendor) \(product) to \(now.vendor) \(now.product)")
        }
        if blockLength != now.blockLength {
            return .different("logical block length changed from \(blockLength) to \(now.blockLength)")
        }
        if now.blockCount < blockCount {
            return .different("capacity shrank from \(blockCount) to \(now.blockCount) blocks")
        }
        if now.blockCount > blockCount { return .grown(from: blockCount, to: now.blockCount) }
        return .same
    }

    private func describe(_ list: [Designator]) -> String {
        list.isEmpty ? "none" : list.map { "\($0)" }.joined(separator: ", ")
    }
}
