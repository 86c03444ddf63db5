import BlockBackend
import SCSI

/// Who a LUN is: for checking after a reconnect that the same logical unit is still behind the LUN.
public struct LUNIdentity: Hashable, Sendable, CustomStringConvertible {
    /// The preferred LU designator from VPD 83h (NAA, EUI-64, SCSI name, T10 vendor ID, in that order).
    public var designator: Designator?
    /// Every designator associated with the logical unit.
    public var designators: [Designator]
    public var serialNumber: String?
    public var vendor: String
    public var product: String
    public var blockCount: UInt64
    public var blockLength: UInt32

    public var description: String {
        var s = "\(vendor) \(product)"
        if let designator { s += " \(designator)" }
        if let serialNumber { s += " serial \(serialNumber)" }
        return s + " \(blockCount)×\(blockLength)"
    }

    /// The identity the probe's answers give. scsi-commands.md §5.3 (VPD 83h): a stable per-LU identity uses
    /// the designators whose ASSOCIATION is 00b (the logical unit), not those of the target port or device.
    public init(properties p: SCSIDeviceProperties) {
        self.init(
            designator: p.deviceIdentification?.preferredLogicalUnitDesignator,
            designators: p.deviceIdentification?.designators.filter { $0.association == .logicalUnit } ?? [],
            serialNumber: p.serialNumber, vendor: p.inquiry.vendor, product: p.inquiry.product,
            blockCount: p.blockCount, blockLength: p.blockLength)
    }

    public init(
        designator: Designator?, designators: [Designator], serialNumber: String?, vendor: String, product: String,
        blockCount: UInt64, blockLength: UInt32
    ) {
        self.designator = designator
        self.designators = designators
        self.serialNumber = serialNumber
        self.vendor = vendor
        self.product = product
        self.blockCount = blockCount
        self.blockLength = blockLength
    }
}

/// What a new login found compared with the logical unit being served (session recovery, or the daemon
/// attaching a new session's LUN to the kernel device it served before).
public enum ReloginIdentityVerdict: Sendable, Hashable {
    /// Same logical unit, same geometry.
    case same
    /// Same logical unit, more blocks (online resize): pass the new size on.
    case grown(from: UInt64, to: UInt64)
    /// A different logical unit answers, or one that cannot hold what was written (fail-stop).
    case different(String)
}

/// What a refresh after a unit attention found compared with the logical unit being served.
enum UnitAttentionIdentityVerdict: Sendable, Hashable {
    /// Same logical unit, same or more blocks: the target announced the change (2A/09), the device grows.
    case same
    /// Same logical unit, fewer blocks: what was written past the new end is gone, and a file system on the
    /// device still counts on it. The device must be fenced (fail-stop), not shrunk under its users.
    case shrunk(from: UInt64, to: UInt64)
    /// Same logical unit, another logical block length: this device cannot serve it (a new one must be
    /// opened), but nothing says it holds other data, so the device is not fenced.
    case blockLengthChanged(from: UInt32, to: UInt32)
    /// Another logical unit answers behind the LUN: the device must be fenced.
    case different(String)
}

/// The LUN found after a re-login is not the LUN first opened: the session must stop (never write to a
/// different LUN).
public struct LUNIdentityMismatch: Error, Hashable, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Every "is this still the same logical unit" decision, made against the identity of the LU being served:
/// taken from the probe at the first login, judged again after a unit attention, after a session recovery
/// and when the daemon re-attaches a new session's LUN (pure; the device and the daemon act on the verdicts).
///
/// The identity is the VPD 83h LU designators, the VPD 80h serial and the INQUIRY vendor and product
/// (scsi-commands.md §5.3); the geometry (READ CAPACITY, §5.4/§5.5) decides whether the LU can still serve
/// what was written to it.
public struct LUNIdentityGuard: Sendable, Hashable {
    /// The logical unit being served.
    public let identity: LUNIdentity

    public init(_ identity: LUNIdentity) { self.identity = identity }

    /// At the first login: the probe's answers name the logical unit from then on.
    public init(serving properties: SCSIDeviceProperties) { self.init(LUNIdentity(properties: properties)) }

    /// After a new login (the connection was lost and the LU may have been replaced, resized or re-created
    /// meanwhile). A grown LU is the same LU resized; a shrunk one, or another block length, is treated as a
    /// different LU: blocks the client knows about would be gone, or land elsewhere.
    public func afterRelogin(_ now: LUNIdentity) -> ReloginIdentityVerdict {
        if let other = otherLogicalUnit(now) { return .different(other) }
        if identity.blockLength != now.blockLength {
            return .different("logical block length changed from \(identity.blockLength) to \(now.blockLength)")
        }
        if now.blockCount < identity.blockCount {
            return .different("capacity shrank from \(identity.blockCount) to \(now.blockCount) blocks")
        }
        if now.blockCount > identity.blockCount { return .grown(from: identity.blockCount, to: now.blockCount) }
        return .same
    }

    /// The probe after a new login failed: a LUN that answers as another kind of device (a CD-ROM, an
    /// enclosure) is another logical unit. Other failures (LU not configured yet, connection lost) are not
    /// a verdict on the identity: nil, and the caller may retry.
    public func afterRelogin(failedProbe error: any Error) -> LUNIdentityMismatch? {
        guard let probe = error as? SCSIProbeError, probe.kind == .notDirectAccess else { return nil }
        return LUNIdentityMismatch("\(probe)")
    }

    /// After a unit attention on the live session announced a change (scsi-commands.md §4: 2A/09 capacity,
    /// 2A/01 mode parameters, 3F/03 inquiry data, 3F/05 device identifier, 29/xx reset). The capacity may
    /// have grown (the device follows) or shrunk (fail-stop, as after a re-login: the same LU, but it no
    /// longer holds what was written). Judged on what has been re-read so far: the geometry first, then the
    /// VPD pages (a page that could not be re-read keeps its old value, so a transient failure never fences).
    func afterUnitAttention(_ now: LUNIdentity) -> UnitAttentionIdentityVerdict {
        if otherLogicalUnit(now) != nil {
            return .different("now names another logical unit (was \(identity), now \(now))")
        }
        if identity.blockLength != now.blockLength {
            return .blockLengthChanged(from: identity.blockLength, to: now.blockLength)
        }
        if now.blockCount < identity.blockCount { return .shrunk(from: identity.blockCount, to: now.blockCount) }
        return .same
    }

    /// Why `now` is another logical unit, or nil when designators, serial, vendor and product all match.
    private func otherLogicalUnit(_ now: LUNIdentity) -> String? {
        let was = identity
        if was.designators != now.designators {
            return "VPD 83h designators changed from \(Self.describe(was.designators)) to \(Self.describe(now.designators))"
        }
        if was.serialNumber != now.serialNumber {
            return "VPD 80h serial changed from \(was.serialNumber ?? "none") to \(now.serialNumber ?? "none")"
        }
        if was.vendor != now.vendor || was.product != now.product {
            return "INQUIRY changed from \(was.vendor) \(was.product) to \(now.vendor) \(now.product)"
        }
        return nil
    }

    private static func describe(_ list: [Designator]) -> String {
        list.isEmpty ? "none" : list.map { "\($0)" }.joined(separator: ", ")
    }
}
