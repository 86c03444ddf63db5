// libFuzzer harness: open-iscsi configuration parsers (iscsid.conf / node records via ConfigDocument and
// EffectiveNodeSettings, initiatorname.iscsi, portals, iSCSI names). Built by scripts/fuzz/run.sh.
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let input = UnsafeBufferPointer(start: data, count: size)
    let text = String(decoding: input.dropFirst(), as: UTF8.self)
    switch input[0] % 4 {
    case 0:
        if let document = try? ConfigDocument.parse(text, file: "fuzz.conf") {
            let rendered = document.render()
            // Render/parse is a fixed point for any document we accept.
            guard let again = try? ConfigDocument.parse(rendered, file: "rendered") else {
                fatalError("rendered document does not parse again")
            }
            if again.render() != rendered { fatalError("render/parse is not stable") }
            _ = try? ConfigKeys.validate(document, file: "fuzz.conf")
            _ = try? EffectiveNodeSettings.resolve(iscsid: document)
            _ = try? EffectiveNodeSettings.resolveDiscoveryAuth(iscsid: document)
            _ = try? ISNSServerSettings.resolve(iscsid: document, file: "fuzz.conf")
        }
    case 1:
        let id = NodeID(target: "iqn.2026-11.fuzz:target", portal: Portal(host: "127.0.0.1"), tpgt: 1)
        if let record = try? NodeRecord.parse(text, id: id, file: "node") {
            _ = try? EffectiveNodeSettings.resolve(node: record)
        }
    case 2:
        if let file = try? InitiatorNameFile.parse(text, file: "initiatorname.iscsi") {
            _ = try? InitiatorNameFile.parse(file.render())
        }
    default:
        _ = try? ISCSIName.validate(text)
        _ = try? Portal(parsing: text)
    }
    return 0
}
