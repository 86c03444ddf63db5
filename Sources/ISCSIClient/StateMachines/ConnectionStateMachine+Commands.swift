import ISCSIProtocol
import NIOCore
import SCSI

/// A SCSI task in flight.
struct SCSITask {
    var lun: UInt64
    var promise: EventLoopPromise<SCSICommandResult>
    /// The command as submitted, kept for re-issue on a new connection after session recovery.
    var original: PendingCommand
    /// Submission order, so re-issued commands keep their original order.
    var sequence: UInt64
    /// For ABORT TASK's RefCmdSN (RFC 7143 §11.5.3) and the command timeout.
    var cmdSN: SerialNumber
    var sentAt: NIODeadline
    /// The write payload (slices of it go out as Data-Out; never copied).
    var dataOut: ByteBuffer?
    var expectedDataIn: Int
    /// Data-In so far: the first PDU's slice, or an assembled buffer once a second PDU came.
    var dataIn: ByteBuffer?
    var dataInAssembled = false
    /// With `SCSICommand.segmentedDataIn` and more than one Data-In PDU: every slice, in order (never
    /// joined); `dataIn` then is nil. A single PDU stays in `dataIn`.
    var dataInSegments: [ByteBuffer] = []
    var dataInReceived = 0
    var nextDataSN = SerialNumber(0)
    var nextR2TSN = SerialNumber(0)
}

// MARK: - Submitting (RFC 7143 §4.2.2.1, §11.3)

extension ConnectionStateMachine {
    /// Queues a command; it goes out when the CmdSN window and the queue depth allow. `now` stamps what
    /// goes out (the command timeout counts from it).
    mutating func submit(_ command: PendingCommand, now: NIODeadline) {
        guard let storage = takeFullFeature() else {
            emit(.failCommand(command.promise, closeReason ?? .sessionClosed))
            return
        }
        defer { store(storage) }
        guard case .none = storage.value.logout else {
            submitDuringLogout(command, &storage.value)
            return
        }
        let writeLength = command.command.dataOut?.readableBytes ?? 0
        guard writeLength <= Int(UInt32.max), command.command.cdb.count <= 16 else {
            emit(.failCommand(command.promise, .invalidCommand("transfer length or CDB too long")))
            return
        }
        storage.value.pending.append(command)
        sendQueuedCommands(&storage.value, now: now)
        emit(.scheduleFlush)
    }

    /// A command submitted once a logout is under way: held for the next connection when the target asked
    /// for the logout and a session will reconnect, refused otherwise.
    private mutating func submitDuringLogout(_ command: PendingCommand, _ ff: inout FullFeature) {
        switch ff.logout {
        case .draining(var logout) where connectionLostSink != nil && logout.requestedByTarget:
            // The target asked for a logout; the session reconnects and sends these on the new connection.
            logout.held.append(command)
            ff.logout = .draining(logout)
        case .requested(var logout) where connectionLostSink != nil && logout.requestedByTarget:
            logout.held.append(command)
            ff.logout = .requested(logout)
        case .none, .draining, .requested, .done:
            emit(.failCommand(command.promise, closeReason ?? .sessionClosed))
        }
    }

    /// Sends what the window lets through. `receive` does this after every PDU; as an event of its own it
    /// changes nothing unless the window or the slots were changed from outside (tests drive it at random).
    mutating func sendQueuedCommands(now: NIODeadline) {
        guard let storage = takeFullFeature() else { return }
        sendQueuedCommands(&storage.value, now: now)
        store(storage)
    }

    /// Sends queued commands while the window is open and task slots are free (RFC 7143 §4.2.2.1); once
    /// nothing is left of a draining connection, the Logout Request.
    mutating func sendQueuedCommands(_ ff: inout FullFeature, now: NIODeadline) {
        switch ff.logout {
        case .none, .draining: break
        case .requested, .done: return
        }
        while !ff.pending.isEmpty, ff.window.isOpen, !ff.tasks.isFull, ff.tasks.count < ff.depth.current {
            sendCommand(ff.pending.removeFirst(), &ff, now: now)
        }
        if ff.pending.isEmpty, ff.tasks.isEmpty, ff.text == nil { sendLogoutIfDraining(&ff) }
    }

    private mutating func sendCommand(_ pendingCommand: PendingCommand, _ ff: inout FullFeature, now: NIODeadline) {
        let command = pendingCommand.command
        let lun = pendingCommand.lun.encoded
        let writeLength = command.dataOut?.readableBytes ?? 0
        let expectedIn = Int(command.expectedDataInLength)
        let sequence = ff.nextSequence
        ff.nextSequence &+= 1
        let cmdSN = ff.window.assignCmdSN()
        guard
            let itt = ff.tasks.insert({ _ in
                SCSITask(lun: lun, promise: pendingCommand.promise, original: pendingCommand, sequence: sequence,
                         cmdSN: cmdSN, sentAt: now, dataOut: command.dataOut, expectedDataIn: expectedIn)
            })
        else {
            preconditionFailure("sendQueuedCommands checked for a free slot")
        }
        let immediate = DataOutPlanner.immediateLength(total: writeLength, parameters: ff.parameters)
        let unsolicited = DataOutPlanner.unsolicitedLength(total: writeLength, parameters: ff.parameters)

        var pdu = ISCSIPDU.SCSICommand()
        pdu.final = unsolicited == immediate
        pdu.read = expectedIn > 0
        pdu.write = writeLength > 0
        pdu.attribute = .simple
        pdu.lun = lun
        pdu.initiatorTaskTag = itt
        pdu.cmdSN = cmdSN
        pdu.expStatSN = ff.window.expStatSN
        pdu.cdb = ISCSIPDU.CDBField(command.cdb)
        var ahs: ByteBuffer? = nil
        if writeLength > 0 {
            pdu.expectedDataTransferLength = UInt32(writeLength)
            if expectedIn > 0 {
                // RFC 7143 §11.2.2.4: bidirectional commands carry the read length in an AHS.
                ahs = AdditionalHeaderSegment.encode([.bidirectionalReadExpectedDataTransferLength(UInt32(expectedIn))])
            }
        } else {
            pdu.expectedDataTransferLength = UInt32(expectedIn)
        }
        let data = immediate > 0 ? command.dataOut.flatMap { $0.getSlice(at: $0.readerIndex, length: immediate) } : nil
        emit(.send(OutboundPDU(header: pdu.pdu.header, additionalHeaderSegments: ahs, data: data)))

        if unsolicited > immediate, let dataOut = command.dataOut {
            // RFC 7143 §13.10: with InitialR2T=No, unsolicited Data-Out (TTT 0xffffffff) up to FirstBurstLength.
            emit(.sendDataOut(DataOutBurst(
                initiatorTaskTag: itt, lun: lun, expStatSN: ff.window.expStatSN, payload: dataOut,
                segments: DataOutPlanner.segments(
                    offset: immediate, length: unsolicited - immediate,
                    maxSegment: ff.parameters.targetMaxRecvDataSegmentLength, targetTransferTag: reservedTaskTag))))
        }
    }

    /// A task left the table: the ladder starts over, and a draining connection may log out now.
    mutating func taskFinished(_ ff: inout FullFeature) {
        ff.ladder?.commandCompleted()
        if ff.tasks.isEmpty, ff.pending.isEmpty { sendLogoutIfDraining(&ff) }
    }
}

// MARK: - Answers (RFC 7143 §11.4, §11.7, §11.8, §11.17)

extension ConnectionStateMachine {
    /// The full feature phase PDUs; their sequence numbers are applied already.
    mutating func receive(_ message: InboundMessage, dataPieces: [ByteBuffer], _ ff: inout FullFeature, now: NIODeadline) throws(ISCSISessionError) {
        switch message {
        case .dataIn(let dataIn): try receiveDataIn(dataIn, pieces: dataPieces, &ff)
        case .scsiResponse(let response): try receiveSCSIResponse(response, &ff)
        case .readyToTransfer(let r2t): try receiveR2T(r2t, &ff)
        case .nopIn(let nop): receiveNOPIn(nop, &ff)
        case .asyncMessage(let message): receiveAsyncMessage(message, &ff)
        case .reject(let reject): try receiveReject(reject, &ff)
        case .logoutResponse(let response): try receiveLogoutResponse(response, &ff)
        case .taskManagementResponse(let response): try receiveTaskManagementResponse(response, &ff, now: now)
        case .textResponse(let response): try receiveTextResponse(response, &ff)
        }
    }

    private func taskSlot(_ itt: UInt32, _ what: String, in ff: FullFeature) throws(ISCSISessionError) -> Int {
        guard let slot = ff.tasks.slot(for: itt) else {
            throw .protocolViolation("\(what) for unknown ITT 0x\(String(itt, radix: 16))")
        }
        return slot
    }

    /// RFC 7143 §11.7: Data-In, checked for DataSN and Buffer Offset order (DataPDUInOrder=Yes) and
    /// the expected length; the status may ride on the last one (S bit).
    /// `pieces`: the data segment as the slices it arrived in, when it spanned reads (else `dataIn.data`).
    private mutating func receiveDataIn(_ dataIn: ISCSIPDU.DataIn, pieces: [ByteBuffer], _ ff: inout FullFeature) throws(ISCSISessionError) {
        let slot = try taskSlot(dataIn.initiatorTaskTag, "Data-In", in: ff)
        let allocator = self.allocator
        try ff.tasks.modify(slot: slot) { (task: inout SCSITask) throws(ISCSISessionError) in
            let length = pieces.isEmpty ? dataIn.data.readableBytes : pieces.reduce(0) { $0 + $1.readableBytes }
            guard dataIn.dataSN == task.nextDataSN else {
                throw .protocolViolation("Data-In DataSN \(dataIn.dataSN), expected \(task.nextDataSN)")
            }
            guard Int(dataIn.bufferOffset) == task.dataInReceived else {
                throw .protocolViolation("Data-In Buffer Offset \(dataIn.bufferOffset), expected \(task.dataInReceived)")
            }
            guard task.dataInReceived + length <= task.expectedDataIn else {
                throw .protocolViolation("Data-In beyond the expected \(task.expectedDataIn) bytes")
            }
            task.nextDataSN += 1
            if pieces.isEmpty {
                if length > 0 { Self.store(dataIn.data, in: &task, allocator: allocator) }
            } else {
                for piece in pieces { Self.store(piece, in: &task, allocator: allocator) }
            }
            task.dataInReceived += length
        }
        guard dataIn.statusPresent, let task = ff.tasks.remove(slot: slot) else { return }
        let status = SCSIStatus(rawValue: dataIn.status)
        if ff.depth.record(status) {
            logger.debug("queue depth now \(ff.depth.current)")
        }
        let result = SCSICommandResult(
            status: status, senseData: nil, dataIn: task.dataIn, residual: dataIn.signedResidual,
            dataInSegments: task.dataInSegments
        )
        emit(.succeedCommand(task.promise, result))
        taskFinished(&ff)
    }

    /// Keeps one piece of Data-In: the first as it is (the common case: no array, no copy); later ones
    /// as further slices with `SCSICommand.segmentedDataIn`, else appended to one assembled buffer.
    private static func store(_ piece: ByteBuffer, in task: inout SCSITask, allocator: ByteBufferAllocator) {
        if task.dataIn == nil && task.dataInSegments.isEmpty {
            task.dataIn = piece
        } else if task.original.command.segmentedDataIn {
            if let first = task.dataIn {
                task.dataInSegments = [first]
                task.dataIn = nil
            }
            task.dataInSegments.append(piece)
        } else {
            if !task.dataInAssembled, let first = task.dataIn {
                var assembled = allocator.buffer(capacity: task.expectedDataIn)
                assembled.writeImmutableBuffer(first)
                task.dataIn = assembled
                task.dataInAssembled = true
            }
            task.dataIn!.writeImmutableBuffer(piece)
        }
    }

    /// RFC 7143 §11.4: status, sense data (a slice of the PDU) and residuals.
    private mutating func receiveSCSIResponse(_ response: ISCSIPDU.SCSIResponse, _ ff: inout FullFeature) throws(ISCSISessionError) {
        let slot = try taskSlot(response.initiatorTaskTag, "SCSI Response", in: ff)
        guard let task = ff.tasks.remove(slot: slot) else { return }
        if response.response != 0 {
            emit(.failCommand(task.promise, .targetFailure(response: response.response)))
        } else {
            let status = SCSIStatus(rawValue: response.status)
            if ff.depth.record(status) {
                logger.notice("queue depth now \(ff.depth.current)", metadata: ["scsi.status": "\(status)"])
            }
            let result = SCSICommandResult(
                status: status, senseData: response.senseData, dataIn: task.dataIn, residual: response.signedResidual,
                dataInSegments: task.dataInSegments
            )
            emit(.succeedCommand(task.promise, result))
        }
        taskFinished(&ff)
    }

    /// RFC 7143 §11.8: send the requested range as Data-Out PDUs of at most the target's
    /// MaxRecvDataSegmentLength, DataSN from 0, F on the last (RFC 7143 §11.7.1).
    private mutating func receiveR2T(_ r2t: ISCSIPDU.ReadyToTransfer, _ ff: inout FullFeature) throws(ISCSISessionError) {
        let slot = try taskSlot(r2t.initiatorTaskTag, "R2T", in: ff)
        guard let task = ff.tasks[slot: slot], let payload = task.dataOut else {
            throw .protocolViolation("R2T for a command without data")
        }
        guard r2t.r2tSN == task.nextR2TSN else {
            throw .protocolViolation("R2TSN \(r2t.r2tSN), expected \(task.nextR2TSN)")
        }
        let offset = Int(r2t.bufferOffset)
        let length = Int(r2t.desiredDataTransferLength)
        // RFC 7143 §11.8.4: "The Desired Data Transfer Length MUST NOT be 0 and MUST NOT exceed MaxBurstLength."
        guard length <= ff.parameters.maxBurstLength, offset + length <= payload.readableBytes else {
            throw .protocolViolation("R2T for \(length) bytes at \(offset) outside the write")
        }
        ff.tasks.modify(slot: slot) { $0.nextR2TSN += 1 }
        emit(.sendDataOut(DataOutBurst(
            initiatorTaskTag: r2t.initiatorTaskTag, lun: task.lun, expStatSN: ff.window.expStatSN, payload: payload,
            segments: DataOutPlanner.segments(
                offset: offset, length: length, maxSegment: ff.parameters.targetMaxRecvDataSegmentLength,
                targetTransferTag: r2t.targetTransferTag))))
    }

    /// RFC 7143 §11.17: fail the rejected command; other rejections end the connection (ERL 0).
    private mutating func receiveReject(_ reject: ISCSIPDU.Reject, _ ff: inout FullFeature) throws(ISCSISessionError) {
        logger.warning("target rejected a PDU", metadata: ["iscsi.reason": "\(reject.reason.rawValue)"])
        if let header = reject.rejectedHeader, header.opcode == .scsiCommand,
            let slot = ff.tasks.slot(for: header.initiatorTaskTag), let task = ff.tasks.remove(slot: slot)
        {
            emit(.failCommand(task.promise, .rejected(reason: reject.reason.rawValue)))
            taskFinished(&ff)
            return
        }
        if let header = reject.rejectedHeader, header.opcode == .nopOut { return }
        throw .rejected(reason: reject.reason.rawValue)
    }
}

extension ISCSIPDU.CDBField {
    /// The CDB field of a SCSI Command PDU (RFC 7143 §11.3.5): the CDB, zero padded to 16 bytes.
    init(_ cdb: CDB) {
        let words = cdb.bigEndianWords
        self.init(high: words.high, low: words.low)
    }
}
