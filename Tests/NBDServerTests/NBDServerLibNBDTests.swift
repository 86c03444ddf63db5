import BlockBackend
import CLibNBD
import Foundation
import ISCSITestSupport
import NBDProtocol
import NBDServer
import NIOCore
import Testing

/// The server over a real unix socket against MemoryBlockDevice, driven by libnbd and the libnbd tools.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct NBDServerLibNBDTests {
    @Test func sizeFlagsBlockSizeAndNames() async throws {
        let f = try await ServerFixture()
        try await blocking {
            let c = try LibNBD(socketPath: f.socketPath)
            #expect(c.size == 16 << 20)
            #expect(!c.flag(nbd_is_read_only))
            #expect(c.flag(nbd_can_flush))
            #expect(c.flag(nbd_can_fua))
            #expect(c.flag(nbd_can_trim))
            #expect(c.flag(nbd_can_zero))
            #expect(!c.flag(nbd_can_fast_zero))
            #expect(c.flag(nbd_can_multi_conn))
            #expect(!c.flag(nbd_is_rotational))
            #expect(c.flag(nbd_can_df))
            #expect(c.flag(nbd_get_structured_replies_negotiated))
            #expect(c.blockSize(Int32(LIBNBD_SIZE_MINIMUM)) == 512)
            #expect(c.blockSize(Int32(LIBNBD_SIZE_PREFERRED)) == 4096)
            #expect(c.blockSize(Int32(LIBNBD_SIZE_MAXIMUM)) == 1 << 20)
            #expect(c.canonicalName == ServerFixture.exportName)
            #expect(c.exportDescription == "memory disk")
            c.shutdown()
        }
        await f.stop()
    }

    @Test func descriptiveNameReachesTheExportAndUnknownNameIsRefused() async throws {
        let f = try await ServerFixture()
        try await blocking {
            let c = try LibNBD(socketPath: f.socketPath, exportName: ServerFixture.exportName)
            #expect(c.size == 16 << 20)
            #expect(throws: LibNBDError.self) { _ = try LibNBD(socketPath: f.socketPath, exportName: "nope") }
        }
        await f.stop()
    }

    @Test(arguments: [true, false])
    func preadPwriteByteExact(structured: Bool) async throws {
        let f = try await ServerFixture()
        try await blocking {
            let c = try LibNBD(socketPath: f.socketPath, structured: structured)
            let writes: [(UInt64, Int)] = [(0, 512), (4096, 65536), (1 << 20, 1 << 20), ((16 << 20) - 512, 512), (7 * 512, 3 * 512)]
            for (i, (offset, count)) in writes.enumerated() {
                let data = pattern(count, seed: UInt64(i + 1))
                try c.pwrite(data, offset: offset, fua: i % 2 == 0)
                #expect(try c.pread(offset: offset, count: count) == data)
                #expect(f.device.contents(offset: offset, length: count) == data)
            }
            #expect(f.device.statistics.fuaWrites == 3)
        }
        await f.stop()
    }

    @Test func concurrentAioCommandsOutOfOrder() async throws {
        let f = try await ServerFixture(latency: .milliseconds(5), randomLatency: true)
        try await blocking {
            let c = try LibNBD(socketPath: f.socketPath)
            let blocks = 512
            let blockSize = 4096
            let expected = pattern(blocks * blockSize, seed: 42)
            // Writes in flight together.
            var cookies: [Int64] = []
            try expected.withUnsafeBytes { raw in
                for i in 0..<blocks {
                    let cookie = nbd_aio_pwrite(c.h, raw.baseAddress! + i * blockSize, blockSize, UInt64(i * blockSize), LibNBD.noCompletion, 0)
                    try c.check(cookie)
                    cookies.append(cookie)
                }
                while nbd_aio_in_flight(c.h) > 0 { try c.check(Int64(nbd_poll(c.h, -1))) }
            }
            for cookie in cookies { #expect(nbd_aio_command_completed(c.h, UInt64(cookie)) == 1) }
            // Reads in flight together, each into its own slot.
            var readBack = [UInt8](repeating: 0, count: blocks * blockSize)
            cookies = []
            try readBack.withUnsafeMutableBytes { raw in
                for i in 0..<blocks {
                    let cookie = nbd_aio_pread(c.h, raw.baseAddress! + i * blockSize, blockSize, UInt64(i * blockSize), LibNBD.noCompletion, 0)
                    try c.check(cookie)
                    cookies.append(cookie)
                }
                while nbd_aio_in_flight(c.h) > 0 { try c.check(Int64(nbd_poll(c.h, -1))) }
            }
            for cookie in cookies { #expect(nbd_aio_command_completed(c.h, UInt64(cookie)) == 1) }
            #expect(readBack == expected)
            let stats = f.device.statistics
            #expect(stats.maxInFlight > 16, "requests must be dispatched concurrently, saw \(stats.maxInFlight)")
            #expect(stats.maxInFlight <= 256)
        }
        await f.stop()
    }

    @Test func flushTrimZero() async throws {
        let f = try await ServerFixture()
        try await blocking {
            let c = try LibNBD(socketPath: f.socketPath)
            let data = pattern(1 << 20, seed: 3)
            try c.pwrite(data, offset: 0)
            try c.flush()
            try c.trim(offset: 0, count: 65536)
            try c.zero(offset: 65536, count: 65536)
            try c.zero(offset: 8 << 20, count: 4 << 20, flags: UInt32(LIBNBD_CMD_FLAG_NO_HOLE | LIBNBD_CMD_FLAG_FUA))
            #expect(try c.pread(offset: 0, count: 131072) == [UInt8](repeating: 0, count: 131072))
            #expect(try c.pread(offset: 131072, count: 4096) == Array(data[131072..<135168]))
            let s = f.device.statistics
            #expect(s.flushes == 1 && s.trims == 1 && s.writeZeroes == 2)
        }
        await f.stop()
    }

    @Test func readOnlyExportRefusesWritesWithEPERM() async throws {
        let f = try await ServerFixture(info: BlockDeviceInfo(size: 1 << 20, readOnly: true, canTrim: true))
        try await blocking {
            // Non-strict: libnbd sends the commands instead of refusing them client-side.
            let c = try LibNBD(socketPath: f.socketPath, strict: false)
            #expect(c.flag(nbd_is_read_only))
            #expect(!c.flag(nbd_can_trim) && !c.flag(nbd_can_zero))
            for attempt in [{ try c.pwrite([UInt8](repeating: 1, count: 512), offset: 0) },
                            { try c.trim(offset: 0, count: 512) },
                            { try c.zero(offset: 0, count: 512) }] {
                do {
                    try attempt()
                    Issue.record("write-type command succeeded on a read-only export")
                } catch let error as LibNBDError {
                    #expect(error.errno == EPERM, "\(error)")
                }
            }
            #expect(try c.pread(offset: 0, count: 512) == [UInt8](repeating: 0, count: 512), "connection still usable")
            #expect(f.device.statistics.writes == 0)
        }
        await f.stop()
    }

    @Test func deviceErrorsBecomeNBDErrors() async throws {
        let f = try await ServerFixture()
        f.device.injectErrors { op in
            if case .read(let offset, _) = op, offset == 4096 { return BlockDeviceError(.eio, "medium error") }
            if case .write = op { return BlockDeviceError(.enospc, "thin pool full") }
            return nil
        }
        try await blocking {
            for structured in [true, false] {
                let c = try LibNBD(socketPath: f.socketPath, structured: structured)
                #expect(throws: LibNBDError.self) { _ = try c.pread(offset: 4096, count: 512) }
                #expect(c.lastError.errno == EIO)
                #expect(throws: LibNBDError.self) { try c.pwrite([1], offset: 0) } // unaligned: refused client-side
                do { try c.pwrite([UInt8](repeating: 1, count: 512), offset: 0) } catch let e as LibNBDError { #expect(e.errno == ENOSPC) }
                #expect(try c.pread(offset: 0, count: 512).count == 512)
            }
        }
        await f.stop()
    }

    @Test func tcpListenerOnFreePort() async throws {
        let f = try await ServerFixture(tcp: true)
        let port = f.server.boundAddresses.compactMap { if case .tcp(_, let p) = $0 { p } else { nil } }.first
        let tcpPort = try #require(port)
        #expect(tcpPort != 0)
        try await blocking {
            let c = try LibNBD(tcpPort: tcpPort)
            try c.pwrite(pattern(4096, seed: 9), offset: 8192)
            #expect(try c.pread(offset: 8192, count: 4096) == pattern(4096, seed: 9))
        }
        await f.stop()
    }

    @Test func nbdinfoJSON() async throws {
        guard peersAvailable("nbdinfo") else { return }
        let f = try await ServerFixture()
        let out = try await blocking { try run("nbdinfo", ["--json", f.uri]).stdout }
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        #expect(json["protocol"] as? String == "newstyle-fixed")
        #expect(json["structured"] as? Bool == true)
        let export = try #require((json["exports"] as? [[String: Any]])?.first)
        #expect(export["export-size"] as? Int == 16 << 20)
        #expect(export["is_read_only"] as? Bool == false)
        #expect(export["can_flush"] as? Bool == true)
        #expect(export["can_fua"] as? Bool == true)
        #expect(export["can_trim"] as? Bool == true)
        #expect(export["can_zero"] as? Bool == true)
        #expect(export["can_multi_conn"] as? Bool == true)
        #expect(export["block_size_minimum"] as? Int == 512)
        #expect(export["block_size_preferred"] as? Int == 4096)
        #expect(export["block_size_maximum"] as? Int == 1 << 20)
        #expect(export["description"] as? String == "memory disk", "\(out)")
        await f.stop()
    }

    @Test func nbdinfoListShowsDescriptiveName() async throws {
        guard peersAvailable("nbdinfo") else { return }
        let f = try await ServerFixture()
        let out = try await blocking { try run("nbdinfo", ["--list", f.uri]).stdout }
        #expect(out.contains("export=\"\(ServerFixture.exportName)\""), "\(out)")
        #expect(out.contains("memory disk"), "\(out)")
        await f.stop()
    }

    @Test func nbdcopyInAndOutByteIdentical() async throws {
        guard peersAvailable("nbdcopy") else { return }
        let f = try await ServerFixture()
        let source = f.directory.appendingPathComponent("in.img")
        let back = f.directory.appendingPathComponent("out.img")
        let data = Data(pattern(16 << 20, seed: 77))
        try data.write(to: source)
        try await blocking {
            try run("nbdcopy", [source.path, f.uri])
            try run("nbdcopy", [f.uri, back.path])
        }
        #expect(f.device.contents() == Array(data))
        #expect(try Data(contentsOf: back) == data)
        await f.stop()
    }
}
