import NBDProtocol
import NIOCore

/// The shared budget for WRITE payloads (`NBDPayloadBudget`): what a connection reserves while a payload
/// arrives and holds until the write completes.
extension NBDConnectionHandler {
    /// A complete payload arrived: turn the partial reservation into one for the whole payload (released when
    /// the write completes). False: no memory for it, the write is failed with ENOMEM.
    func admitPayload(_ bytes: Int) -> Bool {
        guard let payloadBudget else { return true }
        let held = reservedPartial
        reservedPartial = 0
        if bytes <= held {
            payloadBudget.release(held - bytes)
            return true
        }
        if payloadBudget.tryReserve(bytes - held) { return true }
        payloadBudget.release(held)
        logger.notice("write payload refused: buffer budget exhausted", metadata: ["nbd.bytes": "\(bytes)", "nbd.budget": "\(payloadBudget.limit)"])
        return false
    }

    /// A payload is arriving: reserve what is buffered so far, or give it up (the machine drops it: ENOMEM).
    func reservePartialPayload(_ buffered: Int, of length: UInt32, in buffer: inout ByteBuffer) {
        guard let payloadBudget, buffered > reservedPartial else { return }
        if payloadBudget.tryReserve(buffered - reservedPartial) {
            reservedPartial = buffered
            return
        }
        logger.notice(
            "write payload dropped while arriving: buffer budget exhausted",
            metadata: ["nbd.length": "\(length)", "nbd.budget": "\(payloadBudget.limit)"])
        transmission?.refusePayload(in: &buffer)
        releasePartial()
    }

    func releasePartial() {
        if reservedPartial > 0 { payloadBudget?.release(reservedPartial) }
        reservedPartial = 0
    }
}
