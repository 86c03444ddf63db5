import ISCSIProtocol
import NIOCore

// MARK: - Login (RFC 7143 §6.3, §11.12, §11.13)

extension ConnectionStateMachine {
    /// Sends the first Login Request. False (and the promise failed) when the connection is not fresh.
    @discardableResult
    mutating func startLogin(_ login: LoginStateMachine, promise: EventLoopPromise<LoginOutcome>) -> Bool {
        switch state {
        case .idle:
            break
        case .loggingIn, .fullFeature, .closed:
            emit(.completeLogin(promise, .failure(.connectionClosed)))
            return false
        case ._modifying:
            preconditionFailure("re-entered while modifying")
        }
        var loggingIn = LoggingIn(login: login, promise: promise)
        let step = loggingIn.login.start()
        enter(.loggingIn(loggingIn))
        emit(.armTimer(.login, configuration.loginTimeout))
        emit(.send(loginRequest(step, expStatSN: loggingIn.expStatSN)))
        emit(.flush)
        return true
    }

    private func loginRequest(_ step: LoginRequestStep, expStatSN: SerialNumber) -> OutboundPDU {
        var request = ISCSIPDU.LoginRequest()
        request.transit = step.transit
        request.continue = step.continue
        request.currentStage = step.csg.rawValue
        request.nextStage = step.wireNSG.rawValue
        request.isid = configuration.isid
        request.tsih = 0
        request.initiatorTaskTag = Self.loginITT
        request.connectionID = 0
        // RFC 7143 §11.12.8: the leading login carries the session's first CmdSN; it does not advance it.
        request.cmdSN = initialCmdSN
        request.expStatSN = expStatSN
        request.data = step.keys.encoded(allocator: allocator)
        return OutboundPDU(request.pdu)
    }

    /// A Login Response; `state` is `_modifying` and this sets the next one (or throws, and the caller
    /// puts `loggingIn` back).
    mutating func receiveLoginResponse(_ pdu: ISCSIPDU, _ loggingIn: inout LoggingIn, now: NIODeadline) throws(ISCSISessionError) {
        let response: ISCSIPDU.LoginResponse
        do {
            response = try ISCSIPDU.LoginResponse(pdu)
        } catch {
            throw .malformedPDU(error)
        }
        guard response.initiatorTaskTag == Self.loginITT else {
            throw .protocolViolation("Login Response with ITT \(response.initiatorTaskTag)")
        }
        loggingIn.expStatSN = response.statSN + 1
        let summary = LoginResponseSummary(
            statusClass: response.statusClass, statusDetail: response.statusDetail, transit: response.transit,
            continue: response.continue, csg: LoginStage(rawValue: response.currentStage),
            nsg: LoginStage(rawValue: response.nextStage), tsih: response.tsih, text: response.data
        )
        let action: LoginAction
        do {
            action = try loggingIn.login.receive(summary)
        } catch {
            throw .login(error)
        }
        switch action {
        case .send(let step):
            enter(.loggingIn(loggingIn))
            emit(.send(loginRequest(step, expStatSN: loggingIn.expStatSN)))
        case .complete(let operational, let tsih):
            emit(.cancelTimer(.login))
            let negotiated = SessionParameters(operational)
            let depth = max(1, min(configuration.queueDepth, 0xFF00))
            // RFC 7143 §4.2.2.1: the first command carries the CmdSN of the login; the final Login Response
            // sets the window and StatSN.
            var ff = FullFeature(
                parameters: negotiated,
                window: CommandWindow(
                    cmdSN: initialCmdSN, expCmdSN: response.expCmdSN, maxCmdSN: response.maxCmdSN,
                    expStatSN: response.statSN + 1),
                tasks: TaskTable(capacity: depth),
                depth: AdaptiveQueueDepth(maximum: depth)
            )
            // Digests start with the first PDU after the Login Phase (RFC 7143 §13.1).
            emit(.enterFullFeature(negotiated))
            receivedBytes(at: now)
            if let interval = configuration.noopOutInterval {
                let keepAlive = KeepAlive(interval: interval, timeout: configuration.noopOutTimeout)
                ff.keepAlive = keepAlive
                emit(.armTimer(.keepAlive, keepAlive.tickInterval))
            }
            if let timeout = configuration.commandTimeout {
                let ladder = CommandTimeoutLadder(commandTimeout: timeout, taskManagementTimeout: configuration.taskManagementTimeout)
                ff.ladder = ladder
                emit(.armTimer(.commandTimeout, ladder.tickInterval))
            }
            enter(.fullFeature(FullFeatureStorage(ff)))
            logger.debug("iSCSI login complete", metadata: ["iscsi.tsih": "\(tsih)", "iscsi.parameters": "\(negotiated)"])
            emit(.completeLogin(loggingIn.promise, .success(.loggedIn(operational, tsih: tsih))))
        case .redirect(let address, _):
            emit(.cancelTimer(.login))
            guard let portal = TargetPortalAddress(parsing: address) else {
                throw .login(LoginError(.protocolViolation, key: "TargetAddress", "unusable redirect address"))
            }
            enter(.closed)
            emit(.completeLogin(loggingIn.promise, .success(.redirect(portal))))
            emit(.close)
        }
    }
}

// MARK: - Text (discovery, RFC 7143 §11.10, §11.11)

extension ConnectionStateMachine {
    /// Sends a Text Request and collects the whole response text, following C-bit continuations. One
    /// exchange at a time.
    mutating func sendText(_ keys: TextKeyValues, promise: EventLoopPromise<ByteBuffer>) {
        guard let storage = takeFullFeature() else {
            emit(.completeText(promise, .failure(closeReason ?? .sessionClosed)))
            return
        }
        defer { store(storage) }
        switch storage.value.logout {
        case .none, .draining: break
        case .requested, .done:
            emit(.completeText(promise, .failure(closeReason ?? .sessionClosed)))
            return
        }
        guard storage.value.text == nil, storage.value.window.isOpen else {
            emit(.completeText(promise, .failure(closeReason ?? .sessionClosed)))
            return
        }
        storage.value.text = TextExchange(text: allocator.buffer(capacity: 1024), promise: promise)
        var request = ISCSIPDU.TextRequest()
        request.final = true
        request.initiatorTaskTag = Self.textITT
        request.targetTransferTag = reservedTaskTag
        request.cmdSN = storage.value.window.assignCmdSN()
        request.expStatSN = storage.value.window.expStatSN
        request.data = keys.encoded(allocator: allocator)
        emit(.send(OutboundPDU(request.pdu)))
        emit(.scheduleFlush)
    }

    mutating func receiveTextResponse(_ response: ISCSIPDU.TextResponse, _ ff: inout FullFeature) throws(ISCSISessionError) {
        guard response.initiatorTaskTag == Self.textITT, var exchange = ff.text else {
            throw .protocolViolation("unexpected Text Response")
        }
        guard exchange.text.readableBytes + response.data.readableBytes <= TextLimits.default.maxTotalBytes else {
            throw .protocolViolation("Text Response longer than \(TextLimits.default.maxTotalBytes) bytes")
        }
        ff.text = nil  // `exchange` holds the only reference: the text grows in place
        exchange.text.writeImmutableBuffer(response.data)
        if response.final {
            emit(.completeText(exchange.promise, .success(exchange.text)))
            return
        }
        ff.text = exchange
        // RFC 7143 §11.11.2, §11.10.4: ask for the rest with an empty Text Request echoing the TTT. It is a
        // non-immediate request: it needs room in the command window (§4.2.2.1).
        guard ff.window.isOpen else {
            throw .protocolViolation("Text Response asks for more with the command window closed")
        }
        var request = ISCSIPDU.TextRequest()
        request.final = true
        request.initiatorTaskTag = Self.textITT
        request.targetTransferTag = response.targetTransferTag
        request.cmdSN = ff.window.assignCmdSN()
        request.expStatSN = ff.window.expStatSN
        emit(.send(OutboundPDU(request.pdu)))
    }
}
