import BlockBackend
import Logging
import NIOCore
import SCSI

/// Re-reading the LUN when it may have changed: after a unit attention on the live session, and after a new
/// login. `SCSIProbe` reads, `LUNIdentityGuard` judges, and this acts on the verdict: new geometry and the
/// `onInfoChange` handler, an error, or fencing the device.
extension SCSIBlockDevice {
    // MARK: - Changes announced by unit attention

    /// Called with the new `info` after a refresh changed it (e.g. the LU was resized on the target).
    public func onInfoChange(_ handler: @escaping @Sendable (BlockDeviceInfo) -> Void) {
        refreshState.withLockedValue { $0.infoChanged = handler }
    }

    func unitAttention(_ sense: SenseData) {
        // scsi-commands.md §4: re-read capacity after 2A/09, mode data after 2A/01, identification after
        // 3F/03 and 3F/05, everything after a reset or I_T nexus loss (29/xx).
        let code = sense.code
        guard
            code == .capacityDataChanged || code == .modeParametersChanged || code == .inquiryDataChanged
                || code == .deviceIdentifierChanged || code.asc == 0x29
        else { return }
        logger.notice("unit attention: re-reading capacity and mode data", metadata: ["scsi.sense": "\(sense)"])
        let start = refreshState.withLockedValue { r -> Bool in
            if r.refreshing {
                r.refreshAgain = true
                return false
            }
            r.refreshing = true
            return true
        }
        if start { backgroundRefresh() }
    }

    private func backgroundRefresh() {
        refresh().whenComplete { result in
            if case .failure(let error) = result {
                self.logger.warning("refresh after unit attention failed", metadata: ["error": "\(error)"])
            }
            let again = self.refreshState.withLockedValue { r -> Bool in
                if r.refreshAgain {
                    r.refreshAgain = false
                    return true
                }
                r.refreshing = false
                return false
            }
            if again { self.backgroundRefresh() }
        }
    }

    /// Re-reads capacity (READ CAPACITY), identification (VPD 80h, 83h) and mode data (WP, DPOFUA, WCE) and
    /// updates `info`. Fails if the logical block length changed (that needs a new device); fences the device
    /// and fails when the LUN now names another logical unit, or has fewer blocks.
    public func refresh() -> EventLoopFuture<BlockDeviceInfo> {
        let probe = SCSIProbe(runner: runner, logger: logger)
        return transport.eventLoop.makeFutureWithTask {
            let old = self.properties
            var p = old
            try p.setCapacity(await probe.capacity(hasVPD: old.supportedVPDPages != nil), lun: self.lun)
            try self.judgeAfterUnitAttention(p)
            // Same logical unit? (After a reset or reconnect the LUN could now name another LU.)
            // A page that cannot be read now keeps its old value: only a page that was read and differs
            // counts as a different logical unit (a transient failure must not fence a healthy device).
            let (serial, ident) = await probe.identification(listedIn: old.supportedVPDPages)
            if let serial { p.serialNumber = serial.serial }
            if let ident { p.deviceIdentification = ident }
            try self.judgeAfterUnitAttention(p)
            p.setMode(await probe.modeParameters())
            let (info, changed) = self.current.withLockedValue { g -> (BlockDeviceInfo, Bool) in
                let before = g.info
                let fenced = g.fenced
                g = Geometry(p)
                g.fenced = fenced
                return (g.info, g.info != before)
            }
            if changed {
                self.logger.notice("device changed", metadata: ["size": "\(info.size)", "readOnly": "\(info.readOnly)"])
                self.refreshState.withLockedValue { $0.infoChanged }?(info)
            }
            return info
        }
    }

    /// Acts on the guard's verdict on what a refresh has re-read so far: first the capacity (so that a new
    /// block length or a shrink stops the refresh before any VPD page is asked for), then the identification.
    private func judgeAfterUnitAttention(_ p: SCSIDeviceProperties) throws(SCSIProbeError) {
        let identityGuard = self.identityGuard
        let identity = identityGuard.identity
        switch identityGuard.afterUnitAttention(LUNIdentity(properties: p)) {
        case .same:
            return
        case .blockLengthChanged(let from, let to):
            throw SCSIProbeError(.unsupportedGeometry, "LUN \(lun): logical block length changed from \(from) to \(to)")
        case .shrunk(let from, let to):
            let message = "LUN \(lun) shrank from \(from) to \(to) blocks of \(identity.blockLength) bytes: every "
                + "request fails from now on (fail-stop), the device keeps its size rather than shrink under a file "
                + "system that counts on the blocks past the new end"
            try fence(message, .capacityShrank)
        case .different(let why):
            try fence("LUN \(lun) \(why)", .identityChanged)
        }
    }

    /// Every request fails with EIO from now on.
    private func fence(_ message: String, _ kind: SCSIProbeError.Kind) throws(SCSIProbeError) {
        logger.critical("fencing device: \(message)")
        current.withLockedValue { $0.fenced = message }
        throw SCSIProbeError(kind, message)
    }

    // MARK: - Re-login

    /// Probes the LUN again over `transport` (the new connection after a session recovery, before queued
    /// I/O is released) and has the guard compare it with the logical unit served (`LUNIdentityGuard.afterRelogin`).
    /// Fails with `LUNIdentityMismatch` when another LUN answers (the caller must stop: never write to a
    /// different LUN); other failures (LUN not configured yet, connection lost) are worth retrying. A grown
    /// LUN updates `info` and calls the `onInfoChange` handler.
    public func verifyAfterRelogin(over transport: any SCSITransport) -> EventLoopFuture<ReloginIdentityVerdict> {
        let runner = CommandRunner(transport: transport, lun: lun, policy: self.runner.policy, logger: logger)
        let probe = SCSIProbe(runner: runner, logger: logger)
        let logger = self.logger
        let identityGuard = self.identityGuard
        return transport.eventLoop.makeFutureWithTask {
            let p: SCSIDeviceProperties
            do {
                p = try await probe.properties()
            } catch {
                throw identityGuard.afterRelogin(failedProbe: error) ?? error
            }
            let verdict = identityGuard.afterRelogin(LUNIdentity(properties: p))
            switch verdict {
            case .same:
                break
            case .different(let why):
                throw LUNIdentityMismatch("LUN \(runner.lun): \(why)")
            case .grown(let from, let to):
                logger.notice("LUN grew while the session was down", metadata: ["blocks.before": "\(from)", "blocks.now": "\(to)"])
                let info = self.current.withLockedValue { g -> BlockDeviceInfo in
                    g = Geometry(p)
                    return g.info
                }
                self.refreshState.withLockedValue { $0.infoChanged }?(info)
            }
            return verdict
        }
    }
}
