import NIOCore

/// Something the server sends during the handshake.
public enum NBDHandshakeMessage: Hashable, Sendable {
    case optionReply(NBDOptionReply)
    /// The reply to NBD_OPT_EXPORT_NAME (size, flags, and 124 zero bytes unless NO_ZEROES was agreed).
    case exportNameReply(size: UInt64, flags: NBDTransmissionFlags, zeroes: Bool)
}

extension ByteBuffer {
    @discardableResult
    public mutating func writeNBDHandshakeMessage(_ message: NBDHandshakeMessage) -> Int {
        switch message {
        case .optionReply(let reply): writeNBDOptionReply(reply)
        case .exportNameReply(let size, let flags, let zeroes): writeNBDExportNameReply(size: size, flags: flags, zeroes: zeroes)
        }
    }
}

/// What the connection must do after the handshake consumed some input.
public enum NBDHandshakeAction: Hashable, Sendable {
    /// Send these messages; option haggling continues.
    case send([NBDHandshakeMessage])
    /// Send these messages, then enter the transmission phase with these parameters. Any bytes left in the
    /// input buffer belong to the transmission phase.
    case sendAndStartTransmission([NBDHandshakeMessage], NBDTransmissionParameters)
    /// Send these messages, then close the connection (NBD_OPT_ABORT: a soft disconnect).
    case sendAndClose([NBDHandshakeMessage])
    /// Send these messages (the NBD_REP_ACK to NBD_OPT_STARTTLS) in plain text, then start a TLS server
    /// handshake; option haggling continues over TLS (nbd-proto.md "TLS support"). Any bytes left in the input
    /// buffer were sent before the ACK and are a protocol violation.
    case sendAndStartTLS([NBDHandshakeMessage])
}

/// The server side of fixed newstyle negotiation (nbd-proto.md "Fixed newstyle negotiation"), a value type
/// fed with received bytes and returning actions. It does no IO.
///
///     var handshake = NBDServerHandshake(export: export)
///     buffer.writeNBDGreeting(flags: handshake.handshakeFlags)        // sent on connect
///     while let action = try handshake.receive(&inbound) { perform(action) }
///
/// Policy decisions:
/// - The server offers `NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES`; client flags outside those are a
///   hard disconnect ("Client flags": the server MUST drop the connection). A client without
///   `NBD_FLAG_C_FIXED_NEWSTYLE` is still served fixed newstyle replies (the spec allows it).
/// - One export: the default (empty name) and its canonical `name` both reach it; anything else gets
///   `NBD_REP_ERR_UNKNOWN` (GO/INFO) or a hard disconnect (EXPORT_NAME, which "MUST terminate the session").
/// - NBD_INFO_BLOCK_SIZE is always sent with GO/INFO (we enforce non-default constraints), but GO without it
///   is not refused with `NBD_REP_ERR_BLOCK_SIZE_REQD` ("SHOULD NOT refuse").
/// - TLS (nbd-proto.md "TLS support"): without `tlsRequired` the server is in NOTLS mode and NBD_OPT_STARTTLS
///   gets `NBD_REP_ERR_POLICY`. With `tlsRequired` it is in FORCEDTLS mode: before TLS every option other
///   than STARTTLS and ABORT gets `NBD_REP_ERR_TLS_REQD` (NBD_OPT_EXPORT_NAME, which cannot fail, is a hard
///   disconnect); STARTTLS gets `NBD_REP_ACK` and `.sendAndStartTLS`; a second STARTTLS gets
///   `NBD_REP_ERR_INVALID`.
/// - SET/LIST_META_CONTEXT are parsed and validated, and answered with no contexts (no BLOCK_STATUS).
/// - Unknown options → `NBD_REP_ERR_UNSUP`.
public struct NBDServerHandshake: Sendable {
    public let export: NBDExport
    public let handshakeFlags: NBDHandshakeFlags = [.fixedNewstyle, .noZeroes]

    private enum State: Sendable {
        /// Greeting sent; waiting for the 32-bit client flags.
        case awaitingClientFlags
        /// Option haggling.
        case haggling(Haggling)
        /// Transmission phase entered or connection closing: no more input is ours.
        case finished
    }

    private struct Haggling: Sendable {
        var clientFlags: NBDClientFlags
        var structuredReplies = false
        /// NBD_OPT_STARTTLS was acknowledged: everything from here on is inside TLS.
        var tlsStarted = false
    }

    /// FORCEDTLS mode: options other than STARTTLS/ABORT are refused until TLS is started.
    public let tlsRequired: Bool

    private var state: State = .awaitingClientFlags
    private var decoder: NBDOptionDecoder

    public init(export: NBDExport, maximumOptionLength: UInt32 = 64 * 1024, tlsRequired: Bool = false) {
        self.export = export
        self.tlsRequired = tlsRequired
        self.decoder = NBDOptionDecoder(maximumDataLength: maximumOptionLength)
    }

    /// True once transmission started or the connection is to be closed.
    public var isFinished: Bool {
        if case .finished = state { return true }
        return false
    }

    /// Consumes input; returns `nil` when more bytes are needed. Throws on a protocol violation that requires
    /// a hard disconnect.
    public mutating func receive(_ buffer: inout ByteBuffer) throws(NBDProtocolError) -> NBDHandshakeAction? {
        while true {
            switch state {
            case .awaitingClientFlags:
                guard let raw = buffer.readInteger(as: UInt32.self) else { return nil }
                let flags = NBDClientFlags(rawValue: raw)
                let offered: NBDClientFlags = [.fixedNewstyle, .noZeroes]
                guard flags.isSubset(of: offered) else {
                    state = .finished
                    throw NBDProtocolError(.badClientFlags, "client flags 0x\(String(raw, radix: 16))")
                }
                state = .haggling(Haggling(clientFlags: flags))
            case .haggling(var haggling):
                guard let request = try decoder.decode(&buffer) else { return nil }
                let action = try handle(request, &haggling)
                switch action {
                case .send, .sendAndStartTLS: state = .haggling(haggling)
                case .sendAndStartTransmission, .sendAndClose: state = .finished
                }
                return action
            case .finished:
                return nil
            }
        }
    }

    // MARK: - Options

    private func handle(_ request: NBDOptionRequest, _ haggling: inout Haggling) throws(NBDProtocolError)
        -> NBDHandshakeAction
    {
        let option = request.option
        if tlsRequired && !haggling.tlsStarted {
            switch option {
            case .startTLS:
                guard request.data.readableBytes == 0 else { return invalid(option, "NBD_OPT_STARTTLS takes no data") }
                haggling.tlsStarted = true
                return .sendAndStartTLS([.optionReply(.ack(option))])
            case .abort:
                return .sendAndClose([.optionReply(.ack(option))])
            case .exportName:
                // "as this request cannot error, it MUST terminate the session".
                throw NBDProtocolError(.tlsRequired, "NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS")
            default:
                return .send([.optionReply(.error(option, .errTLSReqd, "TLS is required: send NBD_OPT_STARTTLS first"))])
            }
        }
        switch option {
        case .exportName:
            return try exportName(request, haggling)
        case .abort:
            // nbd-proto.md NBD_OPT_ABORT: "The server MUST reply with NBD_REP_ACK"; data is ignored.
            return .sendAndClose([.optionReply(.ack(option))])
        case .list:
            // "the server SHOULD reject a request that includes data with NBD_REP_ERR_INVALID".
            guard request.data.readableBytes == 0 else { return invalid(option, "NBD_OPT_LIST takes no data") }
            return .send([
                .optionReply(.init(option: option, type: .server, payload: .server(name: export.name, details: export.description))),
                .optionReply(.ack(option)),
            ])
        case .startTLS:
            guard request.data.readableBytes == 0 else { return invalid(option, "NBD_OPT_STARTTLS takes no data") }
            if haggling.tlsStarted { return invalid(option, "TLS is already active") }
            return .send([.optionReply(.error(option, .errPolicy, "TLS is not offered by this server"))])
        case .info, .go:
            return infoOrGo(request, haggling)
        case .structuredReply:
            guard request.data.readableBytes == 0 else {
                return invalid(option, "NBD_OPT_STRUCTURED_REPLY takes no data")
            }
            haggling.structuredReplies = true
            return .send([.optionReply(.ack(option))])
        case .listMetaContext, .setMetaContext:
            return metaContext(request, haggling)
        default:
            return .send([.optionReply(.error(option, .errUnsup, "option \(option) is not supported"))])
        }
    }

    private func invalid(_ option: NBDOption, _ message: String) -> NBDHandshakeAction {
        .send([.optionReply(.error(option, .errInvalid, message))])
    }

    /// NBD_OPT_EXPORT_NAME: no way to report an error, so an unknown name is a hard disconnect.
    private func exportName(_ request: NBDOptionRequest, _ haggling: Haggling) throws(NBDProtocolError)
        -> NBDHandshakeAction
    {
        var data = request.data
        let name = data.readString(length: data.readableBytes) ?? ""
        guard export.isNamed(name) else {
            throw NBDProtocolError(.exportNameRefused, "unknown export name (\(name.utf8.count) bytes)")
        }
        let parameters = NBDTransmissionParameters(export: export, structuredReplies: haggling.structuredReplies)
        return .sendAndStartTransmission(
            [.exportNameReply(size: export.size, flags: parameters.transmissionFlags, zeroes: !haggling.clientFlags.contains(.noZeroes))],
            parameters)
    }

    /// NBD_OPT_INFO / NBD_OPT_GO: name length, name, count, info requests.
    private func infoOrGo(_ request: NBDOptionRequest, _ haggling: Haggling) -> NBDHandshakeAction {
        let option = request.option
        var data = request.data
        // "32 bits, length of name (unsigned); MUST be no larger than the option data length - 6".
        guard let nameLength = data.readInteger(as: UInt32.self), Int64(nameLength) <= Int64(request.data.readableBytes) - 6,
            let name = data.readString(length: Int(nameLength)),
            let count = data.readInteger(as: UInt16.self),
            data.readableBytes == Int(count) * 2
        else { return invalid(option, "malformed \(option) request") }
        guard name.utf8.count <= 4096 else { return invalid(option, "export name too long") }
        var requested: Set<NBDInfoType> = []
        for _ in 0..<count {
            if let raw = data.readInteger(as: UInt16.self) { requested.insert(NBDInfoType(rawValue: raw)) }
        }
        guard export.isNamed(name) else {
            return .send([.optionReply(.error(option, .errUnknown, "no export named \"\(name)\""))])
        }
        let parameters = NBDTransmissionParameters(export: export, structuredReplies: haggling.structuredReplies)
        var replies: [NBDHandshakeMessage] = [
            .optionReply(.init(option: option, type: .info, payload: .info(.export(size: export.size, flags: parameters.transmissionFlags))))
        ]
        if requested.contains(.name) {
            replies.append(.optionReply(.init(option: option, type: .info, payload: .info(.name(export.name)))))
        }
        if requested.contains(.description) && !export.description.isEmpty {
            replies.append(.optionReply(.init(option: option, type: .info, payload: .info(.description(export.description)))))
        }
        // Sent even when not requested: we enforce non-default constraints ("Size constraints").
        replies.append(
            .optionReply(
                .init(
                    option: option, type: .info,
                    payload: .info(.blockSize(minimum: export.minimumBlockSize, preferred: export.preferredBlockSize, maximum: export.maximumPayload)))))
        replies.append(.optionReply(.ack(option)))
        return option == .go ? .sendAndStartTransmission(replies, parameters) : .send(replies)
    }

    /// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: syntactically checked, then answered with no
    /// contexts ("If none of the query strings find any metadata contexts, the server MUST send a single reply
    /// of type NBD_REP_ACK").
    private func metaContext(_ request: NBDOptionRequest, _ haggling: Haggling) -> NBDHandshakeAction {
        let option = request.option
        // SET "MUST NOT be requested unless structured replies have been negotiated first ... server SHOULD send
        // NBD_REP_ERR_INVALID"; LIST "MAY".
        guard haggling.structuredReplies else {
            return invalid(option, "\(option) requires structured replies")
        }
        var data = request.data
        guard let nameLength = data.readInteger(as: UInt32.self), nameLength <= data.readableBytes,
            let name = data.readString(length: Int(nameLength)),
            let count = data.readInteger(as: UInt32.self)
        else { return invalid(option, "malformed \(option) request") }
        for _ in 0..<count {
            guard let length = data.readInteger(as: UInt32.self), length <= data.readableBytes else {
                return invalid(option, "malformed \(option) query")
            }
            data.moveReaderIndex(forwardBy: Int(length))
        }
        guard data.readableBytes == 0 else { return invalid(option, "trailing data in \(option)") }
        guard export.isNamed(name) else {
            return .send([.optionReply(.error(option, .errUnknown, "no export named \"\(name)\""))])
        }
        return .send([.optionReply(.ack(option))])
    }
}
