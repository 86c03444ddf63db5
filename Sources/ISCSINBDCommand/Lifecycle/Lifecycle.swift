import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// Why a long-running command's service stops (instead of matching stop-reason strings).
enum StopReason: Sendable, Equatable, CustomStringConvertible {
    /// SIGTERM or SIGINT (the service group's graceful shutdown), or another service's end.
    case shutdownRequested
    /// The iSCSI session ended for good (a fail-stop such as a LUN identity change, a target logout that
    /// could not be recovered); a lost connection is recovered underneath and never gets here.
    case sessionEnded
    /// `attach`: the kernel dropped the device (`iscsi-nbd detach`, NBD_CMD_DISCONNECT).
    case deviceDisconnected

    var description: String {
        switch self {
        case .shutdownRequested: return "shutdown requested"
        case .sessionEnded: return "the iSCSI session ended"
        case .deviceDisconnected: return "the device was disconnected"
        }
    }
}

/// The first of several asynchronous stop events; later ones are ignored.
struct StopSignal: Sendable {
    private let stream: AsyncStream<StopReason>
    private let continuation: AsyncStream<StopReason>.Continuation

    init() {
        (stream, continuation) = AsyncStream.makeStream(of: StopReason.self, bufferingPolicy: .bufferingOldest(4))
    }

    func stop(_ reason: StopReason) { continuation.yield(reason) }

    /// Waits for the first reason. A graceful shutdown of the service group counts as one.
    func first() async -> StopReason {
        await withGracefulShutdownHandler {
            var iterator = stream.makeAsyncIterator()
            return await iterator.next() ?? .shutdownRequested
        } onGracefulShutdown: {
            stop(.shutdownRequested)
        }
    }
}

/// A value one service produces and others wait for (the session a device is served from), or the
/// news that it never will be (the producer failed or the group shut down first).
final class Handoff<Value: Sendable>: Sendable {
    private enum State {
        case waiting([CheckedContinuation<Value?, Never>])
        case done(Value?)
    }
    private let state = NIOLockedValueBox(State.waiting([]))

    /// Delivers `value` (nil: there will be none) to every waiter, now and later. Only the first call counts.
    func resolve(_ value: Value?) {
        let waiters: [CheckedContinuation<Value?, Never>] = state.withLockedValue { state in
            guard case .waiting(let waiters) = state else { return [] }
            state = .done(value)
            return waiters
        }
        for w in waiters { w.resume(returning: value) }
    }

    /// The value, or nil when there will be none or the group shuts down before it comes.
    func value() async -> Value? {
        await withGracefulShutdownHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Value?, Never>) in
                let now: Value?? = state.withLockedValue { state in
                    switch state {
                    case .waiting(let waiters):
                        state = .waiting(waiters + [c])
                        return nil
                    case .done(let value):
                        return .some(value)
                    }
                }
                if let now { c.resume(returning: now) }
            }
        } onGracefulShutdown: {
            self.resolve(nil)
        }
    }
}

/// Runs a command's services in one swift-service-lifecycle `ServiceGroup`: SIGTERM and SIGINT start a
/// graceful shutdown, and the group shuts the services down one at a time in the REVERSE order of
/// `services` (each finishes before the next is asked), so list them in start order: what depends on
/// another comes after it. A service that returns or throws shuts the group down gracefully too; the
/// first error is what `run` throws.
enum Lifecycle {
    static func run(_ services: [(service: any Service, name: String)], logger: Logger) async throws {
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .info)  // the group's own debug chatter stays out of -v
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: services.map {
                .init(service: $0.service, successTerminationBehavior: .gracefullyShutdownGroup,
                      failureTerminationBehavior: .gracefullyShutdownGroup, serviceName: $0.name)
            },
            gracefulShutdownSignals: [.sigterm, .sigint], logger: quiet))
        try await group.run()
    }
}
