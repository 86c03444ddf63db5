import BlockBackend
import Foundation
import ISCSITestSupport
import NBDProtocol
import NBDServer
import NIOConcurrencyHelpers
import NIOCore
import Testing

/// What the server tells its observer (the metrics' source): a request the device served is started and
/// finished; one answered with an error before the device is refused; one answered with success without the
/// device (CACHE, length 0) is neither.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct NBDRequestObserverTests {
    final class Recorder: NBDRequestObserver, NBDRequestObserverFactory, @unchecked Sendable {
        struct Counts: Equatable { var started = 0, finishedOK = 0, finishedFailed = 0, refused = 0, bytes = 0 }
        let counts = NIOLockedValueBox(Counts())
        func observer(on loop: any EventLoop) -> any NBDRequestObserver { self }
        func connectionOpened() {}
        func connectionClosed() {}
        func requestStarted() { counts.withLockedValue { $0.started += 1 } }
        func requestRefused() { counts.withLockedValue { $0.refused += 1 } }
        func requestFinished(_ command: NBDCommand, bytes: UInt32, start: UInt64, end: UInt64, succeeded: Bool) {
            counts.withLockedValue {
                if succeeded { $0.finishedOK += 1 } else { $0.finishedFailed += 1 }
                $0.bytes += Int(bytes)
            }
        }
    }

    @Test func startedRefusedAndAnsweredWithoutTheDevice() async throws {
        let recorder = Recorder()
        let f = try await ServerFixture(observers: recorder)
        try await blocking {
            let c = try RawConnection(unixPath: f.socketPath)
            try c.handshake()
            // Served by the device: started and finished, 512 bytes.
            try c.request(NBDRequestHeader(command: .read, cookie: 1, offset: 0, length: 512))
            #expect(try c.readSimpleReply(dataLength: 512).error == 0)
            // Past the end: refused before the device.
            try c.request(NBDRequestHeader(command: .read, cookie: 2, offset: 16 << 20, length: 512))
            #expect(try c.readSimpleReply().error != 0)
            // Answered with success without the device: not refused.
            try c.request(NBDRequestHeader(command: .cache, cookie: 3, offset: 0, length: 4096))
            #expect(try c.readSimpleReply().error == 0)
            try c.request(NBDRequestHeader(command: .write, cookie: 4, offset: 0, length: 0))
            #expect(try c.readSimpleReply().error == 0)
        }
        #expect(recorder.counts.withLockedValue { $0 } == Recorder.Counts(started: 1, finishedOK: 1, finishedFailed: 0, refused: 1, bytes: 512))
        await f.stop()
    }
}
