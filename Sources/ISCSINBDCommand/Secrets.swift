#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation

/// Where CHAP credentials come from, in order of precedence: an explicit file (`--chap-secret-file`),
/// the environment (`ISCSI_NBD_CHAP_USERNAME`, `ISCSI_NBD_CHAP_SECRET`; for mutual CHAP
/// `ISCSI_NBD_TARGET_CHAP_USERNAME`, `ISCSI_NBD_TARGET_CHAP_SECRET`), then the URL's `user%password`.
/// A secret never needs to appear in argv; when it does (the URL form), it is scrubbed from argv at once.
public struct ResolvedCHAP: Sendable, Equatable, CustomStringConvertible {
    public var username: String
    public var secret: String
    /// The target's credentials for mutual CHAP (what the target must prove it knows).
    public var targetUsername: String?
    public var targetSecret: String?

    public var description: String {
        "CHAP(user: \(username), secret: <redacted>\(targetUsername.map { ", target user: \($0), target secret: <redacted>" } ?? ""))"
    }
}

public struct SecretError: Error, CustomStringConvertible, Equatable {
    public var description: String
}

public enum SecretResolver {
    public static let usernameVariable = "ISCSI_NBD_CHAP_USERNAME"
    public static let secretVariable = "ISCSI_NBD_CHAP_SECRET"
    public static let targetUsernameVariable = "ISCSI_NBD_TARGET_CHAP_USERNAME"
    public static let targetSecretVariable = "ISCSI_NBD_TARGET_CHAP_SECRET"

    /// Reads a secret file: the first line, without its line end. The file must not be readable by others
    /// (like ssh keys) — a world-readable secret is refused with a clear message.
    public static func readSecretFile(_ path: String) throws(SecretError) -> String {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw SecretError(description: "cannot read secret file \(path): \(String(cString: strerror(errno)))")
        }
        if st.st_mode & 0o004 != 0 {
            throw SecretError(description: "secret file \(path) is readable by everyone; chmod 600 it")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SecretError(description: "cannot read secret file \(path)")
        }
        let text = String(decoding: data, as: UTF8.self)
        let line = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let secret = String(line.hasSuffix("\r") ? line.dropLast() : line)
        guard !secret.isEmpty else { throw SecretError(description: "secret file \(path) is empty") }
        return secret
    }

    /// Combines the sources. Returns nil when no CHAP is configured at all.
    public static func resolve(
        urlUsername: String?, urlPassword: String?,
        username: String?, secretFile: String?,
        targetUsername: String?, targetSecretFile: String?,
        environment: [String: String]
    ) throws(SecretError) -> ResolvedCHAP? {
        let user = username ?? environment[usernameVariable] ?? urlUsername
        var secret: String?
        if let secretFile { secret = try readSecretFile(secretFile) }
        secret = secret ?? environment[secretVariable].flatMap { $0.isEmpty ? nil : $0 } ?? urlPassword
        let tUser = targetUsername ?? environment[targetUsernameVariable]
        var tSecret: String?
        if let targetSecretFile { tSecret = try readSecretFile(targetSecretFile) }
        tSecret = tSecret ?? environment[targetSecretVariable].flatMap { $0.isEmpty ? nil : $0 }

        guard user != nil || secret != nil || tUser != nil || tSecret != nil else { return nil }
        guard let user, let secret else {
            throw SecretError(description: user == nil
                ? "a CHAP secret was given but no user name (URL user@, --chap-username or \(usernameVariable))"
                : "CHAP user \(user) has no secret (--chap-secret-file, \(secretVariable) or the URL's user%secret)")
        }
        if (tUser == nil) != (tSecret == nil) {
            throw SecretError(description: "mutual CHAP needs both the target's user name and its secret")
        }
        if let tSecret, tSecret == secret {
            // RFC 7143 §9.2.1: the initiator and target secrets must differ.
            throw SecretError(description: "mutual CHAP: the target's secret must differ from the initiator's (RFC 7143 §9.2.1)")
        }
        return ResolvedCHAP(username: user, secret: secret, targetUsername: tUser, targetSecret: tSecret)
    }
}

/// Overwrites a secret wherever it appears in this process's argv, so `ps` and /proc/PID/cmdline no longer
/// show it. (There is a short window between exec and this call: the URL form is for compatibility; the
/// environment and secret files are the safe ways.)
public enum ArgvScrubber {
    public static func scrub(_ secret: String) {
        guard !secret.isEmpty else { return }
        let needle = Array(secret.utf8)
        for i in 0..<Int(CommandLine.argc) {
            guard let arg = CommandLine.unsafeArgv[i] else { continue }
            let length = strlen(arg)
            guard length >= needle.count else { continue }
            arg.withMemoryRebound(to: UInt8.self, capacity: length) { bytes in
                var j = 0
                while j + needle.count <= length {
                    var match = true
                    for k in 0..<needle.count where bytes[j + k] != needle[k] { match = false; break }
                    if match {
                        for k in 0..<needle.count { bytes[j + k] = UInt8(ascii: "x") }
                        j += needle.count
                    } else {
                        j += 1
                    }
                }
            }
        }
    }
}

/// The CHAP options `serve` and `attach` share; `resolve` combines them with the environment and the URL.
struct CHAPOptions: ParsableArguments {
    @Option(name: .long, help: "CHAP user name (also ISCSI_NBD_CHAP_USERNAME).")
    var chapUsername: String?

    @Option(name: .long, help: "File holding the CHAP secret on its first line (mode 0600).")
    var chapSecretFile: String?

    @Option(name: .long, help: "Mutual CHAP: the target's user name (also ISCSI_NBD_TARGET_CHAP_USERNAME).")
    var targetChapUsername: String?

    @Option(name: .long, help: "Mutual CHAP: file holding the target's secret (also ISCSI_NBD_TARGET_CHAP_SECRET).")
    var targetChapSecretFile: String?

    func resolve(urlUsername: String?, urlPassword: String?) throws -> ResolvedCHAP? {
        do {
            return try SecretResolver.resolve(
                urlUsername: urlUsername, urlPassword: urlPassword,
                username: chapUsername, secretFile: chapSecretFile,
                targetUsername: targetChapUsername, targetSecretFile: targetChapSecretFile,
                environment: ProcessInfo.processInfo.environment)
        } catch {
            throw ValidationError(error.description)
        }
    }
}
