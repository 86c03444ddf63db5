// libFuzzer harness: the initiator's LoginStateMachine fed with target Login Responses built from the input
// (header bits + text data), with and without (mutual) CHAP. Built by scripts/fuzz/run.sh.
import NIOCore

private let initiatorSecret = "fuzz-initiator-secret"
private let targetSecret = "fuzz-target-secret-2"

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let input = UnsafeBufferPointer(start: data, count: size)
    let mode = input[0]
    var chap: CHAPCredentials?
    switch mode & 3 {
    case 1: chap = CHAPCredentials(username: "user", secret: initiatorSecret)
    case 2: chap = CHAPCredentials(username: "user", secret: initiatorSecret,
                                   mutual: .init(username: "target", secret: targetSecret))
    default: chap = nil
    }
    let algorithms: [CHAPAlgorithm] = mode & 4 != 0 ? Array(CHAPAlgorithm.allCases) : [.md5]
    let configuration = LoginConfiguration(
        initiatorName: "iqn.2026-11.fuzz:initiator",
        targetName: mode & 8 != 0 ? nil : "iqn.2026-11.fuzz:target",
        chap: chap, chapAlgorithms: algorithms)
    // Deterministic "random" bytes so that crashes reproduce.
    let random = CHAPRandomSource { n in (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) } }
    guard var machine = try? LoginStateMachine(configuration: configuration, random: random) else { return 0 }
    _ = machine.start()
    // Each response: flags (T, C, CSG, NSG), status class, status detail, 2-byte text length, text.
    var rest = ByteBuffer(bytes: input.dropFirst())
    while let header = rest.readMultipleIntegers(as: (UInt8, UInt8, UInt8, UInt16).self) {
        let (flags, statusClass, statusDetail, length) = header
        let text = rest.readSlice(length: min(Int(length), rest.readableBytes)) ?? ByteBuffer()
        let response = LoginResponseSummary(
            statusClass: statusClass, statusDetail: statusDetail,
            transit: flags & 0x80 != 0, continue: flags & 0x40 != 0,
            csg: LoginStage(rawValue: (flags >> 2) & 3), nsg: LoginStage(rawValue: flags & 3),
            tsih: UInt16(flags), text: text)
        let action: LoginAction
        do { action = try machine.receive(response) } catch {
            // Errors must never carry the secrets.
            let description = "\(error)"
            if description.contains(initiatorSecret) || description.contains(targetSecret) {
                fatalError("a login error description contains a CHAP secret")
            }
            break
        }
        if case .send(let step) = action {
            let description = "\(step)"
            if description.contains(initiatorSecret) || description.contains(targetSecret) {
                fatalError("a login request description contains a CHAP secret")
            }
        } else {
            break
        }
    }
    return 0
}
