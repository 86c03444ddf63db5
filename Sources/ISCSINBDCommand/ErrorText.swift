import Foundation
import NIOCore
import NIOPosix

/// One readable line for an error a user sees: NIO's connection errors become "connection refused",
/// "no route to host" and so on, instead of their debug dumps.
enum ErrorText {
    static func describe(_ error: any Error) -> String {
        if let e = error as? NIOConnectionError {
            let reasons = e.connectionErrors.map { describe($0.error) }
            if let dns = e.dnsAError ?? e.dnsAAAAError, reasons.isEmpty { return "cannot resolve the host name (\(dns))" }
            return Array(Set(reasons)).sorted().joined(separator: "; ")
        }
        if let e = error as? IOError { return String(cString: strerror(e.errnoCode)).lowercased() }
        if error is ChannelError, case .connectTimeout(let t) = error as! ChannelError {
            return "no answer within \(t.nanoseconds / 1_000_000_000) s (connect timed out)"
        }
        return String(describing: error)
    }
}
