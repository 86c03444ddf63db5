import BlockBackend
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import ISCSIBlockBackend
import ISCSIClient
import ISCSIProtocol
import Logging
import NBDServer
import NIOCore
import NIOPosix
import SCSI
import ServiceLifecycle

/// What `serve` does: log in, probe the LUN, serve it over NBD until SIGINT/SIGTERM, then drain and log
/// out. Two services in one group: the session (`SessionService`), then the export; the group shuts the
/// export down first (stop accepting, drain the requests in flight), then logs out.
struct ServeRuntime {
    /// Who to log in to, as what, with which credentials and proposals (from a URL or a node record).
    var session: ISCSISessionConfiguration
    /// The LUN to serve; nil serves the first direct-access LUN that REPORT LUNS lists.
    var lun: UInt16?
    var sockets: [String]
    var tcp: [ListenAddress]
    var exportName: String
    var readOnly: Bool
    var threads: Int
    /// TLS for the TCP listeners (see `NBDTLSConfiguration`).
    var tls: NBDTLSConfiguration? = nil
    var maxConnections: Int = 512
    var stallTimeout: TimeAmount? = .seconds(30)
    var maxBufferedWriteBytes: Int = 256 << 20
    var sendBufferBytes: Int? = 4 << 20
    /// `--metrics-listen` / `--metrics-socket`.
    var metrics: [MetricsEndpoint] = []
    var logger: Logger

    func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let loop = group.next()
        let metrics: CommandMetrics?
        do {
            metrics = try await CommandMetrics.start(self.metrics, configuration: session, logger: logger)
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        var session = self.session
        metrics?.instrument(&session)
        // The session, the device and (by the server's placement) every NBD connection share this loop.
        let opened = Handoff<OpenedLUN>()
        var configuration = NBDServerConfiguration(
            exportName: exportName,
            listen: sockets.map { .unix(path: $0) } + tcp.map { .tcp(host: $0.host, port: $0.port) },
            tls: tls, maxConnections: maxConnections, stallTimeout: stallTimeout,
            maxBufferedWriteBytes: maxBufferedWriteBytes)
        configuration.sendBufferBytes = sendBufferBytes
        do {
            try await Lifecycle.run((metrics?.services ?? []) + [
                (SessionService(configuration: session, lun: lun, readOnly: readOnly, loop: loop, opened: opened,
                                logger: logger), "session"),
                (ExportService(opened: opened, configuration: configuration, group: group, metrics: metrics, logger: logger),
                 "export"),
            ], logger: logger)
            try? await group.shutdownGracefully()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }
}

/// Serves the opened LUN over NBD until the group shuts down, then stops accepting and drains.
struct ExportService: Service {
    var opened: Handoff<OpenedLUN>
    var configuration: NBDServerConfiguration
    var group: MultiThreadedEventLoopGroup
    var metrics: CommandMetrics?
    var logger: Logger

    func run() async throws {
        guard let lun = await opened.value() else { return }
        metrics?.serving(lun, device: configuration.exportName)
        let server = NBDServer(device: lun.device, configuration: configuration, group: group, logger: logger,
                               observers: metrics?.requests)
        do {
            try await server.start()
        } catch {
            throw CommandFailure("cannot serve: \(error)")
        }
        logger.notice("serving", metadata: [
            "export": "\(configuration.exportName)", "size": "\(lun.device.info.size)",
            "listen": "\(server.boundAddresses.map(\.description).joined(separator: ", "))",
        ])
        let trimming = Self.startHeapTrimming(on: lun.session.eventLoop)
        defer { trimming?.cancel() }
        let reason = await StopSignal().first()
        logger.notice("stopping: \(reason); draining requests in flight")
        await server.shutdown()
    }

    /// Memory: glibc's dynamic mmap threshold gives every 1 MiB request buffer a fresh mapping (page faults
    /// and zeroing on each request: 10-20 % of the CPU of a 1M read job), then, once its threshold has moved
    /// up, keeps freed heap memory resident: after a burst of large requests the process stayed at
    /// 60-110 MiB for good (measured: 4k QD128 at 33 MiB fresh, 60 MiB after a 1M QD8 read job).
    /// So: a fixed 4 MiB threshold (request buffers come from the heap and are reused), and the free heap
    /// pages are returned to the kernel once a second (malloc_trim walks the free chunks: microseconds).
    static func startHeapTrimming(on loop: any EventLoop) -> RepeatedTask? {
        #if canImport(Glibc)
        // mallopt(3) and malloc_trim(3) are declared in <malloc.h>, which the Glibc module does not export.
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        typealias MallocTrim = @convention(c) (Int) -> Int32
        let (mmapThreshold, trimThreshold): (Int32, Int32) = (-3, -1)  // M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
        if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") {
            let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
            _ = mallopt(mmapThreshold, 4 << 20)
            // Setting the mmap threshold pins the trim threshold at 128 KiB, and the heap then shrank and
            // grew again under every 1 MiB request (page faults: 12 % of a 1M read profile). 4 MiB of free
            // space may stay at the top of the loop thread's heap (malloc_trim does not trim the top of a
            // thread's arena, only the main one's; it does return free chunks inside every arena).
            _ = mallopt(trimThreshold, 4 << 20)
        }
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return nil }
        let trim = unsafeBitCast(symbol, to: MallocTrim.self)
        return loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in _ = trim(0) }
        #else
        return nil
        #endif
    }
}

/// A failure the user sees as one clear line (ArgumentParser prints `Error: ...` and exits non-zero).
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
